#!/usr/bin/env python3
"""Trains the OFFICIAL MulT (yaohungt/Multimodal-Transformer, commit a670936) on a
MulT-layout pickle, with the official `main.py` defaults and the official `src/train.py`
loop, and writes per-epoch losses and the final test metrics as JSON.

What is official and what is not (see docs/official-vs-mica.md):

* Model: the official `src/models.py` + `modules/*.py`, unmodified except the one
  compatibility edit `positions.view(-1)` -> `positions.reshape(-1)` in
  `modules/position_embedding.py` (the 2019 code raises on PyTorch >= 1.x otherwise;
  asserted, same as scripts/bench_pytorch.py). d = 30 and Conv1d kernel_size = 1 are the
  official hard-coded values and are kept.
* Data: the official `src/dataset.py` (`Multimodal_Datasets`: float32 tensors,
  `audio[audio == -inf] = 0`), executed as is except its unused `from scipy import signal`
  line; the pickle is reached through a symlink `<tmp>/synth_data_noalign.pkl` (the class
  builds the file name from a directory and a dataset name). The dataset name `synth`
  keeps `__getitem__` off the MOSI branch that `.decode()`s byte-string ids.
* Hyper-parameters: `main.py`'s defaults (d 30, 5 heads, nlevels 5, the mem encoders 3
  layers, attn dropouts 0.1 / 0.0 / 0.0, relu 0.1, res 0.1, embed 0.25, out 0.0,
  attn_mask on, lonly = aonly = vonly = True, batch 24, lr 1e-3, clip 0.8, Adam,
  `when` 20, L1Loss); `--epochs` replaces `num_epochs` (default 40).
* Loop: `src/train.py`'s `train_model` transcribed line by line minus CUDA, CTC and
  batch_chunk (all inactive for MulT on CPU): `torch.manual_seed(seed)` first; all three
  DataLoaders `shuffle=True` (they draw from the global RNG, as the official ones do);
  `model.zero_grad()`, forward, `L1Loss`, `backward`, `clip_grad_norm_(clip)`,
  `optimizer.step()`; per epoch the valid and test losses (`sum(batch mean * B) / n`),
  `ReduceLROnPlateau(mode='min', patience=when, factor=0.1)` stepped on the valid loss,
  the model kept when the valid loss improves (the official code `torch.save`s it; here a
  deep copy of the state dict, same effect), and at the end the kept model is evaluated on
  test by the official `eval_mosi(results, truths, True)` (its printed values are parsed).
  `nn.DataParallel` is skipped: on a CPU-only machine it calls the module directly.

Usage:
  python scripts/train_official.py --data synth.pkl --seed 1111 --epochs 20 --out o.json

The official sources are NOT shipped: see scripts/bench_pytorch.md "Setup" for how to
extract src/models.py, modules/*.py (and here also src/dataset.py, src/eval_metrics.py)
into --official-dir.
"""
import argparse
import contextlib
import copy
import io
import json
import os
import sys
import tempfile
import time
import types

P = argparse.ArgumentParser(description=__doc__.split("\n")[0])
P.add_argument("--data", required=True, help="MulT-layout pickle (*_data_noalign.pkl)")
P.add_argument("--seed", type=int, default=1111, help="main.py --seed (default 1111)")
P.add_argument("--epochs", type=int, default=40, help="main.py --num_epochs (default 40)")
P.add_argument("--out", required=True, help="JSON output path")
P.add_argument("--threads", type=int, default=1, help="torch threads (mica's --threads 1)")
P.add_argument("--official-dir", default="/tmp/mult_official")
P.add_argument("--quiet", action="store_true")
ARGS = P.parse_args()

for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn, optim  # noqa: E402
from torch.optim.lr_scheduler import ReduceLROnPlateau  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

torch.set_num_threads(ARGS.threads)

# main.py's defaults (argparse), verbatim values.
HP = argparse.Namespace(
    model="MulT", vonly=False, aonly=False, lonly=False, aligned=False,
    attn_dropout=0.1, attn_dropout_a=0.0, attn_dropout_v=0.0, relu_dropout=0.1,
    embed_dropout=0.25, res_dropout=0.1, out_dropout=0.0, nlevels=5, num_heads=5,
    attn_mask=True, batch_size=24, clip=0.8, lr=1e-3, optim="Adam",
    num_epochs=ARGS.epochs, when=20, batch_chunk=1, seed=ARGS.seed)
# main.py: no partial mode given -> all three.
HP.lonly = HP.vonly = HP.aonly = True


def _exec_patched(name, rel, patches):
    """Imports <official-dir>/<rel> as module `name` after exact, asserted replacements."""
    path = os.path.join(ARGS.official_dir, rel)
    if not os.path.exists(path):
        sys.exit(f"{path}: official MulT source not found (see scripts/bench_pytorch.md)")
    src = open(path).read()
    for old, new, count in patches:
        assert src.count(old) == count, f"unexpected official {rel}: {old!r}"
        src = src.replace(old, new)
    mod = types.ModuleType(name)
    mod.__file__ = path
    sys.modules[name] = mod
    exec(compile(src, path, "exec"), mod.__dict__)
    return mod


def load_official():
    sys.path.insert(0, ARGS.official_dir)
    import modules  # noqa: F401
    _exec_patched("modules.position_embedding", "modules/position_embedding.py",
                  [("positions.view(-1)", "positions.reshape(-1)", 1)])
    models = _exec_patched("mult_official_models", "src/models.py", [])
    dataset = _exec_patched("mult_official_dataset", "src/dataset.py",
                            [("from scipy import signal\n", "", 1)])
    metrics = _exec_patched("mult_official_metrics", "src/eval_metrics.py", [])
    return models, dataset, metrics


