#!/usr/bin/env bash
# Lint (ruff check + ruff format --check), the layers (import-linter's contracts in pyproject.toml), then the test suite; pytest's exit code 5 (no tests collected)
# is a failure, not a pass. Arguments go to pytest (e.g. -m "not slow").
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${KDSEARCH_VENV:-.venv}"
if ! "$VENV/bin/ruff" check . || ! "$VENV/bin/ruff" format --check .; then
  echo "test.sh: ruff found lint or format problems; fix them with: $VENV/bin/ruff check --fix . && $VENV/bin/ruff format ." >&2
  exit 1
fi
if ! "$VENV/bin/lint-imports" pyproject.toml --no-cache >/tmp/kdsearch-lint-imports.$$ 2>&1; then
  sed -n '/Broken contracts/,$p' /tmp/kdsearch-lint-imports.$$ >&2
  rm -f /tmp/kdsearch-lint-imports.$$
  echo "test.sh: an import breaks the layers (see above; the contracts are [tool.importlinter] in pyproject.toml)" >&2
  exit 1
fi
rm -f /tmp/kdsearch-lint-imports.$$
"$VENV/bin/python" -m pytest "$@"
rc=$?
if [ "$rc" = 5 ]; then
  echo "test.sh: pytest collected no tests; that is a failure" >&2
  exit 1
fi
exit "$rc"
