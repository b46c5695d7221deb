"""tools/cell_lengths.py: the limits it checks can fail."""

import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "cell_lengths", Path(__file__).parent.parent / "tools" / "cell_lengths.py"
)
cell_lengths = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cell_lengths)


def test_the_notebooks_keep_the_limits():
    cells = cell_lengths.code_cells(Path(__file__).parent.parent / "nbs")
    assert len(cells) > 100 and cell_lengths.problems(cells) == []


def test_a_long_cell_fails():
    ok = [(40, "a.ipynb", i, "") for i in range(30)] + [(41, "a.ipynb", 30 + i, "") for i in range(15)]
    assert cell_lengths.problems(ok) == []
    assert cell_lengths.problems(ok + [(61, "b.ipynb", 7, "#| export")]) == [
        "b.ipynb cell 7 has 61 lines (the limit is 60)",
        "16 code cells are longer than 40 lines (at most 15 may be)",
    ]
    assert cell_lengths.problems(ok + [(41, "b.ipynb", 8, "")]) == [
        "16 code cells are longer than 40 lines (at most 15 may be)"
    ]
