#!/usr/bin/env python3
"""Summarises a scripts/official_vs_mica.sh output directory: per-seed test metrics of the
official MulT and of mica --variant mult, mean +- std (sample std, ddof 1), whether each
mica mean lies within the official seed range, per-epoch valid losses, per-step times,
and a PNG of the valid-loss curves (docs/official-vs-mica.md).

Usage: python scripts/official_vs_mica_report.py OUTDIR PNG > table.md
"""
import csv
import glob
import json
import os
import statistics
import sys

out_dir, png = sys.argv[1], sys.argv[2]
METRICS = [("mae", "MAE", "lower"), ("corr", "Corr", "higher"), ("acc_2", "Acc2", "higher"),
           ("f1", "F1", "higher"), ("mult_acc_7", "Acc7", "higher"),
           ("mult_acc_5", "Acc5", "higher")]


def load_official():
    runs = {}
    for path in sorted(glob.glob(os.path.join(out_dir, "official-*.json"))):
        j = json.load(open(path))
        h = j["history"]
        runs[j["seed"]] = dict(
            test=j["test"]["mult"], best_epoch=j["best_epoch"],
            valid=[e["valid_loss"] for e in h], train=[e["train_loss"] for e in h],
            test_curve=[e["test_loss"] for e in h],
            epoch_s=statistics.mean(e["seconds"] for e in h),
            step_ms=1000 * statistics.mean(e["train_step_seconds"] for e in h),
            params=j["params"])
    return runs


def load_mica():
    runs = {}
    for d in sorted(glob.glob(os.path.join(out_dir, "mica-*"))):
        if not os.path.isdir(d) or not os.path.exists(os.path.join(d, "metrics.json")):
            continue
        m = json.load(open(os.path.join(d, "metrics.json")))
        rows = list(csv.DictReader(open(os.path.join(d, "log.csv"))))
        cfg = json.load(open(os.path.join(d, "config.json")))
        runs[m["seed"]] = dict(
            test=m["test"]["mult"], best_epoch=m["best_epoch"],
            valid=[float(r["valid_loss"]) for r in rows],
            train=[float(r["train_loss"]) for r in rows],
            epoch_s=statistics.mean(float(r["seconds"]) for r in rows),
            batch=cfg["train"]["batch_size"])
    return runs


def mean_std(xs):
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def main():
    off, mic = load_official(), load_mica()
    if not off or not mic:
        sys.exit(f"{out_dir}: need official-*.json and mica-*/metrics.json")
    print("### Test metrics (best-valid-epoch model, MulT's eval_mosi)\n")
    print("| run | seed | best epoch | " + " | ".join(n for _, n, _ in METRICS) + " |")
    print("|---|---:|---:|" + "---:|" * len(METRICS))
    for name, runs in (("official", off), ("mica", mic)):
        for s, r in sorted(runs.items()):
            print(f"| {name} | {s} | {r['best_epoch']} | "
                  + " | ".join(f"{r['test'][k]:.4f}" for k, _, _ in METRICS) + " |")
    for name, runs in (("official", off), ("mica", mic)):
        cells = []
        for k, _, _ in METRICS:
            m, sd = mean_std([r["test"][k] for r in runs.values()])
            cells.append(f"{m:.4f} ± {sd:.4f}")
        print(f"| **{name}** mean ± std | {len(runs)} seeds | | " + " | ".join(cells) + " |")
    print("\n### mica's mean against the official seed range [min, max]\n")
    print("| metric | official min | official max | mica mean | within or better |"
          " (mica − official mean) / official std |")
    print("|---|---:|---:|---:|---|---:|")
    verdicts = []
    for k, n, better in METRICS:
        ov = [r["test"][k] for r in off.values()]
        mm = statistics.mean(r["test"][k] for r in mic.values())
        lo, hi = min(ov), max(ov)
        ok = lo <= mm <= hi or (mm < lo if better == "lower" else mm > hi)
        verdicts.append(ok)
        tag = "within" if lo <= mm <= hi else ("better" if ok else "WORSE")
        om, osd = mean_std(ov)
        print(f"| {n} | {lo:.4f} | {hi:.4f} | {mm:.4f} | {tag} | {(mm - om) / osd:+.2f} |")
    print(f"\nAll metrics within the official spread or better: {all(verdicts)}\n")

    n_ep = min(len(r["valid"]) for r in list(off.values()) + list(mic.values()))
    print("### Valid loss (L1) per epoch\n")
    cols = [f"official {s}" for s in sorted(off)] + [f"mica {s}" for s in sorted(mic)]
    print("| epoch | " + " | ".join(cols) + " | official mean | mica mean |")
    print("|---:|" + "---:|" * (len(cols) + 2))
    for e in range(n_ep):
        vo = [off[s]["valid"][e] for s in sorted(off)]
        vm = [mic[s]["valid"][e] for s in sorted(mic)]
        print(f"| {e + 1} | " + " | ".join(f"{v:.4f}" for v in vo + vm)
              + f" | {statistics.mean(vo):.4f} | {statistics.mean(vm):.4f} |")
    print("\n### Train loss per epoch (mean over seeds)\n")
    print("| epoch | official | mica |")
    print("|---:|---:|---:|")
    for e in range(n_ep):
        print(f"| {e + 1} | {statistics.mean(r['train'][e] for r in off.values()):.4f} | "
              f"{statistics.mean(r['train'][e] for r in mic.values()):.4f} |")

    hp = json.load(open(sorted(glob.glob(os.path.join(out_dir, "official-*.json")))[0]))
    steps = -(-hp["hyper_params"]["n_train"] // hp["hyper_params"]["batch_size"])
    print("\n### Time (1 thread, shared 2-core machine)\n")
    print("| run | seed | s / epoch | ms / train step |")
    print("|---|---:|---:|---:|")
    for s, r in sorted(off.items()):
        print(f"| official | {s} | {r['epoch_s']:.1f} (train + valid + test) | "
              f"{r['step_ms']:.0f} (step only) |")
    for s, r in sorted(mic.items()):
        # mica's epoch time includes one valid pass; steps = ceil(n_train / batch).
        print(f"| mica | {s} | {r['epoch_s']:.1f} (train + valid) | "
              f"{1000 * r['epoch_s'] / steps:.0f} (epoch / {steps} steps) |")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for s, r in sorted(off.items()):
        ax.plot(range(1, len(r["valid"]) + 1), r["valid"], color="tab:blue", alpha=0.8,
                marker="o", ms=3, label="official MulT" if s == min(off) else None)
    for s, r in sorted(mic.items()):
        ax.plot(range(1, len(r["valid"]) + 1), r["valid"], color="tab:red", alpha=0.8,
                marker="s", ms=3, ls="--", label="mica --variant mult" if s == min(mic) else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("valid L1 loss")
    ax.set_title(f"Valid loss, official MulT ({len(off)} seeds) vs mica mult-official "
                 f"({len(mic)} seeds)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
