"""The Python API gives the CLI's numbers: predictions bit for bit, metrics on the
reference fixtures, datasets as the reader's expected values."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

import mica
from conftest import FIXTURES, run_cli


def read_csv(path: Path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def test_predict_equals_cli_predict_bit_for_bit(tiny_data: Path, tiny_run: Path, tmp_path: Path):
    csv_path = tmp_path / "pred.csv"
    run_cli(["predict", "--checkpoint", str(tiny_run / "best"), "--data", str(tiny_data),
             "--split", "test", "--out", str(csv_path)])
    rows = read_csv(csv_path)
    cli_pred = np.array([float(r["pred"]) for r in rows])
    cli_label = np.array([float(r["label"]) for r in rows])

    ds = mica.read_dataset(tiny_data)
    test = ds["test"]
    model = mica.load(tiny_run / "best")
    pred = model.predict(test["text"], test["audio"], test["vision"],
                         intervals=[test[f"{m}_intervals"] for m in mica.MODALITIES])
    assert pred.dtype == np.float32 and pred.shape == (11,)
    # The CLI prints each f32 prediction widened to f64 in its shortest exact form.
    assert np.array_equal(pred.astype(np.float64), cli_pred)
    assert np.array_equal(test["labels"].astype(np.float64), cli_label)
    assert [r["id"] for r in rows] == test["ids"]
    # Index positions (the default) do not read the intervals: same without them.
    again = model.predict(test["text"], test["audio"], test["vision"])
    assert np.array_equal(again, pred)
    # A run directory loads its best weights; the config is the run's.
    assert np.array_equal(mica.load(tiny_run).predict(test["text"], test["audio"], test["vision"]), pred)
    cfg = json.loads((tiny_run / "config.json").read_text())
    assert model.config == cfg
    assert model.config["model"]["d"] == 8


def _expected(name: str) -> dict:
    return json.loads((FIXTURES / "metrics" / f"{name}.expected.json").read_text())


@pytest.mark.parametrize("name", ["sentiment_a", "sentiment_b"])
def test_sentiment_metrics_equal_fixtures_and_cli(name: str):
    path = FIXTURES / "metrics" / f"{name}.csv"
    rows = read_csv(path)
    pred = np.array([float(r["pred"]) for r in rows])
    label = np.array([float(r["label"]) for r in rows])
    got = mica.metrics(pred, label, task="mosi")
    exp = _expected(name)
    for k, want in exp["official"].items():
        g = got["mult"][k]
        if k == "mae":
            # MulT prints MAE as float32.
            assert np.float32(g) == np.float32(want)
            assert g == exp["reimpl"]["mae"]
        else:
            assert g == want, k
    assert len(got["mult"]) == 6
    assert {k: round(v, 4) for k, v in got["mmsa"].items()} == exp["mmsa"]
    cli = json.loads(run_cli(["metrics", "--task", "mosi", "--file", str(path)]).stdout)
    assert got == cli
    # [N, 1] columns give the same.
    assert mica.metrics(pred[:, None], label[:, None], task="mosi") == got


def test_emotion_metrics_equal_fixture_and_cli():
    path = FIXTURES / "metrics" / "emotion_a.csv"
    rows = read_csv(path)
    pred = np.array([[float(r[f"pred_{i}"]) for i in range(8)] for r in rows])
    label = np.array([[float(r[f"label_{i}"]) for i in range(4)] for r in rows])
    got = mica.metrics(pred, label, task="iemocap")
    assert got["mult"] == _expected("emotion_a")["official"]
    assert "mmsa" not in got
    cli = json.loads(run_cli(["metrics", "--task", "iemocap", "--file", str(path)]).stdout)
    assert got == cli


@pytest.mark.parametrize("name", ["mosi_tiny_p2_np1.pkl", "mosei_tiny_p4_np2.pkl",
                                  "iemocap_tiny_p5_np2.pkl", "mmsa_tiny_unaligned.pkl"])
def test_read_dataset_pickles_match_the_reference_sums(name: str):
    exp = json.loads((FIXTURES / "pickles" / "expected.json").read_text())[name]
    ds = mica.read_dataset(FIXTURES / "pickles" / name)
    assert set(ds) == set(exp["splits"])
    for split, keys in exp["splits"].items():
        s = ds[split]
        for m in mica.MODALITIES:
            e = keys[m]
            a = s[m]
            assert a.dtype == np.float32 and a.ndim == 3
            assert a.shape[0] == e["shape"][0]
            assert np.isfinite(a).all()
            assert math.isclose(math.fsum(a.astype(np.float64).ravel()), e["sum_f32_clean"],
                                rel_tol=1e-9, abs_tol=1e-9), (split, m)
        n = s["text"].shape[0]
        if name.startswith("iemocap"):
            assert s["labels"].shape == (n, 4) and s["labels"].dtype == np.uint8
        else:
            assert s["labels"].shape == (n,) and s["labels"].dtype == np.float32
        for m in mica.MODALITIES:
            lengths = s[f"{m}_lengths"]
            assert lengths.shape == (n,) and (lengths <= s[m].shape[1]).all()


def test_read_dataset_equals_cli_convert(tmp_path: Path):
    """A pickle read directly and the mica dataset `mica convert` makes of it are equal."""
    src = FIXTURES / "pickles" / "mosi_tiny_p4_np1.pkl"
    out = tmp_path / "converted"
    run_cli(["convert", str(src), "--out", str(out)])
    a, b = mica.read_dataset(src), mica.read_dataset(out)
    assert set(a) == set(b)
    for split in a:
        for k in ("text", "audio", "vision", "labels"):
            assert np.array_equal(a[split][k], b[split][k]), (split, k)
        assert a[split]["ids"] == b[split]["ids"]
