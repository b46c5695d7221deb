"""The site, as far as it can be checked without Quarto: nbdev processes every notebook, the sidebar lists every
chapter,
and each processed page, rendered to HTML, holds its figures and equations (tools/check_site.py)."""

import runpy
import shutil
from pathlib import Path

import pytest

CHECK = runpy.run_path(str(Path(__file__).resolve().parents[1] / "tools" / "check_site.py"))


def test_every_notebook_is_in_the_sidebar():
    assert set(CHECK["notebooks"]()) == set(CHECK["sidebar_entries"]())
    assert "10_pipeline.ipynb" in CHECK["sidebar_entries"]()


def test_site_pages_hold_their_figures_and_equations():
    if shutil.which("nbdev-proc-nbs") is None:
        pytest.skip("nbdev is not installed")
    pages = {p["page"]: p for p in CHECK["check_site"]()}
    assert pages["08_dpo.ipynb"]["figures"] >= 3 and pages["07_ppo.ipynb"]["equations"] >= 20  # they have some to lose
    assert all(p["ok"] for p in pages.values())


def test_the_check_can_fail(tmp_path, monkeypatch):
    import nbformat

    page = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_markdown_cell("The loss is $-\\log \\sigma(\\beta x)$."),
            nbformat.v4.new_code_cell(
                "1", outputs=[nbformat.v4.new_output("display_data", data={"image/png": "iVBORw0KGgo="})]
            ),
        ]
    )
    (tmp_path / "nbs").mkdir()
    (tmp_path / "proc").mkdir()
    nbformat.write(page, tmp_path / "nbs" / "x.ipynb")
    lost = nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_markdown_cell("The loss is gone."), nbformat.v4.new_code_cell("1")]
    )
    nbformat.write(lost, tmp_path / "proc" / "x.ipynb")
    check = CHECK["check_page"]
    monkeypatch.setitem(check.__globals__, "NBS", tmp_path / "nbs")
    monkeypatch.setitem(check.__globals__, "PROC", tmp_path / "proc")
    result = check("x.ipynb")
    assert not result["ok"] and result["equations_lost"] == 1 and result["processed_figures"] == 0
    nbformat.write(page, tmp_path / "proc" / "x.ipynb")
    assert check("x.ipynb")["ok"]
