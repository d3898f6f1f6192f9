#!/usr/bin/env bash
# CI step for the Python package (python/): a venv under target/, the wheel built by
# maturin and installed, then pytest python/tests against the `mica` binary that
# `cargo test --release` built. The wheel is built with the release profile
# (MICA_PY_PROFILE), so it reuses every dependency `cargo test --release` compiled just
# before (the core's Cargo.toml enables the features the bindings need, so both builds
# resolve alike); users run `pip install ./python` (release) too.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
profile="${MICA_PY_PROFILE:-release}"
bindir=$([ "$profile" = dev ] && echo debug || echo "$profile")
venv=target/py-venv
python3 -m venv "$venv"
export PATH="$PWD/$venv/bin:$PATH"   # the build backend runs `maturin` from PATH
"$venv/bin/pip" install -q maturin numpy pytest
MATURIN_PEP517_ARGS="--profile $profile --locked" \
    "$venv/bin/pip" install -q --force-reinstall --no-deps --no-build-isolation ./python
echo "python package: venv and wheel ready in $(( $(date +%s) - start ))s"
MICA_BIN="${MICA_BIN:-$PWD/target/$bindir/mica}" \
    "$venv/bin/python" -m pytest -q -p no:cacheprovider python/tests
echo "python package: built, installed and tested in $(( $(date +%s) - start ))s"
