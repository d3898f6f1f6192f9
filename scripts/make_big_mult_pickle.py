#!/usr/bin/env python3
"""Write a large float64 MulT-layout dataset pickle (protocol 4 by default) for load benchmarks.

Layout as MulT's `mosei_senti_data_noalign.pkl`: {'train'|'valid'|'test': {'text' (N,50,300),
'audio' (N,500,74), 'vision' (N,500,35), 'labels' (N,1,1), 'id' (N,3) object}} in float64,
LEFT zero-padded, with a few -inf / NaN / +inf values in audio. Random content.

Usage: python3 scripts/make_big_mult_pickle.py --out /tmp/mica_big_mult.pkl --gb 1.0
Never write the file into the repository.
"""
import argparse
import pickle

import numpy as np

SHAPES = {"text": (50, 300), "audio": (500, 74), "vision": (500, 35)}


def make_split(rng, name, n):
    split = {}
    for key, (t, d) in SHAPES.items():
        x = rng.standard_normal((n, t, d), dtype=np.float32).astype(np.float64)
        lengths = rng.integers(1, t + 1, size=n)
        for i, length in enumerate(lengths):
            x[i, : t - length] = 0.0  # left padding
        if key == "audio":
            x[0, -1, 0] = -np.inf
            x[min(1, n - 1), -1, 1] = np.nan
            x[n - 1, -1, 2] = np.inf
        split[key] = x
    split["labels"] = rng.uniform(-3, 3, size=(n, 1, 1)).astype(np.float64)
    ids = np.empty((n, 3), dtype=object)
    for i in range(n):
        ids[i] = [f"video{name}{i}_{i % 7}", "0.0", "3.5"]
    split["id"] = ids
    return split


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output .pkl path (outside the repo, e.g. /tmp)")
    ap.add_argument("--gb", type=float, default=1.0, help="approximate file size in GB")
    ap.add_argument("--seed", type=int, default=0, help="random seed")
    ap.add_argument("--protocol", type=int, default=4, choices=[2, 3, 4, 5],
                    help="pickle protocol (2 stores bytes as _codecs.encode(str, 'latin1'))")
    args = ap.parse_args()
    per_sample = sum(t * d for t, d in SHAPES.values()) * 8
    total = max(3, int(args.gb * 1e9 / per_sample) + 1)
    sizes = {"train": total * 70 // 100, "valid": total * 10 // 100}
    sizes["test"] = total - sizes["train"] - sizes["valid"]
    rng = np.random.default_rng(args.seed)
    data = {name: make_split(rng, name, n) for name, n in sizes.items()}
    with open(args.out, "wb") as f:
        pickle.dump(data, f, protocol=args.protocol)
    f32 = sum(a.size * 4 for s in data.values() for k, a in s.items() if k != "id")
    print(f"wrote {args.out}: splits {sizes}, f32 size of numeric arrays {f32} bytes")


if __name__ == "__main__":
    main()
