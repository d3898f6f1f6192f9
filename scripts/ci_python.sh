#!/usr/bin/env bash
# CI step for the Python package (python/): a venv under target/, the wheel built by
# maturin and installed, then pytest python/tests against the `mica` binary that
# `cargo test` built. The wheel is built with the dev profile, so it reuses the
# dependencies `cargo test` compiled just before (a release build would compile candle
# again); `pip install ./python` (release) is what users run.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
venv=target/py-venv
python3 -m venv "$venv"
"$venv/bin/pip" install -q maturin numpy pytest
MATURIN_PEP517_ARGS="--profile dev --locked" \
    "$venv/bin/pip" install -q --no-build-isolation ./python
MICA_BIN="${MICA_BIN:-$PWD/target/debug/mica}" "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
echo "python package: built, installed and tested in $(( $(date +%s) - start ))s"
