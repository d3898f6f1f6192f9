//! Gradient clipping and Adam, in PyTorch's exact order of operations, so one mica step
//! equals one official step (`clip_grad_norm_` then `torch.optim.Adam`).

use crate::model::params::ParamStore;
use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Global L2 norm of all gradients present in `grads` (parameters without a gradient are
/// skipped, as PyTorch does), accumulated in f64.
pub fn grad_norm(store: &ParamStore, grads: &GradStore) -> Result<f64> {
    let mut total = 0f64;
    for var in store.vars.values() {
        if let Some(g) = grads.get(var.as_tensor()) {
            let v: Vec<f32> = g.flatten_all()?.to_vec1()?;
            total += v.iter().map(|x| (*x as f64) * (*x as f64)).sum::<f64>();
        }
    }
    Ok(total.sqrt())
}

/// `torch.nn.utils.clip_grad_norm_(params, max_norm)`: scales every gradient by
/// `min(1, max_norm / (norm + 1e-6))`. Returns the norm before clipping.
pub fn clip_grad_norm(store: &ParamStore, grads: &mut GradStore, max_norm: f64) -> Result<f64> {
    let norm = grad_norm(store, grads)?;
    let coef = (max_norm / (norm + 1e-6)).min(1.0);
    for var in store.vars.values() {
        if let Some(g) = grads.remove(var.as_tensor()) {
            let scaled = (g * coef)?;
            grads.insert(var.as_tensor(), scaled);
        }
    }
    Ok(norm)
}

/// Adam hyper-parameters (PyTorch defaults but lr).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
}

impl Default for AdamConfig {
    fn default() -> Self {
        AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam state: per parameter the step count and both moments (host f32 buffers).
#[derive(Debug, Clone, Default)]
pub struct Adam {
    /// Hyper-parameters (lr changes with the scheduler).
    pub cfg: AdamConfig,
    /// Per-parameter state by name.
    pub state: BTreeMap<String, AdamSlot>,
}

/// One parameter's Adam state.
#[derive(Debug, Clone, Default)]
pub struct AdamSlot {
    /// Steps taken for this parameter.
    pub step: u64,
    /// First moment.
    pub exp_avg: Vec<f32>,
    /// Second moment.
    pub exp_avg_sq: Vec<f32>,
}

impl Adam {
    /// A fresh optimiser.
    pub fn new(cfg: AdamConfig) -> Self {
        Adam {
            cfg,
            state: BTreeMap::new(),
        }
    }

    /// One step over every parameter that has a gradient (f32 arithmetic in PyTorch's order:
    /// `m = lerp(m, g, 1-b1)`, `v = b2 v + (1-b2) g²`,
    /// `p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps)`).
    pub fn step(&mut self, store: &ParamStore, grads: &GradStore) -> Result<()> {
        let (b1, b2) = (self.cfg.beta1 as f32, self.cfg.beta2 as f32);
        for (name, var) in &store.vars {
            let Some(g) = grads.get(var.as_tensor()) else {
                continue;
            };
            let g: Vec<f32> = g.flatten_all()?.to_vec1()?;
            let mut p: Vec<f32> = var.as_tensor().flatten_all()?.to_vec1()?;
            let slot = self.state.entry(name.clone()).or_insert_with(|| AdamSlot {
                step: 0,
                exp_avg: vec![0.0; g.len()],
                exp_avg_sq: vec![0.0; g.len()],
            });
            slot.step += 1;
            let bc1 = 1.0 - self.cfg.beta1.powi(slot.step as i32);
            let bc2 = 1.0 - self.cfg.beta2.powi(slot.step as i32);
            let step_size = (self.cfg.lr / bc1) as f32;
            let bc2_sqrt = bc2.sqrt() as f32;
            let eps = self.cfg.eps as f32;
            for i in 0..g.len() {
                let m = &mut slot.exp_avg[i];
                // torch's lerp_(grad, 1 - b1) for weights < 0.5: m + w (g - m).
                *m += (1.0 - b1) * (g[i] - *m);
                let v = &mut slot.exp_avg_sq[i];
                *v = *v * b2 + (1.0 - b2) * g[i] * g[i];
                let denom = v.sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * (*m / denom);
            }
            var.set(&Tensor::from_vec(p, var.dims(), var.device())?)?;
        }
        Ok(())
    }
}
