//! The paper's recurrent baselines EF-LSTM and LF-LSTM (Tables 2-4; MulT's paper describes
//! them as its baselines on unaligned data), and the LSTM layer they are built from.
//!
//! The [`Lstm`] layer computes PyTorch's `nn.LSTM` (one layer, one direction, gate order
//! i, f, g, o; parameters `weight_ih_l0 [4H, in]`, `weight_hh_l0 [4H, H]`, `bias_ih_l0`,
//! `bias_hh_l0`, all initialised `U(±1/sqrt(H))`) from composed candle ops, so it has a
//! backward.
//!
//! **Padding.** mica's data is LEFT zero-padded (real frames at the end). Because of the
//! biases, zero frames do move an LSTM's state, so the layer masks the state update per
//! sample: `h = m h' + (1 - m) h` (same for `c`) with `m = 0` on padding steps. The
//! leading padding therefore leaves the state at zero and the output equals running the
//! LSTM on the real frames alone: padding never changes the result. A sample's padding is
//! its run of leading all-zero frames ([`real_lengths`]); a zero frame after the first
//! real one is data.
//!
//! **EF-LSTM** (early fusion): unaligned modalities cannot be concatenated per step, so
//! audio and vision are resampled onto the text time grid by nearest time index: text step
//! `t` (counted from the first real text frame, `n_l` real text frames) takes frame
//! `j = round((t + 0.5) n_m / n_l - 0.5)` (clamped to `[0, n_m - 1]`) of the `n_m` real
//! frames of modality `m` ([`nearest_indices`]); a modality without real frames contributes
//! zeros. The three are concatenated per step, fed to one LSTM (`lstm_hidden` units) that
//! runs over the text's real steps, and its last hidden state goes through dropout
//! (`lstm_dropout`) and MulT's residual [`Head`].
//!
//! **LF-LSTM** (late fusion): one LSTM per modality (`lstm_mod_hidden` units each) on its
//! own time grid, the three last hidden states concatenated, dropout, then the head.
//!
//! Neither model has a conv front end, input (embed) dropout or crossmodal attention (so
//! no block traces and no alignment losses); `d`, `num_heads`, `layers`, the kernels and
//! the attention dropouts are unused. `out_dropout` is the head's, as in MulT.

use super::config::ModelConfig;
use super::ctx::Ctx;
use super::front_end::Head;
use super::io::{ForwardOpts, ForwardOutput, Inputs, MOD_SHORT};
use super::params::{Init, ParamSource};
use anyhow::Result;
use candle_core::{Device, Tensor, D};
use candle_nn::ops::sigmoid;
use std::collections::BTreeMap;

/// One LSTM layer, PyTorch's `nn.LSTM(in, H, batch_first=True)` (gate order i, f, g, o).
#[derive(Debug, Clone)]
pub struct Lstm {
    /// `weight_ih_l0` `[4H, in]`.
    pub weight_ih: Tensor,
    /// `weight_hh_l0` `[4H, H]`.
    pub weight_hh: Tensor,
    /// `bias_ih_l0` `[4H]`.
    pub bias_ih: Tensor,
    /// `bias_hh_l0` `[4H]`.
    pub bias_hh: Tensor,
    /// Hidden size H.
    pub hidden: usize,
}

impl Lstm {
    /// Builds `{name}.weight_ih_l0`, `weight_hh_l0`, `bias_ih_l0`, `bias_hh_l0`, all
    /// `U(±1/sqrt(hidden))` as PyTorch initialises them.
    pub fn new(p: &mut dyn ParamSource, name: &str, input: usize, hidden: usize) -> Result<Self> {
        let init = Init::FanInUniform(hidden);
        let g = 4 * hidden;
        Ok(Lstm {
            weight_ih: p.param(&format!("{name}.weight_ih_l0"), &[g, input], init)?,
            weight_hh: p.param(&format!("{name}.weight_hh_l0"), &[g, hidden], init)?,
            bias_ih: p.param(&format!("{name}.bias_ih_l0"), &[g], init)?,
            bias_hh: p.param(&format!("{name}.bias_hh_l0"), &[g], init)?,
            hidden,
        })
    }

