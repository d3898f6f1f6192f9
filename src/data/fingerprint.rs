//! A content hash of a dataset: what a run trained on, so that `--resume` can refuse a
//! different dataset. It covers what training reads (split names, shapes, values, lengths,
//! labels), not the file format, so the same data as a pickle or a mica directory hashes
//! the same.

use super::{Dataset, Labels};
use sha2::{Digest, Sha256};

/// sha256 (lower-case hex) of the dataset's content.
pub fn fingerprint(ds: &Dataset) -> String {
    let mut h = Sha256::new();
    let put_usize = |h: &mut Sha256, x: usize| h.update((x as u64).to_le_bytes());
    for (name, s) in &ds.splits {
        put_usize(&mut h, name.len());
        h.update(name.as_bytes());
        for m in s.modalities() {
            for x in [m.n, m.t, m.d] {
                put_usize(&mut h, x);
            }
            for chunk in m.data.chunks(1 << 14) {
                let bytes: Vec<u8> = chunk.iter().flat_map(|x| x.to_le_bytes()).collect();
                h.update(&bytes);
            }
            for &l in &m.lengths {
                put_usize(&mut h, l);
            }
        }
        match &s.labels {
            Labels::Sentiment(v) => {
                h.update(b"sentiment");
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                h.update(&bytes);
            }
            Labels::Emotion(v) => {
                h.update(b"emotion");
                h.update(v);
            }
        }
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
