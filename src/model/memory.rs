//! The ONE memory-estimate check: how many bytes a model config needs (parameters; for
//! training also gradients, Adam's moments and the activations of a batch), compared with
//! the machine's memory, so that an absurd `--d`, `--layers` or `--batch-size` (or a
//! checkpoint's config.json saying so) is a one-line error instead of an allocation abort.
//! The estimate is a lower bound (no allocator slack, activations counted once), so a
//! config refused here could never have run.

use super::config::{Arch, ModelConfig};
use anyhow::{bail, Result};

/// Physical memory plus swap in bytes (`/proc/meminfo`), or `None` where unknown.
pub fn machine_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |key: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(key))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb.saturating_mul(1024))
    };
    Some(field("MemTotal:")?.saturating_add(field("SwapTotal:").unwrap_or(0)))
}

/// Where the machine's size is unknown, nothing over 1 PiB is attempted.
const FALLBACK_LIMIT: u128 = 1 << 50;

/// The memory budget checks compare with.
pub fn limit_bytes() -> u128 {
    machine_bytes().map_or(FALLBACK_LIMIT, u128::from)
}

/// A lower bound on the parameter count of `cfg` (saturating, never overflows).
pub fn param_count(cfg: &ModelConfig) -> u128 {
    let d = cfg.d as u128;
    let l = cfg.layers as u128;
    let dims = cfg.orig_dims().map(|x| x as u128);
    let ks = cfg.kernels().map(|x| x as u128);
    let front: u128 = (0..3).map(|m| dims[m] * ks[m] * d).sum();
    match cfg.arch {
        Arch::EfLstm => {
            let h = cfg.lstm_hidden as u128;
            4 * h * (h + dims.iter().sum::<u128>() + 2)
        }
        Arch::LfLstm => {
            let h = cfg.lstm_mod_hidden as u128;
            dims.iter().map(|&x| 4 * h * (h + x + 2)).sum()
        }
        Arch::Raven => {
            let b = &cfg.baselines;
            let (n, w) = (
                b.raven_nonverbal_hidden as u128,
                b.raven_word_hidden as u128,
            );
            4 * w * (w + dims[0] + 2) + 4 * n * (n + dims[1] + dims[2] + 4)
        }
        Arch::Mctn => {
            let h = cfg.baselines.mctn_hidden as u128;
            // Three bidirectional encoders and three decoders of width h.
            6 * 8 * h * h + 3 * 4 * h * h
        }
        Arch::Mfm | Arch::Gmfn => {
            let b = &cfg.baselines;
            let hs = [b.mfn_hidden_l, b.mfn_hidden_a, b.mfn_hidden_v].map(|x| x as u128);
            // The MFN's three LSTHMs (the rest is smaller than a bound needs).
            (0..3).map(|m| 4 * hs[m] * (hs[m] + dims[m] + 2)).sum()
        }
        Arch::Mult | Arch::Mica => {
            // Six crossmodal stacks of `layers` layers (attention 4d², FFN 8d²), three
            // memory encoders of max(layers, 3) layers (width 2d in MulT, d in MICA).
            let cross = 6 * l * 12 * d * d;
            let w = if cfg.arch == Arch::Mult { 2 * d } else { d };
            let memory = 3 * l.max(3) * 12 * w * w;
            front + cross + memory
        }
    }
}

/// A lower bound on the activation floats one training step keeps for the backward:
/// every layer keeps at least its input and output per element of each stream.
fn activation_floats(cfg: &ModelConfig, batch: usize) -> u128 {
    let b = batch as u128;
    let t: u128 = cfg.lens().iter().map(|&x| x as u128).sum();
    let width = match cfg.arch {
        Arch::EfLstm => cfg.lstm_hidden as u128,
        Arch::LfLstm => cfg.lstm_mod_hidden as u128,
        Arch::Raven => cfg.baselines.raven_word_hidden as u128,
        Arch::Mctn => cfg.baselines.mctn_hidden as u128 * 8,
        Arch::Mfm | Arch::Gmfn => cfg.baselines.mfn_mem as u128,
        Arch::Mult | Arch::Mica => cfg.d as u128 * cfg.layers as u128 * 2,
    };
    b * t * width
}