    /// The input projection of every step at once: `x W_ih^T + b_ih + b_hh`, `[B, T, 4H]`.
    pub(crate) fn input_gates(&self, x: &Tensor) -> Result<Tensor> {
        let bias = (&self.bias_ih + &self.bias_hh)?;
        super::layers::linear(x, &self.weight_ih, Some(&bias))
    }

    /// One step from precomputed input gates `xg` `[B, 4H]` and state `(h, c)` `[B, H]`:
    /// returns the new `(h, c)`.
    pub(crate) fn step(&self, xg: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let hs = self.hidden;
        let gates = (xg + h.matmul(&self.weight_hh.t()?)?)?;
        let i = sigmoid(&gates.narrow(D::Minus1, 0, hs)?)?;
        let f = sigmoid(&gates.narrow(D::Minus1, hs, hs)?)?;
        let g = gates.narrow(D::Minus1, 2 * hs, hs)?.tanh()?;
        let o = sigmoid(&gates.narrow(D::Minus1, 3 * hs, hs)?)?;
        let c = ((f * c)? + (i * g)?)?;
        let h = (o * c.tanh()?)?;
        Ok((h, c))
    }

    /// One step of the cell on an input `x` `[B, in]` and state `(h, c)` `[B, H]`.
    pub fn cell(&self, x: &Tensor, h: &Tensor, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let xg = self.input_gates(&x.unsqueeze(1)?)?.squeeze(1)?;
        self.step(&xg, h, c)
    }

    /// Runs over `x` `[B, T, in]` from a zero state and returns the last hidden state
    /// `[B, H]`. `mask` `[B, T]` (1 = real step, 0 = skipped) freezes the state on skipped
    /// steps; `None` runs every step.
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let xg = self.input_gates(x)?;
        let mut h = Tensor::zeros((b, self.hidden), x.dtype(), x.device())?;
        let mut c = h.clone();
        for s in 0..t {
            let (h_new, c_new) = self.step(&xg.narrow(1, s, 1)?.squeeze(1)?, &h, &c)?;
            match mask {
                None => (h, c) = (h_new, c_new),
                Some(m) => {
                    // h + m (h' - h): exactly h where m = 0, exactly h' where m = 1.
                    let m = m.narrow(1, s, 1)?;
                    h = (&h + (h_new - &h)?.broadcast_mul(&m)?)?;
                    c = (&c + (c_new - &c)?.broadcast_mul(&m)?)?;
                }
            }
        }
        Ok(h)
    }
}

impl Lstm {
    /// Like [`Lstm::forward`] but returns every step's hidden state `[B, T, H]` (frozen,
    /// so zero, on the leading masked steps of a left-padded sample).
    pub fn forward_seq(&self, x: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let xg = self.input_gates(x)?;
        let mut h = Tensor::zeros((b, self.hidden), x.dtype(), x.device())?;
        let mut c = h.clone();
        let mut hs = Vec::with_capacity(t);
        for s in 0..t {
            let (h_new, c_new) = self.step(&xg.narrow(1, s, 1)?.squeeze(1)?, &h, &c)?;
            match mask {
                None => (h, c) = (h_new, c_new),
                Some(m) => {
                    let m = m.narrow(1, s, 1)?;
                    h = (&h + (h_new - &h)?.broadcast_mul(&m)?)?;
                    c = (&c + (c_new - &c)?.broadcast_mul(&m)?)?;
                }
            }
            hs.push(h.clone());
        }
        Ok(Tensor::stack(&hs, 1)?)
    }
}

/// Number of real frames of each sample of a left-padded `[B, T, D]` batch: `T` minus the
/// run of leading frames whose features are all exactly zero.
pub fn real_lengths(x: &Tensor) -> Result<Vec<usize>> {
    let (b, t, d) = x.dims3()?;
    let v: Vec<f32> = x.flatten_all()?.to_vec1()?;
    Ok((0..b)
        .map(|i| {
            let rows = &v[i * t * d..(i + 1) * t * d];
            let pad = (0..t)
                .take_while(|&s| rows[s * d..(s + 1) * d].iter().all(|x| *x == 0.0))
                .count();
            t - pad
        })
        .collect())
}

