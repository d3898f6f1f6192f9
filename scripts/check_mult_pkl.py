#!/usr/bin/env python3
"""Validate a MulT-layout dataset pickle (e.g. one written by `mica synth --format mult-pkl`).

Usage: python3 scripts/check_mult_pkl.py FILE.pkl [EXPECTED.json]

Loads FILE with Python's own pickle + numpy (trusted, locally generated files only!),
checks MulT's layout (train/valid/test dicts with text/audio/vision/labels[/id]),
float32 arrays of shape (N, T, D), left zero-padding with a non-zero first channel on
real frames, labels (N,1,1) in [-3, 3] or (N,4,2) one-hot, ids (N,3) of str, and prints
per split and key the shape, dtype and float64 sum. With EXPECTED.json (as printed by
`mica synth ... --sums SUMS.json`, or any {split: {key: sum}} mapping) it compares the sums.
Exit status 0 when everything checks out.
"""
import json
import pickle
import sys

import numpy as np


def check(path, expected=None):
    with open(path, "rb") as f:
        d = pickle.load(f)
    problems = []
    sums = {}
    assert set(d) >= {"train", "valid", "test"}, f"top-level keys {sorted(d)}"
    for split in ("train", "valid", "test"):
        s = d[split]
        sums[split] = {}
        n = None
        for key in ("text", "audio", "vision"):
            a = s[key]
            if a.dtype != np.float32 or a.ndim != 3:
                problems.append(f"{split}/{key}: dtype {a.dtype} ndim {a.ndim}")
            n = a.shape[0] if n is None else n
            if a.shape[0] != n:
                problems.append(f"{split}/{key}: N {a.shape[0]} != {n}")
            frame_zero = np.all(a == 0, axis=2)  # [N, T]
            first_zero = a[:, :, 0] == 0
            # MulT's padding test: a frame is padding iff channel 0 is exactly 0.
            if not np.array_equal(frame_zero, first_zero):
                problems.append(f"{split}/{key}: a real frame has channel 0 == 0")
            # Left padding: once a real frame appears, no padding frame follows.
            real = ~frame_zero
            if np.any(np.diff(real.astype(np.int8), axis=1) < 0):
                problems.append(f"{split}/{key}: padding after real frames (not left-padded)")
            if not np.all(np.isfinite(a)):
                problems.append(f"{split}/{key}: non-finite values")
            sums[split][key] = float(a.astype(np.float64).sum())
            print(f"{split:5s} {key:6s} {str(a.shape):16s} {a.dtype} sum={sums[split][key]:.6f} "
                  f"mean_len={real.sum(1).mean():.1f}")
        lab = s["labels"]
        sums[split]["labels"] = float(lab.astype(np.float64).sum())
        if lab.dtype != np.float32 or lab.shape[0] != n:
            problems.append(f"{split}/labels: dtype {lab.dtype} shape {lab.shape}")
        if lab.shape[1:] == (1, 1):
            if lab.min() < -3 or lab.max() > 3:
                problems.append(f"{split}/labels: outside [-3, 3]")
        elif lab.shape[1:] == (4, 2):
            if not np.all(lab.sum(2) == 1):
                problems.append(f"{split}/labels: not one-hot")
        else:
            problems.append(f"{split}/labels: shape {lab.shape}")
        print(f"{split:5s} labels {str(lab.shape):16s} {lab.dtype} sum={sums[split]['labels']:.6f}")
        if "id" in s:
            ids = s["id"]
            if ids.dtype != object or ids.shape != (n, 3) or not isinstance(ids[0, 0], str):
                problems.append(f"{split}/id: dtype {ids.dtype} shape {ids.shape}")
            print(f"{split:5s} id     {str(ids.shape):16s} {ids.dtype} first={list(ids[0])}")
    if expected is not None:
        for split, keys in expected.items():
            for key, want in keys.items():
                got = sums[split][key]
                if abs(got - want) > 1e-6 * max(1.0, abs(want)):
                    problems.append(f"{split}/{key}: sum {got!r} != expected {want!r}")
        print("sums compared with", len([k for v in expected.values() for k in v]), "expected values")
    for p in problems:
        print("PROBLEM:", p)
    print("OK" if not problems else f"{len(problems)} problem(s)")
    return not problems


if __name__ == "__main__":
    exp = None
    if len(sys.argv) > 2:
        with open(sys.argv[2]) as f:
            exp = json.load(f)
    sys.exit(0 if check(sys.argv[1], exp) else 1)
