"""Training from numpy arrays, progress and Ctrl-C, the synthetic benchmark, and errors
as exceptions (never a crash)."""

from __future__ import annotations

import json
import os
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest

import mica
from conftest import FIXTURES, TINY


@pytest.fixture(scope="module")
def arrays() -> dict:
    return mica.synth(size="small", seed=7, n_train=20, n_valid=8, n_test=9)


def test_synth_has_ground_truth_timing_and_is_deterministic(arrays: dict):
    again = mica.synth(size="small", seed=7, n_train=20, n_valid=8, n_test=9)
    other = mica.synth(size="small", seed=8, n_train=20, n_valid=8, n_test=9)
    assert {k: v.shape[0] for k, v in ((s, arrays[s]["text"]) for s in arrays)} == {
        "train": 20, "valid": 8, "test": 9}
    for split in arrays:
        s = arrays[split]
        for m in mica.MODALITIES:
            assert np.array_equal(s[m], again[split][m])
            iv = s[f"{m}_intervals"]
            n, t, _ = s[m].shape
            assert iv.shape == (n, t, 2)
            # Padding (the leading steps beyond each sample's length) has NaN timing,
            # real elements a finite [start, end] with start <= end.
            real = ~np.isnan(iv[..., 0])
            assert np.array_equal(real.sum(axis=1), s[f"{m}_lengths"])
            assert (iv[real][:, 0] <= iv[real][:, 1]).all()
    assert not np.array_equal(arrays["train"]["text"], other["train"]["text"])
    with pytest.raises(mica.ConfigError, match='unknown option "n_trian"'):
        mica.synth(n_trian=3)
    with pytest.raises(mica.ConfigError, match='size "huge"'):
        mica.synth(size="huge")


def test_train_from_numpy_arrays(arrays: dict, tmp_path: Path):
    events = []
    res = mica.train(arrays, variant="mica", seeds=[3], out=tmp_path / "run", epochs=2,
                     callback=events.append, progress=False, **TINY)
    batches = [e for e in events if e["kind"] == "batch"]
    epochs = [e for e in events if e["kind"] == "epoch"]
    # 20 samples in batches of 5: 4 batches per epoch, 2 epochs.
    assert [(e["epoch"], e["samples"]) for e in batches] == [
        (1, 5), (1, 10), (1, 15), (1, 20), (2, 5), (2, 10), (2, 15), (2, 20)]
    assert [e["epoch"] for e in epochs] == [1, 2] and all(e["seed"] == 3 for e in events)
    (run,) = res["runs"]
    assert [h["train_loss"] for h in run["history"]] == [e["train_loss"] for e in epochs]
    assert run["out"] == str(tmp_path / "run")
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == run["test"]
    # The best weights' predictions give exactly the reported test metrics.
    model = mica.load(tmp_path / "run" / "best")
    t = arrays["test"]
    pred = model.predict(t["text"], t["audio"], t["vision"])
    assert mica.metrics(pred, t["labels"], task="mosi") == run["test"]
    assert model.config["variant"] == "mica" and model.config["train"]["seed"] == 3
    # float64 input is converted; another batch size predicts the same samples.
    p64 = model.predict(t["text"].astype(np.float64), t["audio"], t["vision"], batch_size=2)
    np.testing.assert_allclose(p64, pred, rtol=1e-5, atol=1e-6)
    att = model.attention(t["text"], t["audio"], t["vision"], sample=1, block="A->L",
                          intervals=[t[f"{m}_intervals"] for m in mica.MODALITIES])
    rows, cols = t["text_lengths"][1], t["audio_lengths"][1]
    assert att["matrix"].shape == (rows, cols) and att["truth"].shape == (rows, cols)
    # Probabilities over all source steps (padding included, as MulT attends), cropped to
    # the real ones: each row sums to at most 1.
    m = att["matrix"]
    assert (m >= 0).all() and (m.sum(axis=1) <= 1 + 1e-5).all() and m.sum() > 0
    assert att["truth"].dtype == np.bool_ and att["truth"].any()
    assert 0.0 <= att["corr_acc"] <= 1.0 and att["layer"] == att["layers"] == 1


def test_multi_seed_mean_and_std(arrays: dict, tmp_path: Path):
    res = mica.train(arrays, variant="backbone", seeds=[1, 2], out=tmp_path / "multi",
                     epochs=1, progress=False, **TINY)
    maes = [r["test"]["mult"]["mae"] for r in res["runs"]]
    stat = res["test"]["mult.mae"]
    assert stat["n"] == 2
    assert stat["mean"] == pytest.approx(np.mean(maes), rel=1e-12)
    assert stat["std"] == pytest.approx(np.std(maes), rel=1e-9, abs=1e-15)
    summary = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert summary["seeds"] == [1, 2] and summary["test"] == res["test"]
    assert sorted(os.listdir(tmp_path / "multi")) == ["seed-1", "seed-2", "summary.json"]