def main():
    models, dataset, metrics = load_official()
    data_path = os.path.abspath(ARGS.data)
    if not os.path.isfile(data_path):
        sys.exit(f"--data {ARGS.data}: no such file")

    torch.manual_seed(HP.seed)  # main.py, before anything else
    tmp = tempfile.mkdtemp(prefix="mult_official_data_")
    os.symlink(data_path, os.path.join(tmp, "synth_data_noalign.pkl"))
    train_data = dataset.Multimodal_Datasets(tmp, "synth", "train", False)
    valid_data = dataset.Multimodal_Datasets(tmp, "synth", "valid", False)
    test_data = dataset.Multimodal_Datasets(tmp, "synth", "test", False)
    os.unlink(os.path.join(tmp, "synth_data_noalign.pkl"))
    os.rmdir(tmp)
    train_loader = DataLoader(train_data, batch_size=HP.batch_size, shuffle=True)
    valid_loader = DataLoader(valid_data, batch_size=HP.batch_size, shuffle=True)
    test_loader = DataLoader(test_data, batch_size=HP.batch_size, shuffle=True)

    HP.orig_d_l, HP.orig_d_a, HP.orig_d_v = train_data.get_dim()
    HP.l_len, HP.a_len, HP.v_len = train_data.get_seq_len()
    HP.layers = HP.nlevels
    HP.n_train, HP.n_valid, HP.n_test = len(train_data), len(valid_data), len(test_data)
    HP.output_dim = 1
    HP.criterion = "L1Loss"

    # src/train.py initiate()
    model = models.MULTModel(HP)
    optimizer = getattr(optim, HP.optim)(model.parameters(), lr=HP.lr)
    criterion = getattr(nn, HP.criterion)()
    scheduler = ReduceLROnPlateau(optimizer, mode="min", patience=HP.when, factor=0.1)
    n_params = sum(p.numel() for p in model.parameters())

    def train():
        epoch_loss = 0
        model.train()
        steps, step_time = 0, 0.0
        for batch_X, batch_Y, _meta in train_loader:
            t0 = time.perf_counter()
            _sample_ind, text, audio, vision = batch_X
            eval_attr = batch_Y.squeeze(-1)
            model.zero_grad()
            batch_size = text.size(0)
            preds, _hiddens = model(text, audio, vision)
            raw_loss = criterion(preds, eval_attr)
            combined_loss = raw_loss
            combined_loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), HP.clip)
            optimizer.step()
            epoch_loss += combined_loss.item() * batch_size
            step_time += time.perf_counter() - t0
            steps += 1
        return epoch_loss / HP.n_train, step_time / max(steps, 1)

    def evaluate(net, test=False):
        net.eval()
        loader = test_loader if test else valid_loader
        total_loss = 0.0
        results, truths = [], []
        with torch.no_grad():
            for batch_X, batch_Y, _meta in loader:
                _sample_ind, text, audio, vision = batch_X
                eval_attr = batch_Y.squeeze(dim=-1)
                batch_size = text.size(0)
                preds, _ = net(text, audio, vision)
                total_loss += criterion(preds, eval_attr).item() * batch_size
                results.append(preds)
                truths.append(eval_attr)
        avg_loss = total_loss / (HP.n_test if test else HP.n_valid)
        return avg_loss, torch.cat(results), torch.cat(truths)

    history = []
    best_valid, best_state, best_epoch = 1e8, None, 0
    t_start = time.time()
    for epoch in range(1, HP.num_epochs + 1):
        start = time.time()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, step_s = train()
        val_loss, _, _ = evaluate(model, test=False)
        test_loss, _, _ = evaluate(model, test=True)
        duration = time.time() - start
        scheduler.step(val_loss)
        history.append(dict(epoch=epoch, train_loss=train_loss, valid_loss=val_loss,
                            test_loss=test_loss, lr=lr, seconds=duration,
                            train_step_seconds=step_s))
        if not ARGS.quiet:
            print(f"Epoch {epoch:2d} | Time {duration:5.1f} sec | Train Loss {train_loss:5.4f}"
                  f" | Valid Loss {val_loss:5.4f} | Test Loss {test_loss:5.4f}"
                  f" | step {step_s * 1000:.1f} ms", file=sys.stderr, flush=True)
        if val_loss < best_valid:
            best_state = copy.deepcopy(model.state_dict())
            best_valid, best_epoch = val_loss, epoch

    model.load_state_dict(best_state)
    _, results, truths = evaluate(model, test=True)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        metrics.eval_mosi(results, truths, True)
    names = {"MAE": "mae", "Correlation Coefficient": "corr", "mult_acc_7": "mult_acc_7",
             "mult_acc_5": "mult_acc_5", "F1 score": "f1", "Accuracy": "acc_2"}
    test_metrics = {}
    for line in buf.getvalue().splitlines():
        key, sep, val = line.partition(": ")
        if sep and key.strip() in names:
            test_metrics[names[key.strip()]] = float(val)
    assert len(test_metrics) == len(names), buf.getvalue()
    out = dict(model="official MulT a670936", seed=HP.seed, epochs=HP.num_epochs,
               threads=ARGS.threads, torch=torch.__version__, numpy=np.__version__,
               params=n_params, data=data_path, best_epoch=best_epoch,
               best_valid_loss=best_valid, test=dict(mult=test_metrics),
               history=history, seconds=time.time() - t_start,
               hyper_params={k: v for k, v in vars(HP).items()
                             if isinstance(v, (int, float, str, bool))})
    with open(ARGS.out + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(ARGS.out + ".tmp", ARGS.out)
    if not ARGS.quiet:
        print(buf.getvalue(), file=sys.stderr)


if __name__ == "__main__":
    main()
