#!/usr/bin/env bash
# Idempotent set-up: a local venv with the pinned torch/torchvision and kdsearch (editable),
# and Fashion-MNIST from Debian's dataset-fashion-mnist when it is missing.
# With --test, also Debian's chromium (the report is checked in a real browser) and postgresql (the
# PostgreSQL worker test runs a private server; initdb and pg_ctl are all it needs).
# Re-running is fast: pip runs only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${KDSEARCH_VENV:-.venv}
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
APT_UPDATED=0

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif sudo -n true 2>/dev/null; then sudo "$@"; else return 1; fi
}

apt_install() {  # apt_install PACKAGE...: install Debian packages, running 'apt-get update' once
  if [ "$APT_UPDATED" = 0 ]; then as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || return 1; APT_UPDATED=1; fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi
want=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat "$VENV/.kdsearch-installed" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing kdsearch and its pinned dependencies into $VENV (about 2 minutes the first time)"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q -e '.[test]'
  echo "$want" > "$VENV/.kdsearch-installed"
fi

if [ ! -f "$FMNIST" ]; then
  echo "setup: Fashion-MNIST missing, installing Debian package dataset-fashion-mnist"
  if ! apt_install dataset-fashion-mnist; then
    echo "setup: could not install it. Run 'sudo apt-get install dataset-fashion-mnist', or pass" >&2
    echo "       'kdsearch run --data-root DIR' with a folder holding the four Fashion-MNIST IDX files." >&2
  fi
fi

if [ "${1:-}" = "--test" ] && ! command -v chromium >/dev/null 2>&1; then
  echo "setup: installing Debian package chromium (for the report rendering test)"
  apt_install chromium || echo "setup: chromium could not be installed; the browser test will fail" >&2
fi

# The PostgreSQL worker test starts a private server (initdb + pg_ctl, as the 'postgres' user when root).
if [ "${1:-}" = "--test" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  echo "setup: installing Debian package postgresql (the PostgreSQL worker test starts its own private server)"
  apt_install postgresql || echo "setup: postgresql could not be installed; the PostgreSQL worker test will fail" >&2
fi