/// The `[B, T]` f32 mask of the last `lens[i]` steps of each sample (left padding).
pub fn length_mask(lens: &[usize], t: usize, device: &Device) -> Result<Tensor> {
    let v: Vec<f32> = lens
        .iter()
        .flat_map(|&n| (0..t).map(move |s| if s + n >= t { 1.0 } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(v, (lens.len(), t), device)?)
}

/// Nearest-time resampling of `n_src` frames onto `n_dst` steps: step `t` takes frame
/// `round((t + 0.5) n_src / n_dst - 0.5)`, clamped to `[0, n_src - 1]` (the centre of step
/// `t` on the source's time axis, both sequences spanning the same duration). Empty when
/// either length is 0.
pub fn nearest_indices(n_dst: usize, n_src: usize) -> Vec<usize> {
    if n_src == 0 {
        return Vec::new();
    }
    (0..n_dst)
        .map(|t| {
            let pos = (t as f64 + 0.5) * n_src as f64 / n_dst as f64 - 0.5;
            (pos.round().max(0.0) as usize).min(n_src - 1)
        })
        .collect()
}

/// Resamples the real part of `x` `[B, T_m, D]` onto a left-padded grid of `t_dst` steps of
/// which the last `dst_lens[i]` are real; padding steps (and samples whose source has no
/// real frame) get zeros. `src_lens` are the real lengths of `x`.
pub fn resample_to(
    x: &Tensor,
    src_lens: &[usize],
    dst_lens: &[usize],
    t_dst: usize,
) -> Result<Tensor> {
    let (b, t_src, d) = x.dims3()?;
    // Row `b * t_src` of the flattened source plus one zero row: the padding target.
    let zero_row = (b * t_src) as u32;
    let mut idx = vec![zero_row; b * t_dst];
    for i in 0..b {
        let (n_dst, n_src) = (dst_lens[i], src_lens[i]);
        let (pad_dst, pad_src) = (t_dst - n_dst, t_src - n_src);
        for (t, j) in nearest_indices(n_dst, n_src).into_iter().enumerate() {
            idx[i * t_dst + pad_dst + t] = (i * t_src + pad_src + j) as u32;
        }
    }
    let flat = Tensor::cat(
        &[
            x.reshape((b * t_src, d))?,
            Tensor::zeros((1, d), x.dtype(), x.device())?,
        ],
        0,
    )?;
    let idx = Tensor::from_vec(idx, b * t_dst, x.device())?;
    Ok(flat.index_select(&idx, 0)?.reshape((b, t_dst, d))?)
}

/// Checks the inputs' rank, batch and feature dims (no conv kernel: the LSTMs have none).
fn check(cfg: &ModelConfig, x: &Inputs) -> Result<()> {
    super::io::check_shapes(cfg, x)
}

/// `[B * T]` flags of the real steps of each modality (the LSTMs' padding rule).
fn valid_flags(lens: &[Vec<usize>; 3], ts: [usize; 3]) -> [Vec<bool>; 3] {
    [0, 1, 2].map(|m| {
        lens[m]
            .iter()
            .flat_map(|&n| (0..ts[m]).map(move |s| s + n >= ts[m]))
            .collect()
    })
}

/// Dropout, head, and the output record shared by both baselines.
fn finish(
    ctx: &Ctx,
    head: &Head,
    dropout: f32,
    last_hs: Tensor,
    valid: [Vec<bool>; 3],
    mut inter: BTreeMap<String, Tensor>,
    opts: ForwardOpts,
) -> Result<ForwardOutput> {
    let (output, p1, p2) = head.forward(ctx, &ctx.dropout(&last_hs, dropout)?)?;
    if opts.intermediates {
        inter.insert("proj1".into(), p1);
        inter.insert("proj2".into(), p2);
        inter.insert("out_layer".into(), output.clone());
    }
    Ok(ForwardOutput {
        output,
        last_hs,
        blocks: Vec::new(),
        valid,
        intermediates: inter,
    })
}

fn all_lens(x: &Inputs) -> Result<[Vec<usize>; 3]> {
    Ok([
        real_lengths(&x.text)?,
        real_lengths(&x.audio)?,
        real_lengths(&x.vision)?,
    ])
}

fn time_lens(x: &Inputs) -> Result<[usize; 3]> {
    Ok([x.text.dim(1)?, x.audio.dim(1)?, x.vision.dim(1)?])
}

/// Early-fusion LSTM: audio and vision resampled onto the text grid, concatenated per
/// step, one LSTM, last hidden state, dropout, MulT's residual head (module docs).
#[derive(Debug, Clone)]
pub struct EfLstm {
    /// Its configuration.
    pub cfg: ModelConfig,
    /// `lstm`: `D_l + D_a + D_v -> lstm_hidden`.
    pub lstm: Lstm,
    /// `proj1`, `proj2`, `out_layer` of width `lstm_hidden`.
    pub head: Head,
}

impl EfLstm {
    /// Builds `lstm.*` then the head.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let input: usize = cfg.orig_dims().iter().sum();
        let lstm = Lstm::new(p, "lstm", input, cfg.lstm_hidden)?;
        let head = Head::new(p, cfg.lstm_hidden, cfg.output_dim, cfg.out_dropout)?;
        Ok(EfLstm {
            cfg: cfg.clone(),
            lstm,
            head,
        })
    }

    /// The fused per-step input on the text grid `[B, T_l, D_l + D_a + D_v]` and the
    /// real lengths of (text, audio, vision).
    pub fn fuse(&self, x: &Inputs) -> Result<(Tensor, [Vec<usize>; 3])> {
        let lens = all_lens(x)?;
        let tl = x.text.dim(1)?;
        let audio = resample_to(&x.audio, &lens[1], &lens[0], tl)?;
        let vision = resample_to(&x.vision, &lens[2], &lens[0], tl)?;
        Ok((Tensor::cat(&[&x.text, &audio, &vision], 2)?, lens))
    }

    /// The forward pass; `intermediates` adds `lstm` (the last hidden state).
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        check(&self.cfg, x)?;
        let (fused, lens) = self.fuse(x)?;
        let mask = length_mask(&lens[0], fused.dim(1)?, fused.device())?;
        let h = self.lstm.forward(&fused, Some(&mask))?;
        let mut inter = BTreeMap::new();
        if opts.intermediates {
            inter.insert("lstm".into(), h.clone());
        }
        let valid = valid_flags(&lens, time_lens(x)?);
        finish(
            ctx,
            &self.head,
            self.cfg.lstm_dropout,
            h,
            valid,
            inter,
            opts,
        )
    }
}

