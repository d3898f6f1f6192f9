#!/usr/bin/env python3
"""PyTorch baseline for `mica bench --model mult`: training-step time, eval-forward time
and peak RSS of the OFFICIAL MulT code (yaohungt/Multimodal-Transformer) and of a LEAN
batch-first rewrite, at mica's bench shape (see scripts/bench_pytorch.md).

Shape (as src/cli/bench.rs): B = 24; text 50x300, audio 375x74, vision 500x35, seeded
uniform [-1, 1) inputs with 0..T/3 frames of left zero padding per sample and modality,
labels [24, 1] in [-3, 3); d = 40, 8 heads, 4 layers, conv kernels 3, attn_mask on,
MulT's default dropouts, output dim 1, L1 loss, Adam lr 1e-3, clip 0.8.

One training step = forward + L1 loss + backward + clip_grad_norm_ + Adam step.
Timing: one untimed warm-up, then the median of --steps timed repetitions.

Any configuration, with the flags of `mica bench` (defaults: the bench shape above):
  --preset bench|mosi|mosei|iemocap|mult-official (d, heads, layers, conv kernels of
  mica's preset), --d --heads --layers --kernels L,A,V, --lens L,A,V --dims L,A,V --batch B;
  the JSON's `config` names what ran.

Usage:
  python scripts/bench_pytorch.py --model official|lean --steps 3 --threads 2 [--json]
  python scripts/bench_pytorch.py --model official --preset mult-official --lens 30,120,150 --dims 300,5,20
  python scripts/bench_pytorch.py --check        # lean == official (same weights, eval)

The official code is NOT shipped: copy modules/*.py and src/models.py of
yaohungt/Multimodal-Transformer (commit a670936) into --official-dir (default
/tmp/mult_official, laid out as the repo: src/models.py, modules/...). The official
model hard-codes d = 30 and Conv1d kernel_size = 1; to match mica's preset the loader
below rewrites exactly those two things in models.py at import time (asserted), and
nothing else (the kernels per modality, proj_l/proj_a/proj_v).
"""
import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
import types

P = argparse.ArgumentParser(description=__doc__.split("\n")[0])
P.add_argument("--model", choices=["official", "lean"], default="lean")
P.add_argument("--steps", type=int, default=3, help="timed repetitions (after 1 warm-up)")
P.add_argument("--threads", type=int, default=2)
P.add_argument("--json", action="store_true", help="print exactly one JSON object")
P.add_argument("--seed", type=int, default=0)
P.add_argument("--batch", type=int, default=24)
P.add_argument("--attn-dropout", type=float, default=0.1,
               help="MulT --attn_dropout (official default 0.1, as mica's preset)")
P.add_argument("--no-flops", action="store_true", help="skip the FlopCounterMode step")
P.add_argument("--profile", action="store_true",
               help="print the top ops of one training step (torch.profiler) to stderr")
P.add_argument("--check", action="store_true",
               help="load the official weights into the lean model and compare outputs")
P.add_argument("--official-dir", default="/tmp/mult_official")
# The configuration, as `mica bench` takes it: --preset picks d, heads, layers and conv
# kernels (mica's presets, src/config.rs); --lens/--dims the input shapes; the flags after
# it override single values. Batch: --batch (default 24, as mica bench).
PRESETS = {  # d, heads, layers, kernels L,A,V
    "bench": (40, 8, 4, (3, 3, 3)),
    "mosi": (40, 8, 4, (3, 3, 3)),
    "mosei": (40, 10, 6, (3, 3, 3)),
    "iemocap": (40, 10, 4, (3, 5, 3)),
    "mult-official": (30, 5, 5, (1, 1, 1)),
}
P.add_argument("--preset", choices=sorted(PRESETS), default="bench",
               help="hyper-parameters of mica's preset of that name (default: the bench shape's)")
P.add_argument("--d", type=int, help="model width (overrides the preset)")
P.add_argument("--heads", type=int, help="attention heads (overrides the preset)")
P.add_argument("--layers", type=int, help="crossmodal layers (overrides the preset)")
P.add_argument("--kernels", help="conv kernels L,A,V (overrides the preset)")
P.add_argument("--lens", default="50,375,500", help="input lengths L,A,V")
P.add_argument("--dims", default="300,74,35", help="input feature dims L,A,V")
ARGS = P.parse_args()


