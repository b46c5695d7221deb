"""Check what can be checked of the site here, where Quarto cannot be installed (the deploy workflow installs it):
nbdev's processing of every notebook succeeds, every notebook is in the sidebar, and each processed notebook, rendered
to
HTML by nbconvert, holds its figures and its equations. `python tools/check_site.py` prints a table;
tests/test_site.py runs it."""

import html as html_text
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
PROC = ROOT / "_proc"  # where nbdev-proc-nbs writes the processed notebooks (git-ignored)


def notebooks() -> list[str]:
    "The site's pages: every notebook in nbs/."
    return sorted(p.name for p in NBS.glob("*.ipynb"))


def sidebar_entries() -> list[str]:
    "The notebooks nbs/sidebar.yml lists (custom_sidebar = true in pyproject.toml)."
    return re.findall(r"^\s*-\s*(\S+\.ipynb)\s*$", (NBS / "sidebar.yml").read_text(), re.M)


def process_notebooks() -> str:
    "Run nbdev's processing of every notebook (the step of nbdev-docs before Quarto); raise on any failure."
    r = subprocess.run(["nbdev-proc-nbs"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    log = r.stdout + r.stderr
    if r.returncode != 0 or "Error in notebook" in log or "Found cells containing imports and other code" in log:
        raise RuntimeError(f"nbdev-proc-nbs failed (exit {r.returncode}):\n{log[-4000:]}")
    return log


def _read(path: Path):
    "A notebook, without what nbdev's processing adds to cells and nbformat's schema refuses (`has_sd`, timings)."
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        cell.pop("has_sd", None)
        cell.get("metadata", {}).pop("execution", None)  # its timing record: a number where the schema wants text
    return nbformat.reads(json.dumps(nb), as_version=4)  # joins the cells' line lists


def _images(nb) -> int:
    return sum(
        "image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
    )


def _equations(nb) -> list[str]:
    "The TeX of each $...$ and $$...$$ in the markdown cells."
    text = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    text = re.sub(r"```.*?```|`[^`\n]*`", "", text, flags=re.S)  # code is not math
    return re.findall(r"\$\$(.+?)\$\$|\$([^$\n]+?)\$", text, flags=re.S)


def check_page(name: str) -> dict:
    "Figures and equations of one page: in the source notebook, in the processed one, and in its HTML."
    from nbconvert import HTMLExporter

    source, processed = _read(NBS / name), _read(PROC / name)
    html, _ = HTMLExporter().from_notebook_node(processed)
    equations = [a or b for a, b in _equations(source)]
    text = html_text.unescape(html)  # the browser's text, which MathJax reads
    lost = [e for e in equations if e.strip()[:25] not in text]  # MathJax renders the TeX kept in the page
    empty, _ = HTMLExporter().from_notebook_node(nbformat.v4.new_notebook())  # the page template's own images (an icon)
    figures = html.count("data:image/png;base64") - empty.count("data:image/png;base64")
    return dict(
        page=name,
        figures=_images(source),
        processed_figures=_images(processed),
        html_figures=figures,
        equations=len(equations),
        equations_lost=len(lost),
        mathjax="mathjax" in html.lower(),
        ok=_images(source) == _images(processed) == figures
        and not lost
        and (not equations or "mathjax" in html.lower()),
    )


def check_site() -> list[dict]:
    "Every check; raises with the reasons when one fails."
    problems = [f"{n} is not in nbs/sidebar.yml" for n in notebooks() if n not in sidebar_entries()]
    problems += [
        f"nbs/sidebar.yml lists {n}, which is not a notebook" for n in sidebar_entries() if n not in notebooks()
    ]
    process_notebooks()
    pages = [check_page(n) for n in notebooks()]
    problems += [f"{p['page']}: {p}" for p in pages if not p["ok"]]
    if problems:
        raise AssertionError("site check failed:\n" + "\n".join(problems))
    return pages


if __name__ == "__main__":
    try:
        pages = check_site()
    except (AssertionError, RuntimeError) as e:
        sys.exit(str(e))
    print(f"{'page':30} figures (source/processed/html)  equations (lost)")
    for p in pages:
        print(
            f"{p['page']:30} {p['figures']:3} / {p['processed_figures']:3} / {p['html_figures']:3}"
            f"          {p['equations']:4} ({p['equations_lost']})"
        )
    print(f"{len(pages)} pages, every one in the sidebar: the site's content is complete")
