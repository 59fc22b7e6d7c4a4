#!/usr/bin/env bash
# Writes the lock files from the declared dependencies (`make lock`), with the uv pinned in
# pyproject.toml's dev group:
#   requirements.lock                  - the development virtualenv: every function, the client, the tools
#   functions/<name>/requirements.lock - one function's image: `lanes[<name>]` only, at the same versions
#   requirements-build.lock            - what the images build shared/ with (setuptools), at the same version
#   requirements-render.lock           - the renderer's own environment (`make render`): PyYAML, at the same version
# Every line carries its hashes, for `pip install --require-hashes`. The locks hold for every
# platform and every Python from 3.11 on (uv's universal resolution), so the images, on a newer
# Python than the development machine, install the same versions.
# Versions already in a lock file are kept; `scripts/lock.sh --upgrade` moves to the newest
# that the declarations allow.
set -euo pipefail
cd "$(dirname "$0")/.."
UV=${UV:-.venv/bin/uv}
compile=("$UV" pip compile --quiet --universal --python-version 3.11 --generate-hashes
  --custom-compile-command "make lock" "$@")

"${compile[@]}" --group pyproject.toml:dev --all-extras shared/pyproject.toml client/pyproject.toml \
  -o requirements.lock
for folder in functions/*/; do
  name=$(basename "$folder")
  "${compile[@]}" --extra "$name" -c requirements.lock shared/pyproject.toml -o "$folder/requirements.lock"
done
echo setuptools | "${compile[@]}" -c requirements.lock - -o requirements-build.lock
echo pyyaml | "${compile[@]}" -c requirements.lock - -o requirements-render.lock
