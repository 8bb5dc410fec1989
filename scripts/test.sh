#!/usr/bin/env bash
# Lint (ruff check + ruff format --check), then the test suite; pytest's exit code 5 (no tests collected)
# is a failure, not a pass. Arguments go to pytest (e.g. -m "not slow").
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${KDSEARCH_VENV:-.venv}"
if ! "$VENV/bin/ruff" check . || ! "$VENV/bin/ruff" format --check .; then
  echo "test.sh: ruff found lint or format problems; fix them with: $VENV/bin/ruff check --fix . && $VENV/bin/ruff format ." >&2
  exit 1
fi
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
