"""mica from Python: train MICA on the built-in asynchronous benchmark, score the best
weights, and plot the loss curves and one crossmodal attention map (with matplotlib,
when it is installed).

    pip install ./python matplotlib tqdm
    python examples/python_quickstart.py              # synth-small, the preset's 12 epochs (~1 min)
    python examples/python_quickstart.py --quick      # a few seconds: small data, tiny model
"""

from __future__ import annotations

import argparse
import os

import numpy as np

import mica


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/python-quickstart", help="run directory (must be new or empty)")
    ap.add_argument("--quick", action="store_true", help="tiny data and model, 2 epochs")
    a = ap.parse_args()

    # The benchmark as numpy arrays, with every element's true start/end time.
    if a.quick:
        data = mica.synth(size="small", seed=0, n_train=60, n_valid=20, n_test=20)
        options = dict(epochs=2, d=8, heads=2, layers=1, batch_size=10)
    else:
        data = mica.synth(size="small", seed=0)
        options = {}
    test = data["test"]
    print({split: s["text"].shape for split, s in data.items()})

    # Train (a tqdm bar when tqdm is installed; Ctrl-C stops and keeps the last checkpoint).
    res = mica.train(data, variant="mica", seeds=[1111], out=a.out, **options)
    run = res["runs"][0]
    print(f"best epoch {run['best_epoch']}, test MAE {run['test']['mult']['mae']:.4f}, "
          f"Corr {run['test']['mult']['corr']:.3f}")

    # The best weights, from disk: predictions and the CLI's metrics.
    model = mica.load(os.path.join(a.out, "best"))
    pred = model.predict(test["text"], test["audio"], test["vision"])
    scores = mica.metrics(pred, test["labels"], task="mosi")
    assert scores == run["test"], "the reloaded model scores as the run reported"
    print("MMSA Has0_acc_2:", round(scores["mmsa"]["Has0_acc_2"], 4))

    intervals = [test[f"{m}_intervals"] for m in mica.MODALITIES]
    att = model.attention(test["text"], test["audio"], test["vision"], sample=0,
                          block="A->L", intervals=intervals)
    print(f"attention A->L of test sample 0: {att['matrix'].shape}, corr. acc. {att['corr_acc']}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install matplotlib)")
        return
    hist = run["history"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    epochs = [h["epoch"] for h in hist]
    ax1.plot(epochs, [h["train_task"] for h in hist], label="train task loss")
    ax1.plot(epochs, [h["valid_loss"] for h in hist], label="valid loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("L1 loss")
    ax1.legend()
    ax1.set_title("Loss curves")
    im = ax2.imshow(att["matrix"], aspect="auto", cmap="viridis")
    if att["truth"] is not None:
        ax2.contour(np.asarray(att["truth"], dtype=float), levels=[0.5], colors="white", linewidths=0.8)
    ax2.set_xlabel("audio step (source)")
    ax2.set_ylabel("text step (target)")
    ax2.set_title(f"Attention A->L, layer {att['layer']}/{att['layers']} (white: true co-occurrence)")
    fig.colorbar(im, ax=ax2)
    fig.tight_layout()
    png = os.path.join(a.out, "python_quickstart.png")
    fig.savefig(png, dpi=120)
    print("wrote", png)


if __name__ == "__main__":
    main()