/// Late-fusion LSTM: one LSTM per modality on its own grid, last hidden states
/// concatenated, dropout, MulT's residual head (module docs).
#[derive(Debug, Clone)]
pub struct LfLstm {
    /// Its configuration.
    pub cfg: ModelConfig,
    /// `lstm_l`, `lstm_a`, `lstm_v`: `D_m -> lstm_mod_hidden`.
    pub lstms: [Lstm; 3],
    /// `proj1`, `proj2`, `out_layer` of width `3 * lstm_mod_hidden`.
    pub head: Head,
}

impl LfLstm {
    /// Builds `lstm_l.*`, `lstm_a.*`, `lstm_v.*` then the head.
    pub fn new(p: &mut dyn ParamSource, cfg: &ModelConfig) -> Result<Self> {
        cfg.validate()?;
        let dims = cfg.orig_dims();
        let hs = cfg.lstm_mod_hidden;
        let mk = |p: &mut dyn ParamSource, m: usize| {
            Lstm::new(p, &format!("lstm_{}", MOD_SHORT[m]), dims[m], hs)
        };
        let lstms = [mk(p, 0)?, mk(p, 1)?, mk(p, 2)?];
        let head = Head::new(p, 3 * hs, cfg.output_dim, cfg.out_dropout)?;
        Ok(LfLstm {
            cfg: cfg.clone(),
            lstms,
            head,
        })
    }