/// Refuses a model whose parameters alone cannot fit in this machine's memory
/// (`batch: None`), or, with `Some(batch)`, whose training step cannot (parameters,
/// gradients and Adam's two moments, plus the activations of one batch).
pub fn ensure_fits(cfg: &ModelConfig, batch: Option<usize>) -> Result<()> {
    ensure_fits_within(cfg, batch, limit_bytes())
}

/// [`ensure_fits`] against a given budget in bytes.
pub fn ensure_fits_within(cfg: &ModelConfig, batch: Option<usize>, limit: u128) -> Result<()> {
    let params = param_count(cfg);
    let (floats, what) = match batch {
        None => (params, "its parameters"),
        Some(b) => (
            params * 4 + activation_floats(cfg, b),
            "training (parameters, gradients, Adam's moments and one batch's activations)",
        ),
    };
    let bytes = floats.saturating_mul(4);
    if bytes > limit {
        let sizes = match batch {
            Some(b) => format!("d {}, layers {}, batch size {b}", cfg.d, cfg.layers),
            None => format!("d {}, layers {}", cfg.d, cfg.layers),
        };
        bail!(
            "the model ({sizes}) needs at least {} for {what}, more than this machine's {}: lower --d, --layers or --batch-size",
            human(bytes),
            human(limit)
        );
    }
    Ok(())
}

/// Bytes for people, also beyond u64.
pub fn human(n: u128) -> String {
    match u64::try_from(n) {
        Ok(v) => crate::durable::human_bytes(v),
        Err(_) => format!("{n} bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(d: usize, layers: usize) -> ModelConfig {
        cfg_of(crate::config::Variant::Mult, d, layers)
    }

    fn cfg_of(variant: crate::config::Variant, d: usize, layers: usize) -> ModelConfig {
        let mut c = crate::config::Config::preset(
            crate::config::Preset::SynthSmall,
            variant,
            crate::config::Task::Mosi,
            [8, 4, 6],
            [10, 12, 14],
        )
        .model;
        c.d = d;
        c.layers = layers;
        c
    }

    #[test]
    fn absurd_sizes_are_refused_in_one_line() {
        let gib = 1u128 << 30;
        ensure_fits_within(&cfg(40, 4), Some(24), gib).unwrap();
        let e = ensure_fits_within(&cfg(100_000_000, 4), None, 128 * gib)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("the model (d 100000000, layers 4) needs at least "),
            "{e}"
        );
        assert!(
            e.ends_with("more than this machine's 128 GiB: lower --d, --layers or --batch-size"),
            "{e}"
        );
        assert!(!e.contains('\n'));
        assert!(ensure_fits_within(&cfg(40, 1_000_000_000), None, 128 * gib).is_err());
        assert!(ensure_fits_within(&cfg(40, 4), Some(usize::MAX), 128 * gib).is_err());
    }

    #[test]
    fn the_estimate_is_a_lower_bound_of_the_real_parameter_count() {
        use crate::config::Variant;
        for v in [
            Variant::Mult,
            Variant::Mica,
            Variant::EfLstm,
            Variant::LfLstm,
        ] {
            for (d, layers) in [(8, 1), (16, 4)] {
                let c = cfg_of(v, d, layers);
                let mut init = crate::model::params::Initializer::new(1, &candle_core::Device::Cpu);
                let _ = crate::model::Model::new(&mut init, &c).unwrap();
                let real = init.into_store().num_scalars() as u128;
                let est = param_count(&c);
                assert!(est <= real, "{v:?} d {d}: estimate {est} > real {real}");
                assert!(
                    est * 3 > real,
                    "{v:?} d {d}: estimate {est} far below {real}"
                );
            }
        }
    }
}