def test_ctrl_c_stops_cleanly_keeping_the_last_checkpoint(arrays: dict, tmp_path: Path):
    run = tmp_path / "stopped"

    def interrupt(ev):
        if ev["kind"] == "batch" and ev["epoch"] == 2:
            os.kill(os.getpid(), signal.SIGINT)

    # Python's own Ctrl-C handler, even where SIGINT was ignored at start-up (a process
    # started in the background by a non-interactive shell).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            mica.train(arrays, seeds=[4], out=run, epochs=3, callback=interrupt,
                       progress=False, **TINY)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert (run / "last" / "checkpoint.json").is_file()
    assert not (run / "metrics.json").exists()
    log = (run / "log.csv").read_text().strip().splitlines()
    assert len(log) == 2  # header + epoch 1
    # Resumed, the run ends as one that was never stopped.
    resumed = mica.train(arrays, resume=run, progress=False)
    assert resumed["runs"][0]["seed"] == 4
    assert [h["epoch"] for h in resumed["runs"][0]["history"]] == [1, 2, 3]
    straight = mica.train(arrays, seeds=[4], out=tmp_path / "straight", epochs=3,
                          progress=False, **TINY)
    assert resumed["runs"][0]["test"] == straight["runs"][0]["test"]


def test_callback_exception_stops_and_propagates(arrays: dict, tmp_path: Path):
    class Boom(Exception):
        pass

    def cb(ev):
        if ev["kind"] == "epoch":
            raise Boom("stop here")

    with pytest.raises(Boom):
        mica.train(arrays, seeds=[5], out=tmp_path / "boom", epochs=3, callback=cb,
                   progress=False, **TINY)
    assert (tmp_path / "boom" / "last" / "checkpoint.json").is_file()


def test_malicious_pickles_are_refused_and_run_nothing(tmp_path: Path):
    with pytest.raises(mica.UnsafePickleError, match="os.*system|posix.*system"):
        mica.read_dataset(FIXTURES / "pickles" / "evil_os_system.pkl")

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"train": {"text": Evil()}}, f, protocol=4)
    with pytest.raises(mica.UnsafePickleError) as e:
        mica.read_dataset(path)
    assert str(path) in str(e.value)
    assert isinstance(e.value, mica.DataError) and isinstance(e.value, mica.MicaError)
    assert not marker.exists()


def test_bad_input_raises_mica_errors(arrays: dict, tmp_path: Path, tiny_run: Path):
    missing = tmp_path / "nope.pkl"
    with pytest.raises(mica.DataError, match="nope.pkl"):
        mica.read_dataset(missing)
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(mica.DataError, match="unknown format"):
        mica.read_dataset(text)
    with pytest.raises(mica.CheckpointError, match="not a mica checkpoint"):
        mica.load(tmp_path)

    model = mica.load(tiny_run / "best")
    t = arrays["test"]
    with pytest.raises(mica.DataError, match="audio: shape"):
        model.predict(t["text"], t["audio"][:, :, :3], t["vision"])
    with pytest.raises(mica.DataError, match="expected 3 dimensions"):
        model.predict(t["text"][0], t["audio"], t["vision"])
    with pytest.raises(mica.ConfigError, match="block"):
        model.attention(t["text"], t["audio"], t["vision"], block="L->L")

    with pytest.raises(mica.MetricsError, match="4 predictions for 3 labels"):
        mica.metrics(np.zeros(4), np.zeros(3), task="mosi")
    with pytest.raises(mica.MetricsError, match="non-finite|NaN"):
        mica.metrics(np.array([0.1, np.nan]), np.zeros(2), task="mosi")
    with pytest.raises(mica.ConfigError, match="task"):
        mica.metrics(np.zeros(2), np.zeros(2), task="sst")

    with pytest.raises(mica.ConfigError, match="--no-such-option|no-such-option"):
        mica.train(arrays, out=tmp_path / "r1", no_such_option=3, progress=False)
    with pytest.raises(mica.ConfigError, match="variant"):
        mica.train(arrays, variant="transformer", out=tmp_path / "r2", progress=False)
    with pytest.raises(mica.ConfigError, match="appears twice"):
        mica.train(arrays, seeds=[1, 1], out=tmp_path / "r3", progress=False)
    bad = {k: dict(v) for k, v in arrays.items()}
    del bad["valid"]["labels"]
    with pytest.raises(mica.DataError, match="split 'valid': no 'labels'"):
        mica.train(bad, out=tmp_path / "r4", progress=False, **TINY)
    bad = {k: dict(v) for k, v in arrays.items()}
    bad["train"]["labels"] = bad["train"]["labels"].copy()
    bad["train"]["labels"][3] = np.nan
    with pytest.raises(mica.DataError, match="label 3 is NaN"):
        mica.train(bad, out=tmp_path / "r5", progress=False, **TINY)
    bad = {k: v for k, v in arrays.items() if k != "test"}
    with pytest.raises(mica.DataError, match="no `test` split"):
        mica.train(bad, out=tmp_path / "r6", progress=False, epochs=1, **TINY)
    # An existing non-run directory is refused untouched.
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "thesis.tex").write_text("x")
    with pytest.raises(mica.ConfigError, match="keep"):
        mica.train(arrays, out=keep, progress=False, epochs=1, **TINY)
    assert os.listdir(keep) == ["thesis.tex"]


def test_example_script_runs(tmp_path: Path):
    """examples/python_quickstart.py --quick: trains, reloads, scores, (plots)."""
    import subprocess
    import sys

    from conftest import ROOT

    out = tmp_path / "quick"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "python_quickstart.py"),
                        "--quick", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "test MAE" in r.stdout and (out / "best").is_dir()
