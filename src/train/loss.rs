//! Task losses of MulT / MICA (spec/mult.md "Outputs and losses").

use anyhow::{ensure, Result};
use candle_core::{DType, Tensor, D};

/// Mean absolute error `mean |pred - target|` with PyTorch's gradient (`sign`, 0 at a tie;
/// candle's `abs` would pass +1 there).
pub fn l1_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let target = target.reshape(pred.dims())?;
    let diff = (pred - &target)?;
    let sign =
        (diff.gt(0.0)?.to_dtype(DType::F32)? - diff.lt(0.0)?.to_dtype(DType::F32)?)?.detach();
    Ok(diff.mul(&sign)?.mean_all()?)
}

/// IEMOCAP loss: output `[B, 8]` viewed as `[4B, 2]`, cross-entropy (mean) against the
/// per-emotion class `[B, 4]` in {0, 1} (u32 or i64).
pub fn emotion_ce(pred: &Tensor, labels: &Tensor) -> Result<Tensor> {
    let b = pred.dim(0)?;
    ensure!(
        pred.dims() == [b, 8],
        "emotion output must be [B, 8], got {:?}",
        pred.dims()
    );
    let logits = pred.reshape((4 * b, 2))?;
    let max = logits.max_keepdim(D::Minus1)?.detach();
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    let logp = shifted.broadcast_sub(&lse)?;
    let idx = labels.reshape((4 * b, 1))?.to_dtype(DType::U32)?;
    let picked = logp.gather(&idx, 1)?;
    Ok((picked.mean_all()? * -1.0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn l1_gradient_is_zero_at_ties() {
        let dev = Device::Cpu;
        let p = Var::new(&[[1.0f32], [2.0], [3.0]], &dev).unwrap();
        let t = Tensor::new(&[[1.0f32], [1.0], [4.0]], &dev).unwrap();
        let l = l1_loss(p.as_tensor(), &t).unwrap();
        assert!((l.to_scalar::<f32>().unwrap() - 2.0 / 3.0).abs() < 1e-7);
        let g: Vec<f32> = l
            .backward()
            .unwrap()
            .get(p.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(g, vec![0.0, 1.0 / 3.0, -1.0 / 3.0]);
    }

    #[test]
    fn emotion_ce_matches_hand_computation() {
        let dev = Device::Cpu;
        // One sample, four emotions; logits (0, 0) -> ln 2; (1, 0) with class 0 -> ln(1 + e^-1).
        let pred = Tensor::new(&[[0.0f32, 0.0, 1.0, 0.0, 0.0, 2.0, 3.0, 3.0]], &dev).unwrap();
        let labels = Tensor::new(&[[1u32, 0, 1, 0]], &dev).unwrap();
        let got = emotion_ce(&pred, &labels)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        let ln2 = 2f64.ln();
        let want = (ln2 + (1.0 + (-1f64).exp()).ln() + (1.0 + (-2f64).exp()).ln() + ln2) / 4.0;
        assert!((got - want).abs() < 1e-6, "{got} vs {want}");
    }
}
