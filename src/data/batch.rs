//! Batching: gathers samples of a [`Split`] into model inputs and label tensors.

use super::{Labels, Modality, Split};
use anyhow::Result;
use candle_core::{Device, Tensor};

/// A batch of model inputs, batch-first `[B, T, D]` f32.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Text `[B, T_l, D_l]`.
    pub text: Tensor,
    /// Audio `[B, T_a, D_a]`.
    pub audio: Tensor,
    /// Vision `[B, T_v, D_v]`.
    pub vision: Tensor,
    /// Per modality, each element's time `[B, T]` f32 (seconds, the midpoint of its
    /// interval; NaN for padding), where the data knows it. Used by `positions = time`.
    pub times: Option<[Tensor; 3]>,
}

/// One batch: model inputs, labels and the sample indices it holds.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Model inputs `[B, T, D]`.
    pub inputs: Inputs,
    /// Sentiment `[B, 1]` f32, or emotion classes `[B, 4]` u32.
    pub labels: Tensor,
    /// Indices into the split.
    pub indices: Vec<usize>,
}

fn gather(m: &Modality, idx: &[usize], device: &Device) -> Result<Tensor> {
    let per = m.t * m.d;
    let mut buf = Vec::with_capacity(idx.len() * per);
    for &i in idx {
        buf.extend_from_slice(m.sample(i));
    }
    Ok(Tensor::from_vec(buf, (idx.len(), m.t, m.d), device)?)
}

/// Per modality, the midpoint time `[B, T]` of every element of the samples `idx` (NaN for
/// padding), when the split knows its element intervals.
fn gather_times(split: &Split, idx: &[usize], device: &Device) -> Result<Option<[Tensor; 3]>> {
    let Some(iv) = &split.intervals else {
        return Ok(None);
    };
    let mods = [&split.text, &split.audio, &split.vision];
    let mut out = Vec::with_capacity(3);
    for (m, per) in mods.iter().zip(&iv.per_modality) {
        let t = m.t;
        let mut buf = Vec::with_capacity(idx.len() * t);
        for &i in idx {
            let s = &per[i * t * 2..(i + 1) * t * 2];
            buf.extend(s.chunks_exact(2).map(|c| 0.5 * (c[0] + c[1])));
        }
        out.push(Tensor::from_vec(buf, (idx.len(), t), device)?);
    }
    let [l, a, v]: [Tensor; 3] = out.try_into().expect("three modalities");
    Ok(Some([l, a, v]))
}

/// Labels of the samples `idx` as a tensor.
pub fn labels_tensor(labels: &Labels, idx: &[usize], device: &Device) -> Result<Tensor> {
    Ok(match labels {
        Labels::Sentiment(v) => Tensor::from_vec(
            idx.iter().map(|&i| v[i]).collect::<Vec<f32>>(),
            (idx.len(), 1),
            device,
        )?,
        Labels::Emotion(v) => {
            let data: Vec<u32> = idx
                .iter()
                .flat_map(|&i| v[i * 4..i * 4 + 4].iter().map(|&x| x as u32))
                .collect();
            Tensor::from_vec(data, (idx.len(), 4), device)?
        }
    })
}

/// Builds the batch of samples `idx` of `split`.
pub fn make_batch(split: &Split, idx: &[usize], device: &Device) -> Result<Batch> {
    Ok(Batch {
        inputs: Inputs {
            text: gather(&split.text, idx, device)?,
            audio: gather(&split.audio, idx, device)?,
            vision: gather(&split.vision, idx, device)?,
            times: gather_times(split, idx, device)?,
        },
        labels: labels_tensor(&split.labels, idx, device)?,
        indices: idx.to_vec(),
    })
}

/// Labels of the whole split as f64 (sentiment: N values; emotion: N*4), for metrics.
pub fn labels_f64(labels: &Labels) -> Vec<f64> {
    match labels {
        Labels::Sentiment(v) => v.iter().map(|&x| x as f64).collect(),
        Labels::Emotion(v) => v.iter().map(|&x| x as f64).collect(),
    }
}

/// Splits `order` into consecutive batches of at most `batch_size` (the last may be short).
pub fn chunks(order: &[usize], batch_size: usize) -> Vec<Vec<usize>> {
    order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect()
}
