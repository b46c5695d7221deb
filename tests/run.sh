#!/usr/bin/env bash
# alignbook's test command: pytest over tests/ plus nbval over every notebook in nbs/.
# nbdev-clean stores notebooks without execution counts, which nbval rejects ("unrun cell has outputs"), so the notebooks
# run from a scratch copy with their outputs cleared (_nbtest/, git-ignored) and --nbval-lax: each cell's asserts are the checks.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ALIGNBOOK_DATA:-}" ]; then
  ALIGNBOOK_DATA=$(python -c 'from alignbook.data import data_dir; print(data_dir() or "")')
  export ALIGNBOOK_DATA
fi
rm -rf _nbtest && mkdir _nbtest
cp nbs/*.ipynb _nbtest/
jupyter nbconvert --log-level=ERROR --clear-output --inplace _nbtest/*.ipynb
python -m pytest tests _nbtest --nbval-lax --durations=15 -p no:cacheprovider "$@"
