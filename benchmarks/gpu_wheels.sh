#!/usr/bin/env bash
# The wheels kdsearch needs that the lent GPU machine's Python (3.12, torch preinstalled) lacks, downloaded here
# into .whl/ (git-ignored through .git/info/exclude) for the device tool's `run` to carry; gpu_check.sh installs
# them there when it finds no .venv. Versions: those of this checkout's .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >>.git/info/exclude
mkdir -p .whl
WHEELS=(optuna==5.1.0 sqlalchemy==2.1.9 alembic==1.20.1 colorlog==6.12.0 mako==1.4.3 greenlet==3.5.6
        plotly==7.1.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5)
PLATFORMS=()
for n in 17 24 27 28 31 34; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" --platform manylinux2014_x86_64 --platform any -d .whl "${WHEELS[@]}"
ls -la .whl
du -sh .whl
