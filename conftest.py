"Print each notebook's wall time (the sum of its cells' durations) at the end of a pytest run."
from collections import defaultdict
from pathlib import Path

_wall = defaultdict(float)

def pytest_runtest_logreport(report):
    _wall[report.nodeid.split("::")[0]] += report.duration

def pytest_terminal_summary(terminalreporter):
    nbs = {k: v for k, v in _wall.items() if k.endswith(".ipynb")}
    if not nbs: return
    terminalreporter.section("notebook wall times")
    for k, v in sorted(nbs.items()): terminalreporter.write_line(f"{v:8.1f} s  {Path(k).name}")
    terminalreporter.write_line(f"{sum(nbs.values()):8.1f} s  all notebooks")
