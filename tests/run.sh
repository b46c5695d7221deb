#!/usr/bin/env bash
# alignbook's test command: pytest over tests/ plus nbval over every notebook in nbs/, in alignbook's environment
# (tools/env.sh: the Python that has alignbook from this checkout, else a .venv made here on first use).
# nbdev-clean stores notebooks without execution counts, which nbval rejects ("unrun cell has outputs"), so the notebooks
# run from a scratch copy with their outputs cleared (_nbtest/, git-ignored) and --nbval-lax: each cell's asserts are the checks.
set -euo pipefail
cd "$(dirname "$0")/.."
source tools/env.sh
rm -rf _nbtest && mkdir _nbtest
cp nbs/*.ipynb _nbtest/
"$PY" -m jupyter nbconvert --log-level=ERROR --clear-output --inplace _nbtest/*.ipynb
"$PY" -m pytest tests _nbtest --nbval-lax --durations=15 -p no:cacheprovider "$@"
