"""Shared helpers: the repository's paths and the `mica` binary the Python results are
compared with (``MICA_BIN``, else ``target/release/mica`` or ``target/debug/mica``)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import List

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"

# Tiny model options (as tests/cli_train.rs): 1 layer, d = 8, 2 heads.
TINY_FLAGS = [
    "--d", "8", "--heads", "2", "--layers", "1", "--kernels", "1,1,1",
    "--set", "align.mmd_max_samples=32", "--batch-size", "5",
]
TINY = dict(d=8, heads=2, layers=1, kernels=(1, 1, 1), batch_size=5,
            set={"align.mmd_max_samples": 32})


def mica_bin() -> Path:
    env = os.environ.get("MICA_BIN")
    if env:
        return Path(env)
    for profile in ("release", "debug"):
        p = ROOT / "target" / profile / "mica"
        if p.is_file():
            return p
    pytest.fail("no mica binary: build it (cargo build --release) or set MICA_BIN")
    raise AssertionError  # unreachable


def run_cli(args: List[str]) -> subprocess.CompletedProcess:
    r = subprocess.run([str(mica_bin()), *args], capture_output=True, text=True)
    assert r.returncode == 0, f"mica {' '.join(args)}:\n{r.stderr}"
    return r


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic dataset written by `mica synth` (mica format, with intervals)."""
    out = tmp_path_factory.mktemp("data") / "synth"
    run_cli(["synth", "--size", "small", "--seed", "5", "--n-train", "20",
             "--n-valid", "8", "--n-test", "11", "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def tiny_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained by `mica train` on `tiny_data` for 2 epochs."""
    out = tmp_path_factory.mktemp("runs") / "cli"
    run_cli(["train", "--quiet", "--threads=1", "--epochs", "2", *TINY_FLAGS,
             "--data", str(tiny_data), "--out", str(out)])
    return out
