#!/usr/bin/env bash
# Lint (ruff check + ruff format --check), the layers (import-linter's contracts in pyproject.toml), the docs
# (generated reference pages current, mkdocs build --strict), then the test suite; pytest's exit code 5 (no tests
# collected) is a failure, not a pass. Arguments go to pytest (e.g. -m "not slow").
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${KDSEARCH_VENV:-.venv}"
LOG=$(mktemp)
trap 'rm -f "$LOG"' EXIT
if ! "$VENV/bin/ruff" check . || ! "$VENV/bin/ruff" format --check .; then
  echo "test.sh: ruff found lint or format problems; fix them with: $VENV/bin/ruff check --fix . && $VENV/bin/ruff format ." >&2
  exit 1
fi
if ! "$VENV/bin/lint-imports" pyproject.toml --no-cache >"$LOG" 2>&1; then
  sed -n '/Broken contracts/,$p' "$LOG" >&2
  echo "test.sh: an import breaks the layers (see above; the contracts are [tool.importlinter] in pyproject.toml)" >&2
  exit 1
fi
if ! "$VENV/bin/python" docs/gen_reference.py --check; then
  echo "test.sh: docs/reference/ is out of date with the code; regenerate it with: $VENV/bin/python docs/gen_reference.py" >&2
  exit 1
fi
SITE=$(mktemp -d)
if ! NO_MKDOCS_2_WARNING=1 "$VENV/bin/mkdocs" build --strict --site-dir "$SITE" >"$LOG" 2>&1; then
  grep -E "WARNING|ERROR|Error|Aborted" "$LOG" >&2
  rm -rf "$SITE"
  echo "test.sh: mkdocs build --strict failed (a broken link, anchor or API reference in docs/, see above)" >&2
  exit 1
fi
rm -rf "$SITE"
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
