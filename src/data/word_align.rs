//! Word alignment by ground-truth intervals (`mica synth --aligned`): every word takes the
//! mean of the acoustic (visual) frames whose intervals overlap its own, the CMU SDK's
//! `align` with an average as collapse function, but with the benchmark's TRUE timing.
//! The result has all three modalities on the text grid (length `T_l`, the same left
//! padding as the text), what MFM and Graph-MFN (the paper's † rows) read.
//!
//! A word that overlaps no frame (possible only for a stream that starts late) takes the
//! frame whose centre is nearest to the word's centre. The intervals of audio and vision
//! become the words'.

use super::synth::{cooccur, sample_intervals};
use super::{Dataset, Intervals, Modality, Split};
use anyhow::{ensure, Result};

/// `ds` with audio and vision averaged onto the words (module docs). Every split needs
/// element intervals; the error names the split that has none.
pub fn average_onto_words(ds: &Dataset) -> Result<Dataset> {
    let mut out = ds.clone();
    for (name, split) in out.splits.iter_mut() {
        *split = align_split(name, split)?;
    }
    out.provenance = format!(
        "{}; word-aligned: audio and vision averaged onto the words by their true intervals",
        ds.provenance
    );
    Ok(out)
}

fn align_split(name: &str, s: &Split) -> Result<Split> {
    let iv = s.intervals.as_ref().ok_or_else(|| {
        anyhow::anyhow!("split `{name}`: no element intervals, so no word alignment by time")
    })?;
    let n = s.len();
    for (m, md) in s.modalities().iter().enumerate() {
        ensure!(
            iv.per_modality[m].len() == md.n * md.t * 2 && md.n == n,
            "split `{name}`: intervals of modality {m} do not match its [{}, {}] shape",
            md.n,
            md.t
        );
    }
    let text = &s.text;
    let mut out = s.clone();
    for m in 1..3 {
        let src = s.modalities()[m];
        let (t, d) = (text.t, src.d);
        let mut data = vec![0f32; n * t * d];
        for i in 0..n {
            let groups = cooccur(iv, n, 0, m, i);
            let words = sample_intervals(&iv.per_modality[0], n, i);
            let frames = sample_intervals(&iv.per_modality[m], n, i);
            for (w, group) in groups.iter().enumerate() {
                if words[w][0].is_nan() {
                    continue;
                }
                let chosen = if group.is_empty() {
                    nearest(&frames, words[w]).into_iter().collect()
                } else {
                    group.clone()
                };
                if chosen.is_empty() {
                    continue;
                }
                let row = &mut data[(i * t + w) * d..(i * t + w + 1) * d];
                for &j in &chosen {
                    let f = &src.sample(i)[j * d..(j + 1) * d];
                    for (r, x) in row.iter_mut().zip(f) {
                        *r += x / chosen.len() as f32;
                    }
                }
            }
        }
        let md = Modality {
            data,
            n,
            t,
            d,
            lengths: text.lengths.clone(),
        };
        if m == 1 {
            out.audio = md;
        } else {
            out.vision = md;
        }
    }
    out.intervals = Some(Intervals {
        per_modality: [
            iv.per_modality[0].clone(),
            iv.per_modality[0].clone(),
            iv.per_modality[0].clone(),
        ],
    });
    Ok(out)
}

/// The real frame whose centre is nearest to the word's centre (none when no real frame).
fn nearest(frames: &[[f32; 2]], word: [f32; 2]) -> Option<usize> {
    let c = (word[0] + word[1]) / 2.0;
    frames
        .iter()
        .enumerate()
        .filter(|(_, f)| !f[0].is_nan())
        .min_by(|a, b| {
            let da = ((a.1[0] + a.1[1]) / 2.0 - c).abs();
            let db = ((b.1[0] + b.1[1]) / 2.0 - c).abs();
            da.total_cmp(&db)
        })
        .map(|(j, _)| j)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::{generate, SynthConfig, SynthSize};

    #[test]
    fn words_get_the_mean_of_their_cooccurring_frames() {
        let mut cfg = SynthConfig::preset(SynthSize::Small, 3);
        (cfg.n_train, cfg.n_valid, cfg.n_test) = (6, 2, 2);
        let ds = generate(&cfg).unwrap();
        let al = average_onto_words(&ds).unwrap();
        for (name, s) in &al.splits {
            let o = &ds.splits[name];
            let tl = o.text.t;
            assert_eq!((s.audio.t, s.vision.t), (tl, tl));
            assert_eq!(s.text, o.text);
            assert_eq!(s.audio.lengths, o.text.lengths);
            let iv = o.intervals.as_ref().unwrap();
            for i in 0..s.len() {
                let groups = cooccur(iv, s.len(), 0, 1, i);
                for (w, g) in groups.iter().enumerate() {
                    let row = &s.audio.sample(i)[w * s.audio.d..(w + 1) * s.audio.d];
                    if w + o.text.lengths[i] < tl {
                        assert!(row.iter().all(|x| *x == 0.0), "padding stays zero");
                        continue;
                    }
                    if g.is_empty() {
                        continue;
                    }
                    for (k, got) in row.iter().enumerate() {
                        let want: f32 = g
                            .iter()
                            .map(|&j| o.audio.sample(i)[j * o.audio.d + k])
                            .sum::<f32>()
                            / g.len() as f32;
                        assert!((got - want).abs() < 1e-5);
                    }
                }
            }
        }
        // Without intervals: refused, naming the split.
        let mut bare = ds.clone();
        bare.splits.get_mut("test").unwrap().intervals = None;
        let e = average_onto_words(&bare).unwrap_err().to_string();
        assert!(e.contains("split `test`: no element intervals"), "{e}");
    }
}