def _lav(name, text):
    try:
        vals = tuple(int(x) for x in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3 or min(vals) < 1:
        P.error(f"--{name} {text!r}: expected three positive integers L,A,V")
    return vals

# Thread counts must be fixed before torch starts its pools.
for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

torch.set_num_threads(ARGS.threads)

_d, _h, _layers, _k = PRESETS[ARGS.preset]
_k = _lav("kernels", ARGS.kernels) if ARGS.kernels else _k
DIMS = dict(zip("lav", _lav("dims", ARGS.dims)))
LENS = dict(zip("lav", _lav("lens", ARGS.lens)))
HP = dict(d=ARGS.d or _d, num_heads=ARGS.heads or _h, layers=ARGS.layers or _layers,
          kernels=dict(zip("lav", _k)), attn_dropout=ARGS.attn_dropout,
          attn_dropout_a=0.0, attn_dropout_v=0.0, relu_dropout=0.1, res_dropout=0.1,
          embed_dropout=0.25, out_dropout=0.0, attn_mask=True, output_dim=1,
          lr=1e-3, clip=0.8)


def rss_mb():
    """Peak RSS of this process so far (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


# ----------------------------------------------------------------------------- data
def random_batch(batch, seed):
    g = torch.Generator().manual_seed(seed)

    def modality(t, d):
        x = torch.rand(batch, t, d, generator=g) * 2 - 1
        pad = torch.randint(0, t // 3 + 1, (batch,), generator=g)
        keep = torch.arange(t)[None, :] >= pad[:, None]
        return x * keep[:, :, None]

    text = modality(LENS["l"], DIMS["l"])
    audio = modality(LENS["a"], DIMS["a"])
    vision = modality(LENS["v"], DIMS["v"])
    labels = torch.rand(batch, 1, generator=g) * 6 - 3
    return text, audio, vision, labels


# ------------------------------------------------------------------------- official
def _exec_patched(name, rel, patches):
    """Imports <official-dir>/<rel> as module `name` after exact, asserted replacements."""
    path = os.path.join(ARGS.official_dir, rel)
    src = open(path).read()
    for old, new, count in patches:
        assert src.count(old) == count, f"unexpected official {rel}: {old!r}"
        # A list of replacements: one per occurrence, in order.
        for rep in (new if isinstance(new, list) else [new] * count):
            src = src.replace(old, rep, 1)
    mod = types.ModuleType(name)
    mod.__file__ = path
    sys.modules[name] = mod
    exec(compile(src, path, "exec"), mod.__dict__)
    return mod


def load_official():
    root = ARGS.official_dir
    if not os.path.exists(os.path.join(root, "src", "models.py")):
        sys.exit(f"official MulT code not found under {root} (see scripts/bench_pytorch.md)")
    sys.path.insert(0, root)
    import modules  # noqa: F401  (the official package; its files are imported below)
    # Compatibility only: since PyTorch 1.x, clone() keeps the strides of the
    # non-contiguous [B, T] slice, and `.view(-1)` of the positions raises. A reshape of
    # the small int64 index tensor is the standard fix (no effect on the float work).
    _exec_patched("modules.position_embedding", "modules/position_embedding.py",
                  [("positions.view(-1)", "positions.reshape(-1)", 1)])
    # The two hard-coded values a preset may change (d, and the conv kernels: proj_l,
    # proj_a, proj_v in this order in models.py).
    mod = _exec_patched("mult_official_models", "src/models.py", [
        ("self.d_l, self.d_a, self.d_v = 30, 30, 30",
         "self.d_l, self.d_a, self.d_v = hyp_params.d, hyp_params.d, hyp_params.d", 1),
        ("kernel_size=1, padding=0",
         [f"kernel_size=hyp_params.kernel_{m}, padding=0" for m in "lav"], 3)])
    hp = {k: v for k, v in HP.items() if k != "kernels"}
    hyp = argparse.Namespace(orig_d_l=DIMS["l"], orig_d_a=DIMS["a"], orig_d_v=DIMS["v"],
                             lonly=True, aonly=True, vonly=True,
                             **{f"kernel_{m}": HP["kernels"][m] for m in "lav"}, **hp)
    return mod.MULTModel(hyp)


# ----------------------------------------------------------------------------- lean
def sinusoid_table(n, dim):
    """Official SinusoidalPositionalEmbedding.get_embedding(n, dim, padding_idx=0)."""
    half = dim // 2
    f = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    e = torch.arange(n, dtype=torch.float)[:, None] * f[None, :]
    e = torch.cat([torch.sin(e), torch.cos(e)], dim=1)
    if dim % 2:
        e = torch.cat([e, torch.zeros(n, 1)], dim=1)
    e[0] = 0
    return e


class MHA(nn.Module):
    def __init__(self, e, h, p):
        super().__init__()
        self.e, self.h, self.p = e, h, p
        self.in_proj_weight = nn.Parameter(torch.empty(3 * e, e))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * e))
        self.out_proj = nn.Linear(e, e)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x, xk, xv, mask):
        b, t, e = x.shape
        h, w, bias = self.h, self.in_proj_weight, self.in_proj_bias
        if xk is None:  # self-attention: one fused QKV GEMM
            q, k, v = F.linear(x, w, bias).view(b, t, 3, h, e // h).permute(2, 0, 3, 1, 4)
        else:
            s = xk.shape[1]
            q = F.linear(x, w[:e], bias[:e]).view(b, t, h, -1).transpose(1, 2)
            if xk is xv:  # eval: K and V share their input, one GEMM
                k, v = F.linear(xk, w[e:], bias[e:]).view(b, s, 2, h, -1).permute(2, 0, 3, 1, 4)
            else:  # training: independently dropped-out inputs, as the official code
                k = F.linear(xk, w[e:2 * e], bias[e:2 * e]).view(b, s, h, -1).transpose(1, 2)
                v = F.linear(xv, w[2 * e:], bias[2 * e:]).view(b, s, h, -1).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.p if self.training else 0.0)
        return self.out_proj(o.transpose(1, 2).reshape(b, t, e))


class Layer(nn.Module):
    def __init__(self, e, h, attn_p, relu_p, res_p):
        super().__init__()
        self.self_attn = MHA(e, h, attn_p)
        self.fc1, self.fc2 = nn.Linear(e, 4 * e), nn.Linear(4 * e, e)
        for m in (self.fc1, self.fc2):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(e), nn.LayerNorm(e)])
        self.relu_p, self.res_p = relu_p, res_p

    def forward(self, x, xk, xv, mask):
        ln0, ln1, tr = self.layer_norms[0], self.layer_norms[1], self.training
        if xk is None:
            a = self.self_attn(ln0(x), None, None, mask)
        else:
            k = ln0(xk)
            a = self.self_attn(ln0(x), k, k if xv is xk else ln0(xv), mask)
        x = x + F.dropout(a, self.res_p, tr)
        y = F.dropout(F.relu(self.fc1(ln1(x))), self.relu_p, tr)
        return x + F.dropout(self.fc2(y), self.res_p, tr)


class Encoder(nn.Module):
    def __init__(self, e, h, layers, attn_p):
        super().__init__()
        self.scale, self.emb_p, self.e = math.sqrt(e), HP["embed_dropout"], e
        self.layers = nn.ModuleList(
            [Layer(e, h, attn_p, HP["relu_dropout"], HP["res_dropout"]) for _ in range(layers)])
        self.layer_norm = nn.LayerNorm(e)
        self._cache = {}

    def table(self, n):
        if n not in self._cache:
            self._cache[n] = sinusoid_table(n + 1, self.e)[1:]
        return self._cache[n]

    def mask(self, tq, tk):
        key = (tq, tk)
        if key not in self._cache:
            self._cache[key] = torch.triu(torch.full((tq, tk), float("-inf")), 1 + abs(tk - tq))
        return self._cache[key]

    def embed(self, x):
        # Official rule: position t+1 where the first channel is non-zero, else 0 (zero row).
        return torch.addcmul(x * self.scale, self.table(x.shape[1]), (x[..., :1] != 0).to(x.dtype))

    def forward(self, x, kv=None):
        tr = self.training
        x = F.dropout(self.embed(x), self.emb_p, tr)
        xk = xv = None
        if kv is not None:
            base = self.embed(kv)
            xk = F.dropout(base, self.emb_p, tr)
            xv = F.dropout(base, self.emb_p, tr) if tr else xk
        mask = self.mask(x.shape[1], x.shape[1] if kv is None else kv.shape[1]) if HP["attn_mask"] else None
        for layer in self.layers:
            x = layer(x, xk, xv, mask)
        return self.layer_norm(x)


class LeanMulT(nn.Module):
    """Batch-first MulT with the official parameter names (state dicts interchange)."""

    def __init__(self):
        super().__init__()
        d, h, L, k = HP["d"], HP["num_heads"], HP["layers"], HP["kernels"]
        self.proj_l = nn.Conv1d(DIMS["l"], d, k["l"], bias=False)
        self.proj_a = nn.Conv1d(DIMS["a"], d, k["a"], bias=False)
        self.proj_v = nn.Conv1d(DIMS["v"], d, k["v"], bias=False)
        p, pa, pv = HP["attn_dropout"], HP["attn_dropout_a"], HP["attn_dropout_v"]
        # Official: the source's dropout for crossmodal blocks, attn_dropout for the mems.
        for name, ap in [("l_with_a", pa), ("l_with_v", pv), ("a_with_l", p),
                         ("a_with_v", pv), ("v_with_l", p), ("v_with_a", pa)]:
            setattr(self, "trans_" + name, Encoder(d, h, L, ap))
        for m in "lav":
            setattr(self, f"trans_{m}_mem", Encoder(2 * d, h, max(L, 3), p))
        c = 6 * d
        self.proj1, self.proj2, self.out_layer = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, HP["output_dim"])

    @staticmethod
    def conv(x, w):  # [B, T, D] -> [B, T-k+1, d]: unfold + one GEMM, batch-first
        k = w.shape[2]
        if k == 1:
            return F.linear(x, w[:, :, 0])
        u = x.unfold(1, k, 1)  # [B, T', D, k]
        return F.linear(u.reshape(u.shape[0], u.shape[1], -1), w.reshape(w.shape[0], -1))

    def forward(self, text, audio, vision):
        tr = self.training
        zl = self.conv(F.dropout(text, HP["embed_dropout"], tr), self.proj_l.weight)
        za = self.conv(audio, self.proj_a.weight)
        zv = self.conv(vision, self.proj_v.weight)
        hl = self.trans_l_mem(torch.cat([self.trans_l_with_a(zl, za), self.trans_l_with_v(zl, zv)], 2))
        ha = self.trans_a_mem(torch.cat([self.trans_a_with_l(za, zl), self.trans_a_with_v(za, zv)], 2))
        hv = self.trans_v_mem(torch.cat([self.trans_v_with_l(zv, zl), self.trans_v_with_a(zv, za)], 2))
        last = torch.cat([hl[:, -1], ha[:, -1], hv[:, -1]], 1)
        y = self.proj2(F.dropout(F.relu(self.proj1(last)), HP["out_dropout"], tr)) + last
        return self.out_layer(y), last


# ---------------------------------------------------------------------------- bench
def build(kind):
    torch.manual_seed(ARGS.seed)
    if kind == "official":
        model = load_official()
        # Official Adam defaults (for-loop on CPU) and clip_grad_norm_ defaults.
        opt = torch.optim.Adam(model.parameters(), lr=HP["lr"])
        step_kw = {}
    else:
        model = LeanMulT()
        opt = torch.optim.Adam(model.parameters(), lr=HP["lr"], fused=True)
        step_kw = {"foreach": True}
    return model, opt, step_kw


def make_step(model, opt, step_kw, data):
    text, audio, vision, labels = data
    criterion = nn.L1Loss()
    params = [p for p in model.parameters()]

    def train_step():
        model.zero_grad()
        preds, _ = model(text, audio, vision)
        loss = criterion(preds, labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, HP["clip"], **step_kw)
        opt.step()
        return loss.item()

    def eval_forward():
        with torch.no_grad():
            return model(text, audio, vision)[0]

    return train_step, eval_forward


def timed(fn, steps):
    """Median wall ms after one warm-up, all wall ms, and the median process CPU ms (all
    threads; close to wall x threads when the machine is quiet, a check on contention)."""
    fn()  # warm-up
    out, cpu = [], []
    for _ in range(steps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1e3)
        cpu.append((time.process_time() - c0) * 1e3)
    return statistics.median(out), out, statistics.median(cpu)


def check():
    off = load_official()
    lean = LeanMulT()
    missing, unexpected = lean.load_state_dict(off.state_dict(), strict=False)
    assert not missing, missing
    assert all(k.endswith((".version", "._float_tensor")) for k in unexpected), unexpected
    n_off = sum(p.numel() for p in off.parameters())
    n_lean = sum(p.numel() for p in lean.parameters())
    text, audio, vision, _ = random_batch(ARGS.batch, ARGS.seed)
    off.eval(), lean.eval()
    with torch.no_grad():
        a, ha = off(text, audio, vision)
        b, hb = lean(text, audio, vision)
    err = max((a - b).abs().max().item(), (ha - hb).abs().max().item())
    # Gradients with dropout off (train mode, all p = 0) must match too.
    for m in (off, lean):
        m.train()
        for mod in m.modules():
            for attr in ("attn_dropout", "relu_dropout", "res_dropout", "dropout", "embed_dropout",
                         "out_dropout", "p", "relu_p", "res_p", "emb_p"):
                if isinstance(getattr(mod, attr, None), float):
                    setattr(mod, attr, 0.0)
    saved = dict(HP)
    HP.update(embed_dropout=0.0, out_dropout=0.0)
    gerr = 0.0
    grads = []
    for m in (off, lean):
        m.zero_grad()
        F.l1_loss(m(text, audio, vision)[0], torch.zeros(ARGS.batch, 1)).backward()
        grads.append({n: p.grad for n, p in m.named_parameters()})
    HP.update(saved)
    for n, g in grads[0].items():
        gerr = max(gerr, ((g - grads[1][n]).abs().max() / (g.abs().max() + 1e-12)).item())
    print(json.dumps({"params_official": n_off, "params_lean": n_lean,
                      "eval_max_abs_diff": err, "grad_max_rel_diff": gerr}))
    assert n_off == n_lean and err < 1e-4 and gerr < 1e-3


def main():
    if ARGS.check:
        return check()
    model, opt, step_kw = build(ARGS.model)
    data = random_batch(ARGS.batch, ARGS.seed)
    n_params = sum(p.numel() for p in model.parameters())
    rss_setup = rss_mb()
    train_step, eval_forward = make_step(model, opt, step_kw, data)
    model.train()
    train_ms, train_all, train_cpu = timed(train_step, ARGS.steps)
    rss_train = rss_mb()
    model.eval()
    eval_ms, eval_all, eval_cpu = timed(eval_forward, ARGS.steps)
    rss_peak = rss_mb()
    report = {"train_step_ms": round(train_ms, 1), "eval_batch_ms": round(eval_ms, 1),
              "peak_rss_mb": round(rss_peak, 1), "threads": torch.get_num_threads(),
              "model": ARGS.model, "torch": torch.__version__, "params": n_params,
              "steps": ARGS.steps, "batch": ARGS.batch,
              "config": {"preset": ARGS.preset, "d": HP["d"], "heads": HP["num_heads"],
                         "layers": HP["layers"], "kernels": [HP["kernels"][m] for m in "lav"],
                         "lens": [LENS[m] for m in "lav"], "dims": [DIMS[m] for m in "lav"],
                         "batch": ARGS.batch},
              "rss_after_setup_mb": round(rss_setup, 1), "peak_rss_train_mb": round(rss_train, 1),
              "train_ms_all": [round(t, 1) for t in train_all],
              "eval_ms_all": [round(t, 1) for t in eval_all],
              "train_step_cpu_ms": round(train_cpu, 1), "eval_batch_cpu_ms": round(eval_cpu, 1),
              "loadavg_end": open("/proc/loadavg").read().split()[:3]}
    model.train()
    if ARGS.profile:
        from torch.profiler import profile, ProfilerActivity
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25),
              file=sys.stderr)
    if not ARGS.no_flops:  # after the timings, so it changes neither time nor peak RSS
        from torch.utils.flop_counter import FlopCounterMode
        fc = FlopCounterMode(display=False)
        with fc:
            train_step()
        report["gflop_per_step"] = round(fc.get_total_flops() / 1e9, 2)
        model.eval()
        fc = FlopCounterMode(display=False)
        with fc:
            eval_forward()
        report["gflop_per_eval"] = round(fc.get_total_flops() / 1e9, 2)
    if ARGS.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:>20}: {v}")


if __name__ == "__main__":
    main()
