"""The notebooks' code cells, by length: a cell holds one idea. Fails when a code cell is longer than 60 lines or more than
15 are longer than 40, and prints the longest. `python tools/cell_lengths.py [--top N]`"""

import json
import sys
from pathlib import Path

LIMIT, LONG, MAX_LONG = 60, 40, 15  # no code cell over LIMIT lines; at most MAX_LONG over LONG


def code_cells(nbs: Path) -> list[tuple[int, str, int, str]]:
    "(lines, notebook, cell index, first line) of every code cell in the folder's notebooks."
    cells = []
    for path in sorted(nbs.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                cells.append((len(lines), path.name, i, lines[0] if lines else ""))
    return sorted(cells, reverse=True)


def main(argv: list[str]) -> int:
    top = int(argv[argv.index("--top") + 1]) if "--top" in argv else 20
    cells = code_cells(Path(__file__).resolve().parent.parent / "nbs")
    over, long = [c for c in cells if c[0] > LIMIT], [c for c in cells if c[0] > LONG]
    print(
        f"{len(cells)} code cells; {len(over)} over {LIMIT} lines (allowed 0); {len(long)} over {LONG} (allowed {MAX_LONG})"
    )
    for n, name, i, first in cells[:top]:
        print(f"{n:4d}  {name} cell {i}: {first[:70]}")
    return 1 if over or len(long) > MAX_LONG else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