    /// The forward pass; `intermediates` adds `lstm_l|a|v` (last hidden states).
    pub fn forward(&self, ctx: &Ctx, x: &Inputs, opts: ForwardOpts) -> Result<ForwardOutput> {
        check(&self.cfg, x)?;
        let lens = all_lens(x)?;
        let raw = [&x.text, &x.audio, &x.vision];
        let mut inter = BTreeMap::new();
        let mut last = Vec::with_capacity(3);
        for m in 0..3 {
            let mask = length_mask(&lens[m], raw[m].dim(1)?, raw[m].device())?;
            let h = self.lstms[m].forward(raw[m], Some(&mask))?;
            if opts.intermediates {
                inter.insert(format!("lstm_{}", MOD_SHORT[m]), h.clone());
            }
            last.push(h);
        }
        let last_hs = Tensor::cat(&last, 1)?;
        let valid = valid_flags(&lens, time_lens(x)?);
        finish(
            ctx,
            &self.head,
            self.cfg.lstm_dropout,
            last_hs,
            valid,
            inter,
            opts,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Preset, Task, Variant};
    use crate::model::params::Initializer;
    use crate::model::Model;
    use candle_core::{DType, Var};

    fn sig(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// A 2-input, 1-unit LSTM with explicit weights.
    fn tiny_lstm(dev: &Device) -> Lstm {
        // Rows: i, f, g, o.
        Lstm {
            weight_ih: Tensor::new(&[[0.5f32, -1.0], [0.25, 0.5], [1.0, 1.0], [-0.5, 2.0]], dev)
                .unwrap(),
            weight_hh: Tensor::new(&[[0.3f32], [-0.2], [0.7], [0.1]], dev).unwrap(),
            bias_ih: Tensor::new(&[0.1f32, 0.0, -0.1, 0.2], dev).unwrap(),
            bias_hh: Tensor::new(&[0.0f32, 0.3, 0.05, -0.1], dev).unwrap(),
            hidden: 1,
        }
    }

    #[test]
    fn cell_matches_hand_computation() {
        let dev = Device::Cpu;
        let l = tiny_lstm(&dev);
        let x = Tensor::new(&[[1.0f32, 2.0]], &dev).unwrap();
        let h0 = Tensor::new(&[[0.5f32]], &dev).unwrap();
        let c0 = Tensor::new(&[[-0.4f32]], &dev).unwrap();
        let (h, c) = l.cell(&x, &h0, &c0).unwrap();
        // pre = W_ih x + b_ih + W_hh h + b_hh, gate by gate.
        let pre_i = (0.5 - 2.0) + 0.1 + 0.3 * 0.5 + 0.0;
        let pre_f = (0.25 + 1.0) + 0.0 + -0.2 * 0.5 + 0.3;
        let pre_g = (1.0 + 2.0) - 0.1 + 0.7 * 0.5 + 0.05;
        let pre_o = (-0.5 + 4.0) + 0.2 + 0.1 * 0.5 - 0.1;
        let (i, f, g, o) = (sig(pre_i), sig(pre_f), f64::tanh(pre_g), sig(pre_o));
        let c_want = f * -0.4 + i * g;
        let h_want = o * c_want.tanh();
        let c_got = c.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        let h_got = h.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((c_got - c_want).abs() < 1e-6, "c {c_got} vs {c_want}");
        assert!((h_got - h_want).abs() < 1e-6, "h {h_got} vs {h_want}");
        // The sequence form from a zero state gives the same as two explicit cells.
        let seq = Tensor::new(&[[[1.0f32, 2.0], [-1.0, 0.5]]], &dev).unwrap();
        let z = Tensor::zeros((1, 1), DType::F32, &dev).unwrap();
        let (h1, c1) = l
            .cell(&seq.narrow(1, 0, 1).unwrap().squeeze(1).unwrap(), &z, &z)
            .unwrap();
        let (h2, _) = l
            .cell(&seq.narrow(1, 1, 1).unwrap().squeeze(1).unwrap(), &h1, &c1)
            .unwrap();
        let got = l.forward(&seq, None).unwrap();
        let d = (got - h2).unwrap().abs().unwrap().max_all().unwrap();
        assert!(d.to_scalar::<f32>().unwrap() < 1e-7);
    }

    fn scalar_loss(l: &Lstm, x: &Tensor, mask: &Tensor) -> Tensor {
        // A fixed non-symmetric read-out so every hidden unit matters.
        let h = l.forward(x, Some(mask)).unwrap();
        let w = Tensor::new(&[1.0f32, -0.7, 0.4], x.device()).unwrap();
        h.broadcast_mul(&w).unwrap().sum_all().unwrap()
    }

    #[test]
    fn gradients_match_finite_differences() {
        let dev = Device::Cpu;
        let mut init = Initializer::new(3, &dev);
        let l = Lstm::new(&mut init, "lstm", 2, 3).unwrap();
        let store = init.into_store();
        let xs: Vec<f32> = (0..2 * 4 * 2)
            .map(|k| ((k * 7 % 11) as f32 - 5.0) / 4.0)
            .collect();
        let xv = Var::from_tensor(&Tensor::from_vec(xs, (2, 4, 2), &dev).unwrap()).unwrap();
        // Sample 0 has one padding step.
        let mask = length_mask(&[3, 4], 4, &dev).unwrap();
        let loss = scalar_loss(&l, xv.as_tensor(), &mask);
        let grads = loss.backward().unwrap();
        let f64s = |t: &Tensor| -> Vec<f64> {
            t.flatten_all()
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let check = |var: &Var, name: &str| {
            let g = f64s(grads.get(var.as_tensor()).unwrap());
            let base = var.as_tensor().copy().unwrap();
            let v0 = f64s(&base);
            let eps = 1e-2f64;
            for k in 0..v0.len() {
                let eval = |delta: f64| {
                    let mut v = v0.clone();
                    v[k] += delta;
                    let v: Vec<f32> = v.iter().map(|x| *x as f32).collect();
                    var.set(&Tensor::from_vec(v, base.dims(), &dev).unwrap())
                        .unwrap();
                    let out = scalar_loss(&l, xv.as_tensor(), &mask)
                        .to_scalar::<f32>()
                        .unwrap() as f64;
                    var.set(&base).unwrap();
                    out
                };
                let fd = (eval(eps) - eval(-eps)) / (2.0 * eps);
                assert!(
                    (fd - g[k]).abs() < 2e-3 * (1.0 + fd.abs()),
                    "{name}[{k}]: analytic {} vs numeric {fd}",
                    g[k]
                );
            }
        };
        check(&xv, "x");
        check(&store.vars["lstm.weight_hh_l0"], "weight_hh");
        check(&store.vars["lstm.bias_ih_l0"], "bias_ih");
        // The padding step of sample 0 gets no gradient.
        let gx = f64s(grads.get(xv.as_tensor()).unwrap());
        assert_eq!(&gx[..2], &[0.0, 0.0]);
    }

    #[test]
    fn real_lengths_and_resampling() {
        let dev = Device::Cpu;
        // Sample 0: two padding frames then [1], [0] (a zero frame inside the data), [3].
        let x = Tensor::new(
            &[
                [[0f32], [0.], [1.], [0.], [3.]],
                [[1.], [2.], [3.], [4.], [5.]],
            ],
            &dev,
        )
        .unwrap();
        assert_eq!(real_lengths(&x).unwrap(), vec![3, 5]);
        assert_eq!(nearest_indices(4, 2), vec![0, 0, 1, 1]);
        assert_eq!(nearest_indices(2, 4), vec![1, 3]);
        assert_eq!(nearest_indices(3, 3), vec![0, 1, 2]);
        assert_eq!(nearest_indices(2, 0), Vec::<usize>::new());
        // Onto a grid of 4 steps: sample 0 has 2 real steps, sample 1 has 4.
        let r = resample_to(&x, &[3, 5], &[2, 4], 4).unwrap();
        let got: Vec<f32> = r.flatten_all().unwrap().to_vec1().unwrap();
        // nearest_indices(2, 3) = [0, 2]; nearest_indices(4, 5) = [0, 1, 3, 4].
        assert_eq!(got, vec![0., 0., 1., 3., 1., 2., 4., 5.]);
    }

    fn tiny_cfg(variant: Variant) -> Config {
        let mut c = Config::preset(
            Preset::SynthSmall,
            variant,
            Task::Mosi,
            [3, 2, 4],
            [5, 7, 6],
        );
        c.model.lstm_hidden = 6;
        c.model.lstm_mod_hidden = 4;
        c.validate().unwrap();
        c
    }

    /// A left-padded batch with real lengths (text, audio, vision) per sample; sample `i`'s
    /// values depend on `first_id + i`.
    fn batch(lens: &[[usize; 3]], first_id: usize, pad_extra: usize, dev: &Device) -> Inputs {
        let dims = [3, 2, 4];
        let ts = [5 + pad_extra, 7 + pad_extra, 6 + pad_extra];
        let mut out = Vec::new();
        for m in 0..3 {
            let mut v = Vec::new();
            for (i, l) in lens.iter().enumerate() {
                let i = i + first_id;
                for s in 0..ts[m] {
                    for k in 0..dims[m] {
                        let real = s + l[m] >= ts[m];
                        let r = (s + l[m]) as f32 - ts[m] as f32; // position among real frames
                        v.push(if real {
                            ((r * 1.3 + k as f32 * 0.7 + i as f32 + m as f32).sin()) + 0.1
                        } else {
                            0.0
                        });
                    }
                }
            }
            out.push(Tensor::from_vec(v, (lens.len(), ts[m], dims[m]), dev).unwrap());
        }
        Inputs {
            text: out[0].clone(),
            audio: out[1].clone(),
            vision: out[2].clone(),
            times: None,
        }
    }

    fn outputs(model: &Model, x: &Inputs) -> Vec<f32> {
        let o = model
            .forward(&Ctx::eval(), x, ForwardOpts::default())
            .unwrap();
        assert!(o.blocks.is_empty());
        o.output.flatten_all().unwrap().to_vec1().unwrap()
    }

    #[test]
    fn shapes_and_padding_invariance() {
        let dev = Device::Cpu;
        for (variant, width) in [(Variant::EfLstm, 6), (Variant::LfLstm, 12)] {
            let cfg = tiny_cfg(variant);
            assert_eq!((cfg.align.alpha, cfg.align.beta), (0.0, 0.0));
            let mut init = Initializer::new(1, &dev);
            let model = Model::new(&mut init, &cfg.model).unwrap();
            let lens = [[5, 7, 6], [3, 4, 2], [2, 0, 6]];
            let x = batch(&lens, 0, 0, &dev);
            let o = model
                .forward(
                    &Ctx::eval(),
                    &x,
                    ForwardOpts {
                        intermediates: true,
                        ..Default::default()
                    },
                )
                .unwrap();
            assert_eq!(o.output.dims(), &[3, 1]);
            assert_eq!(o.last_hs.dims(), &[3, width]);
            assert_eq!(o.valid[1].iter().filter(|v| **v).count(), 7 + 4);
            assert!(o.intermediates.contains_key("out_layer"));
            // More left padding (longer tensors, same real frames) changes nothing.
            let a = outputs(&model, &x);
            let b = outputs(&model, &batch(&lens, 0, 3, &dev));
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() < 1e-5, "{variant:?}: {a:?} vs {b:?}");
            }
            // Each sample alone gives its batch result (no leakage across samples).
            let single = outputs(&model, &batch(&lens[1..2], 1, 0, &dev));
            assert!((single[0] - a[1]).abs() < 1e-5);
            // Training mode (dropout) runs.
            let t = model
                .forward(&Ctx::train(9), &x, ForwardOpts::default())
                .unwrap();
            assert_eq!(t.output.dims(), &[3, 1]);
        }
    }

    #[test]
    fn parameter_names_and_config_defaults() {
        let dev = Device::Cpu;
        let mut init = Initializer::new(1, &dev);
        Model::new(&mut init, &tiny_cfg(Variant::LfLstm).model).unwrap();
        let names: Vec<String> = init.into_store().vars.keys().cloned().collect();
        for n in [
            "lstm_l.weight_ih_l0",
            "lstm_a.weight_hh_l0",
            "lstm_v.bias_hh_l0",
            "proj1.weight",
            "out_layer.bias",
        ] {
            assert!(names.contains(&n.to_string()), "{n} missing: {names:?}");
        }
        // Configs written before the LSTM fields existed still load, with the defaults.
        let cfg = tiny_cfg(Variant::Mica);
        let mut json = serde_json::to_value(&cfg).unwrap();
        let m = json["model"].as_object_mut().unwrap();
        for k in ["lstm_hidden", "lstm_mod_hidden", "lstm_dropout"] {
            m.remove(k);
        }
        let back: Config = serde_json::from_value(json).unwrap();
        assert_eq!(
            (
                back.model.lstm_hidden,
                back.model.lstm_mod_hidden,
                back.model.lstm_dropout
            ),
            (64, 32, 0.1)
        );
        let mut c = tiny_cfg(Variant::EfLstm);
        c.set("model.lstm_hidden=12").unwrap();
        assert_eq!(c.model.lstm_hidden, 12);
        assert_eq!(
            serde_json::to_value(c.model.arch).unwrap(),
            serde_json::json!("ef-lstm")
        );
        c.set("model.lstm_hidden=0").unwrap();
        assert!(c.validate().is_err());
    }
}
