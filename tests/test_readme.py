"README.md is made from nbs/index.ipynb and gives the commands that CI runs."

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_in_step_with_index():
    make = runpy.run_path(str(ROOT / "tools" / "make_readme.py"))
    assert (ROOT / "README.md").read_text() == make["readme_text"](), "run: python tools/make_readme.py"


def test_readme_opens_with_the_two_commands():
    head = (ROOT / "README.md").read_text().split("## ")[0]
    commands = [block.strip() for block in head.split("```sh")[1:]]
    assert [c.split("```")[0].strip() for c in commands] == [
        "bash tools/env.sh alignbook pipeline --preset quick",
        "bash tests/run.sh",
    ]
    assert "bash tests/run.sh" in (ROOT / ".ci" / "run").read_text()  # the command CI runs
    assert "source tools/env.sh" in (ROOT / "tests" / "run.sh").read_text()  # which sets up the environment itself
    assert "jupyter lab nbs/" in head


def test_env_script_uses_a_ready_python_and_runs_the_command(tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        ["bash", str(ROOT / "tools" / "env.sh"), "python", "-c", "import alignbook, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
            "PYTHON": sys.executable,
            "HOME": str(Path.home()),
        },
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == sys.prefix and "creating a virtual environment" not in r.stderr  # no second install
