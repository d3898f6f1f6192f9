//! Forward-pass context: train/eval mode and the dropout random stream.
//!
//! candle's CPU RNG cannot be seeded, so mica draws every dropout mask from its own
//! counter-based generator: element `i` of the `s`-th dropout call of a step keeps its
//! value iff `hash(seed, s, i)` falls above the drop rate. A fused kernel can therefore
//! regenerate exactly the same mask (spec/kernels.md), and a seed fixes every draw.

use crate::kernels::pointwise;
use crate::kernels::rng::FusedDropout;
use anyhow::Result;
use candle_core::Tensor;
use std::cell::Cell;

/// Mode and randomness of one forward pass.
#[derive(Debug)]
pub struct Ctx {
    /// Training mode (dropout active) or evaluation.
    pub train: bool,
    /// Seed of this pass's dropout draws.
    pub seed: u64,
    stream: Cell<u64>,
}

impl Ctx {
    /// Evaluation mode: no dropout.
    pub fn eval() -> Self {
        Ctx {
            train: false,
            seed: 0,
            stream: Cell::new(0),
        }
    }

    /// Training mode with dropout draws derived from `seed`.
    pub fn train(seed: u64) -> Self {
        Ctx {
            train: true,
            seed,
            stream: Cell::new(0),
        }
    }

    /// A fresh stream id for the next random draw of this pass.
    pub fn next_stream(&self) -> u64 {
        let s = self.stream.get();
        self.stream.set(s + 1);
        s
    }

    /// True when a dropout of rate `p` does anything in this pass.
    pub fn dropout_active(&self, p: f32) -> bool {
        self.train && p > 0.0
    }

    /// Inverted dropout (PyTorch's `F.dropout`): zero with probability `p`, scale the
    /// kept values by `1/(1-p)`. Identity in eval mode or for `p == 0`.
    ///
    /// On f32 CPU tensors this is one op that keeps only its output (the backward
    /// regenerates the mask); elsewhere `x * dropout_mask(..)`. Both give the same values.
    pub fn dropout(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        if !self.dropout_active(p) {
            return Ok(x.clone());
        }
        if pointwise::applies(&[x]) {
            return Ok(pointwise::dropout(x, self.next_dropout(p))?);
        }
        let mask = self.dropout_mask(x.dims(), p, x.device())?;
        Ok(x.mul(&mask)?)
    }

    /// `dropout(relu(x), p)` (one dropout draw when active, as [`Ctx::dropout`]); one op
    /// keeping only its output on f32 CPU tensors.
    pub fn relu_dropout(&self, x: &Tensor, p: f32) -> Result<Tensor> {
        if pointwise::applies(&[x]) {
            let d = self.dropout_active(p).then(|| self.next_dropout(p));
            return Ok(pointwise::relu_dropout(x, d)?);
        }
        self.dropout(&super::layers::relu(x)?, p)
    }

    /// `residual + dropout(y, p)` (one dropout draw when active, as [`Ctx::dropout`]); one
    /// op keeping only its output on f32 CPU tensors of the same shape.
    pub fn residual_dropout(&self, residual: &Tensor, y: &Tensor, p: f32) -> Result<Tensor> {
        if !self.dropout_active(p) {
            return Ok((residual + y)?);
        }
        if pointwise::applies(&[residual, y]) && residual.shape() == y.shape() {
            return Ok(pointwise::residual_dropout(
                residual,
                y,
                self.next_dropout(p),
            )?);
        }
        Ok((residual + self.dropout(y, p)?)?)
    }

    /// The keep bits of the next dropout draw of rate `p` (takes one stream).
    pub fn next_dropout(&self, p: f32) -> FusedDropout {
        FusedDropout::new(self.seed, self.next_stream(), p)
    }

    /// The multiplicative mask (`0` or `1/(1-p)`) of the next dropout draw of `shape`.
    pub fn dropout_mask(
        &self,
        shape: &[usize],
        p: f32,
        device: &candle_core::Device,
    ) -> Result<Tensor> {
        let stream = self.next_stream();
        let n: usize = shape.iter().product();
        // The same draws as `keep(seed, stream, i, p)`, with the per-stream hash hoisted
        // out of the loop (one mix64 per element instead of three).
        let drop = FusedDropout::new(self.seed, stream, p);
        let mut values = vec![0f32; n];
        drop.multipliers(0, &mut values);
        Ok(Tensor::from_vec(values, shape, device)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::rng::keep;

    #[test]
    fn dropout_mask_is_keep_of_each_flat_index() {
        let ctx = Ctx::train(99);
        ctx.next_stream();
        let p = 0.3;
        let m: Vec<f32> = ctx
            .dropout_mask(&[3, 7, 5], p, &candle_core::Device::Cpu)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let scale = 1.0 / (1.0 - p);
        for (i, x) in m.iter().enumerate() {
            let want = if keep(99, 1, i as u64, p) { scale } else { 0.0 };
            assert_eq!(*x, want, "element {i}");
        }
    }
}
