#!/usr/bin/env python3
"""Writes a MOSEI-sized synthetic corpus of CMU-MultimodalSDK computational sequences
(.csd, HDF5, the SDK's layout) for benchmarking `mica import-csd`.

Real rates: ~2.5 words/s (300-d float64 word vectors, touching intervals, `sp` pauses as
zero vectors), COVAREP at 100 Hz (74-d float32, a few -inf), FACET at 30 fps (35-d float32),
~7 labelled segments per video (7 float32 label columns, sentiment first, as MOSEI's
"All Labels"). Clip lengths are uniform in [30, 115] s (MOSEI: 3,228 videos, ~65 h).

usage: make_csd_bench.py --out DIR [--videos 3200] [--gzip LEVEL] [--seed 0]
Needs numpy and h5py (default libver "earliest": superblock 0, as the SDK's files).
"""
import argparse, json, os
import numpy as np
import h5py


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--videos", type=int, default=3200)
    ap.add_argument("--gzip", type=int, default=None, help="gzip level (default: contiguous)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    names = {"glove_vectors": "words.csd", "COVAREP": "covarep.csd", "FACET_4.2": "facet.csd",
             "All Labels": "labels.csd"}
    files = {k: h5py.File(os.path.join(a.out, v), "w") for k, v in names.items()}
    groups = {}
    for k, f in files.items():
        root = f.create_group(k)
        groups[k] = root.create_group("data")
        md = root.create_group("metadata")
        dt = h5py.special_dtype(vlen=str)
        for key, val in {"root name": k, "computational sequence description": "benchmark"}.items():
            md.create_dataset(key, (1,), dtype=dt)[0] = json.dumps(val)
    opts = {} if a.gzip is None else {"compression": "gzip", "compression_opts": a.gzip}
    ids = []
    for i in range(a.videos):
        vid = "v%05d" % i
        ids.append(vid)
        dur = rng.uniform(30, 115)
        # Words: touching intervals 0.2-0.7 s from 0.3 s.
        lens = rng.uniform(0.2, 0.7, size=int(dur / 0.35) + 4)
        bounds = 0.3 + np.concatenate([[0], np.cumsum(lens)])
        bounds = bounds[bounds <= dur]
        wiv = np.stack([bounds[:-1], bounds[1:]], axis=1)
        wf = np.round(rng.normal(0, 0.4, size=(len(wiv), 300)), 5)
        wf[rng.random(len(wiv)) < 0.15] = 0.0  # sp
        n_a = int(dur * 100)
        aiv = np.stack([np.arange(n_a) / 100, np.arange(1, n_a + 1) / 100], axis=1)
        af = rng.normal(0, 1, size=(n_a, 74)).astype(np.float32)
        af[rng.integers(0, n_a, size=3), 11] = -np.inf
        n_v = int(dur * 30)
        viv = np.stack([np.arange(n_v) / 30, np.arange(1, n_v + 1) / 30], axis=1)
        vf = rng.normal(0, 1, size=(n_v, 35)).astype(np.float32)
        # ~7 segments over consecutive word ranges.
        cuts = np.linspace(0, len(wiv), 8).astype(int)
        liv = np.array([[wiv[s, 0], wiv[e - 1, 1]] for s, e in zip(cuts[:-1], cuts[1:]) if e > s])
        lf = rng.uniform(-3, 3, size=(len(liv), 7)).astype(np.float32)
        for k, (iv, f) in {"glove_vectors": (wiv, wf), "COVAREP": (aiv, af), "FACET_4.2": (viv, vf),
                           "All Labels": (liv, lf)}.items():
            g = groups[k].create_group(vid)
            g.create_dataset("features", data=f, **opts)
            g.create_dataset("intervals", data=iv, **opts)
    for f in files.values():
        f.close()
    n = len(ids)
    folds = {"train": ids[: int(n * 0.7)], "valid": ids[int(n * 0.7): int(n * 0.8)], "test": ids[int(n * 0.8):]}
    with open(os.path.join(a.out, "folds.json"), "w") as f:
        json.dump(folds, f)


if __name__ == "__main__":
    main()
