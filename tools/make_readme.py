"""Write README.md from nbs/index.ipynb: markdown cells as they are, code cells fenced, their text output below them.
(`nbdev-readme` does this through Quarto; this needs none, so README.md can be checked against index.ipynb anywhere.)"""

import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


def _output_text(cell) -> str:
    out = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream" and o.get("name") == "stdout":
            out.append(o["text"])
        elif o.get("output_type") in ("execute_result", "display_data") and "text/plain" in o.get("data", {}):
            out.append(o["data"]["text/plain"])
    return "".join(out).rstrip("\n")


def readme_text(index: Path = ROOT / "nbs" / "index.ipynb") -> str:
    "README.md's text, made from `index`."
    parts = []
    for c in nbformat.read(index, as_version=4).cells:
        src = c.source.strip("\n")
        if c.cell_type == "markdown":
            parts.append(re.sub(r"\]\((\w+)\.ipynb\)", r"](nbs/\1.ipynb)", src))
        elif c.cell_type == "code" and not src.startswith("#| hide"):
            parts.append(f"```python\n{src}\n```")
            if out := _output_text(c):
                parts.append(f"```\n{out}\n```")
    return "\n\n".join(parts) + "\n"


if __name__ == "__main__":
    (ROOT / "README.md").write_text(readme_text())
    print("wrote README.md", file=sys.stderr)
