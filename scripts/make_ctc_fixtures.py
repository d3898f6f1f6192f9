#!/usr/bin/env python3
"""Writes tests/fixtures/ctc/ctc_cases.json: PyTorch's CTC loss values and gradients,
the reference for mica's CTC op (src/model/baselines/ctc_loss.rs).

Usage (a CPU PyTorch is enough):
    python3 -m venv /work/torch-venv && /work/torch-venv/bin/pip install torch numpy
    /work/torch-venv/bin/python scripts/make_ctc_fixtures.py

Each case: logits [T, B, C] (float64, seeded), targets, input/target lengths, blank; the
expected per-sample nll (reduction='none', zero_infinity as given) and the gradient of
sum_b w_b * nll_b with respect to the LOGITS (through log_softmax): PyTorch's
ctc_loss backward is only the true derivative after a log_softmax, so the logits are the
common ground (see the module docs of ctc_loss.rs).
"""
import json
import os

import torch

torch.manual_seed(20)


def case(name, t, b, c, in_lens, tgts, blank=0, zero_inf=False, scale=1.0):
    logits = (torch.randn(t, b, c, dtype=torch.float64) * scale).requires_grad_(True)
    lp = torch.log_softmax(logits, dim=2)
    flat = torch.tensor([x for tg in tgts for x in tg], dtype=torch.long)
    tl = torch.tensor([len(tg) for tg in tgts], dtype=torch.long)
    il = torch.tensor(in_lens, dtype=torch.long)
    nll = torch.nn.functional.ctc_loss(
        lp, flat, il, tl, blank=blank, reduction="none", zero_infinity=zero_inf
    )
    w = torch.linspace(0.5, 1.5, b, dtype=torch.float64)
    # The gradient over the samples with a finite loss: PyTorch's backward gives NaN for an
    # impossible sample even with a zero output gradient (mica's op gives 0 there).
    keep = [i for i in range(b) if torch.isfinite(nll[i])]
    off = [0] + list(torch.cumsum(tl, 0))
    sub_flat = torch.cat([flat[off[i] : off[i + 1]] for i in keep])
    sub = torch.nn.functional.ctc_loss(
        lp[:, keep], sub_flat, il[keep], tl[keep], blank=blank, reduction="none",
        zero_infinity=zero_inf,
    )
    (sub * w[keep]).sum().backward()
    return {
        "name": name,
        "T": t,
        "B": b,
        "C": c,
        "blank": blank,
        "zero_infinity": zero_inf,
        "logits": logits.detach().flatten().tolist(),
        "input_lengths": in_lens,
        "targets": tgts,
        "weights": w.tolist(),
        "nll": [x if x != float("inf") else "inf" for x in nll.detach().tolist()],
        "grad_logits": logits.grad.flatten().tolist(),
    }


cases = [
    # Distinct labels of varying length, full and partial windows.
    case("basic", 6, 3, 5, [6, 5, 3], [[1, 2, 3], [4, 1], [2]]),
    # Repeated labels (need a blank between them), an empty target, blank not at 0.
    case("repeats_empty_blank_last", 7, 3, 4, [7, 6, 2], [[1, 1, 2], [], [0, 0]], blank=3),
    # MulT's use: targets 1..L (positions), blank 0, inputs longer than targets.
    case("positions", 9, 2, 5, [9, 7], [[1, 2, 3, 4], [1, 2, 3]], scale=0.5),
    # An impossible alignment (target longer than the window) with zero_infinity.
    case("impossible_zero_inf", 4, 2, 4, [4, 2], [[1, 2], [1, 1, 2]], zero_inf=True),
]
out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "ctc", "ctc_cases.json")
with open(out, "w") as f:
    json.dump({"torch": torch.__version__, "cases": cases}, f)
print("wrote", out)
