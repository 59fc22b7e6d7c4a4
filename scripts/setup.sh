#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs for `make run` and `make test`.
# Safe to repeat: each step is skipped when its result is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DATA_DIR=${DATA_DIR:-$ROOT/.lanes}
PYTHON=${PYTHON:-python3}

need_apt=()
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
command -v nginx >/dev/null || need_apt+=(nginx-light)
command -v prometheus >/dev/null || need_apt+=(prometheus)
command -v wrk >/dev/null || need_apt+=(wrk)  # the benchmark's load generator
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  # policy-rc.d keeps the packages from starting system-wide services: Lanes
  # starts its own, bound to 127.0.0.1, with data under $DATA_DIR.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
    $SUDO chmod +x /usr/sbin/policy-rc.d
    trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# The database: FerretDB embedded in a small launcher of our own (tools/ferretdb).
binary="$DATA_DIR/bin/lanes-ferretdb"
if [ ! -x "$binary" ] || [ -n "$(find tools/ferretdb -newer "$binary" -type f 2>/dev/null | head -1)" ]; then
  command -v go >/dev/null || { echo "setup: Go is needed to build tools/ferretdb" >&2; exit 1; }
  echo "setup: building the FerretDB launcher (first time: a few minutes)"
  mkdir -p "$DATA_DIR/bin"
  (cd tools/ferretdb && GOFLAGS=-mod=mod go build -o "$binary.tmp" . && mv "$binary.tmp" "$binary")
fi

# Python: one virtualenv with exactly what requirements.lock pins (hash-checked: every
# function's dependencies, the client's and the tools), then shared/ and client/ as editable
# installs. Skipped while the lock and both package declarations are what was last installed.
stamp=.venv/.lanes-requirements
want=$(cat requirements.lock shared/pyproject.toml client/pyproject.toml | sha256sum | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing Python packages into .venv"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  pip=(.venv/bin/python -m pip --disable-pip-version-check)
  # Packages the lock no longer names go first (passlib before libpass, which installs the same files).
  stale=$(.venv/bin/python scripts/unlocked.py requirements.lock)
  [ -z "$stale" ] || "${pip[@]}" uninstall -q -y $stale
  "${pip[@]}" install -q --require-hashes -r requirements.lock
  "${pip[@]}" install -q --no-deps --no-build-isolation -e shared -e client
  echo "$want" > "$stamp"
fi
echo "setup: ready"
