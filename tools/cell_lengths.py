"""The notebooks' code cells by length: a cell holds one idea. Fails when a code cell is longer than 60 lines or when
more than 15 are longer than 40; prints the longest. `python tools/cell_lengths.py [--top N]` (CI runs it)."""

import json
import sys
from pathlib import Path

LIMIT, LONG, MAX_LONG = 60, 40, 15  # no code cell over LIMIT lines; at most MAX_LONG over LONG


def code_cells(nbs: Path) -> list[tuple[int, str, int, str]]:
    "(lines, notebook, cell index, first line) of every code cell in the folder's notebooks, longest first."
    cells = []
    for path in sorted(nbs.glob("*.ipynb")):
        for i, cell in enumerate(json.loads(path.read_text())["cells"]):
            if cell["cell_type"] == "code":
                lines = "".join(cell["source"]).splitlines()
                cells.append((len(lines), path.name, i, lines[0] if lines else ""))
    return sorted(cells, reverse=True)


def problems(cells: list[tuple]) -> list[str]:
    "What breaks the limits, one line each (none: the notebooks pass)."
    over, long = [c for c in cells if c[0] > LIMIT], [c for c in cells if c[0] > LONG]
    out = [f"{name} cell {i} has {n} lines (the limit is {LIMIT})" for n, name, i, _ in over]
    if len(long) > MAX_LONG:
        out.append(f"{len(long)} code cells are longer than {LONG} lines (at most {MAX_LONG} may be)")
    return out


def main(argv: list[str]) -> int:
    top = int(argv[argv.index("--top") + 1]) if "--top" in argv else 20
    cells = code_cells(Path(__file__).resolve().parent.parent / "nbs")
    over, long = sum(c[0] > LIMIT for c in cells), sum(c[0] > LONG for c in cells)
    print(f"{len(cells)} code cells: {over} over {LIMIT} lines (0 allowed), {long} over {LONG} ({MAX_LONG} allowed)")
    for n, name, i, first in cells[:top]:
        print(f"{n:4d}  {name} cell {i}: {first[:70]}")
    for line in problems(cells):
        print("FAIL:", line)
    return 1 if problems(cells) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
