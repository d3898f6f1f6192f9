//! A minimal pickle WRITER for MulT's dataset layout (pickle protocol 4, numpy-1 global
//! names so that both numpy 1.x and 2.x load it).
//!
//! Layout written (what MulT's `Multimodal_Datasets` reads):
//! `{'train'|'valid'|'test': {'text', 'audio', 'vision': float32 (N, T, D),
//!   'labels': float32 (N, 1, 1) sentiment or (N, 4, 2) one-hot emotions,
//!   'id': object (N, 3) of str [segment id, start, end]}}`.
//! Arrays are `numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')` + `BUILD`
//! with the state `(1, shape, dtype, False, raw_bytes)`; the dtype is
//! `numpy.dtype('f4', False, True)` + `BUILD` `(3, '<', None, None, None, -1, -1, 0)`.
//! Large arrays use `BINBYTES8`, so splits over 4 GiB are fine. No memo, no framing
//! (both optional in protocol 4).

use super::super::{Dataset, Labels, Split};
use super::OpCode;
use anyhow::{anyhow, Context, Result};
use std::io::Write;
use std::path::Path;

/// The split keys of a MulT pickle, in the order they are written.
pub const MULT_SPLITS: [&str; 3] = ["train", "valid", "test"];

/// Writes `ds` as a MulT-layout pickle at `path` (atomically: `<path>.tmp`, then rename).
pub fn write_mult_pickle(ds: &Dataset, path: &Path) -> Result<()> {
    let tmp = path.with_extension("pkl.tmp");
    let file =
        std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    write_mult_pickle_to(ds, &mut w)
        .and_then(|_| w.flush().map_err(Into::into))
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(w);
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot rename {} to {}", tmp.display(), path.display()))
}

/// Writes `ds` as a MulT-layout pickle to any writer.
pub fn write_mult_pickle_to<W: Write>(ds: &Dataset, w: W) -> Result<()> {
    let mut p = Pickler { w };
    p.raw(&[OpCode::PROTO, 4])?;
    p.raw(&[OpCode::EMPTY_DICT, OpCode::MARK])?;
    for name in MULT_SPLITS {
        let split = ds
            .splits
            .get(name)
            .ok_or_else(|| anyhow!("dataset has no {name} split (MulT needs train/valid/test)"))?;
        p.unicode(name)?;
        p.split(split)?;
    }
    p.raw(&[OpCode::SETITEMS, OpCode::STOP])?;
    Ok(())
}

/// Number of list items per `APPENDS` batch (as CPython does).
const APPEND_BATCH: usize = 1000;
/// Floats converted to bytes per write.
const WRITE_CHUNK: usize = 1 << 16;

/// Emits pickle opcodes for the handful of value kinds MulT's layout needs.
struct Pickler<W: Write> {
    w: W,
}

impl<W: Write> Pickler<W> {
    fn raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.w.write_all(bytes)?;
        Ok(())
    }

    fn unicode(&mut self, s: &str) -> Result<()> {
        let b = s.as_bytes();
        match u8::try_from(b.len()) {
            Ok(len) => self.raw(&[OpCode::SHORT_BINUNICODE, len])?,
            Err(_) => {
                self.raw(&[OpCode::BINUNICODE])?;
                self.raw(&u32::try_from(b.len())?.to_le_bytes())?;
            }
        }
        self.raw(b)
    }

    fn int(&mut self, v: i64) -> Result<()> {
        match u8::try_from(v) {
            Ok(small) => self.raw(&[OpCode::BININT1, small]),
            Err(_) => {
                let v = i32::try_from(v).context("integer does not fit BININT")?;
                self.raw(&[OpCode::BININT])?;
                self.raw(&v.to_le_bytes())
            }
        }
    }

    fn bool(&mut self, v: bool) -> Result<()> {
        self.raw(&[if v { OpCode::NEWTRUE } else { OpCode::NEWFALSE }])
    }

    /// The header of a bytes object of `len` bytes (the payload follows).
    fn bytes_header(&mut self, len: usize) -> Result<()> {
        if let Ok(l) = u8::try_from(len) {
            self.raw(&[OpCode::SHORT_BINBYTES, l])
        } else if let Ok(l) = u32::try_from(len) {
            self.raw(&[OpCode::BINBYTES])?;
            self.raw(&l.to_le_bytes())
        } else {
            self.raw(&[OpCode::BINBYTES8])?;
            self.raw(&(len as u64).to_le_bytes())
        }
    }

    fn global(&mut self, module: &str, name: &str) -> Result<()> {
        self.unicode(module)?;
        self.unicode(name)?;
        self.raw(&[OpCode::STACK_GLOBAL])
    }

    fn shape(&mut self, shape: &[usize]) -> Result<()> {
        self.raw(&[OpCode::MARK])?;
        for &s in shape {
            self.int(s as i64)?;
        }
        self.raw(&[OpCode::TUPLE])
    }

    /// `numpy.dtype(code, False, True)` with its `BUILD` state.
    fn dtype(&mut self, code: &str, order: &str, flags: i64) -> Result<()> {
        self.global("numpy", "dtype")?;
        self.unicode(code)?;
        self.raw(&[
            OpCode::NEWFALSE,
            OpCode::NEWTRUE,
            OpCode::TUPLE3,
            OpCode::REDUCE,
            OpCode::MARK,
        ])?;
        self.int(3)?;
        self.unicode(order)?;
        self.raw(&[OpCode::NONE, OpCode::NONE, OpCode::NONE])?;
        self.int(-1)?;
        self.int(-1)?;
        self.int(flags)?;
        self.raw(&[OpCode::TUPLE, OpCode::BUILD])
    }

    /// `_reconstruct(ndarray, (0,), b'b')` followed by the state tuple opener.
    fn array_prologue(&mut self, shape: &[usize]) -> Result<()> {
        self.global("numpy.core.multiarray", "_reconstruct")?;
        self.global("numpy", "ndarray")?;
        self.int(0)?;
        self.raw(&[
            OpCode::TUPLE1,
            OpCode::SHORT_BINBYTES,
            1,
            b'b',
            OpCode::TUPLE3,
            OpCode::REDUCE,
            OpCode::MARK,
        ])?;
        self.int(1)?;
        self.shape(shape)
    }

    /// A C-order little-endian float32 array.
    fn array_f32(&mut self, shape: &[usize], data: &[f32]) -> Result<()> {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "array shape");
        self.array_prologue(shape)?;
        self.dtype("f4", "<", 0)?;
        self.bool(false)?;
        self.bytes_header(data.len() * 4)?;
        let mut buf = Vec::with_capacity(WRITE_CHUNK * 4);
        for chunk in data.chunks(WRITE_CHUNK) {
            buf.clear();
            chunk
                .iter()
                .for_each(|v| buf.extend_from_slice(&v.to_le_bytes()));
            self.raw(&buf)?;
        }
        self.raw(&[OpCode::TUPLE, OpCode::BUILD])
    }

    /// An object array of Python `str`, row-major.
    fn array_str(&mut self, shape: &[usize], items: &[String]) -> Result<()> {
        assert_eq!(shape.iter().product::<usize>(), items.len(), "array shape");
        self.array_prologue(shape)?;
        self.dtype("O8", "|", 63)?;
        self.bool(false)?;
        self.raw(&[OpCode::EMPTY_LIST])?;
        for batch in items.chunks(APPEND_BATCH) {
            self.raw(&[OpCode::MARK])?;
            for s in batch {
                self.unicode(s)?;
            }
            self.raw(&[OpCode::APPENDS])?;
        }
        self.raw(&[OpCode::TUPLE, OpCode::BUILD])
    }

    /// One split's dict: text, audio, vision, labels, id.
    fn split(&mut self, split: &Split) -> Result<()> {
        self.raw(&[OpCode::EMPTY_DICT, OpCode::MARK])?;
        for (key, m) in ["text", "audio", "vision"].iter().zip(split.modalities()) {
            self.unicode(key)?;
            self.array_f32(&[m.n, m.t, m.d], &m.data)?;
        }
        self.unicode("labels")?;
        let (shape, values) = mult_labels(&split.labels);
        self.array_f32(&shape, &values)?;
        if let Some(ids) = mult_ids(split) {
            self.unicode("id")?;
            self.array_str(&[split.len(), 3], &ids)?;
        }
        self.raw(&[OpCode::SETITEMS])
    }
}

/// MulT's label array: `(N, 1, 1)` sentiment, or `(N, 4, 2)` one-hot per emotion
/// (index 1 hot when the emotion is present).
pub fn mult_labels(labels: &Labels) -> ([usize; 3], Vec<f32>) {
    match labels {
        Labels::Sentiment(v) => ([v.len(), 1, 1], v.clone()),
        Labels::Emotion(v) => {
            let values = v
                .iter()
                .flat_map(|&e| if e != 0 { [0.0, 1.0] } else { [1.0, 0.0] })
                .collect();
            ([v.len() / 4, 4, 2], values)
        }
    }
}

/// MulT's `(N, 3)` id rows `[segment id, start, end]`, row-major; start / end (seconds)
/// come from the ground-truth intervals when present, else they are empty strings.
/// `None` when the split has no ids.
pub fn mult_ids(split: &Split) -> Option<Vec<String>> {
    let ids = split.ids.as_ref()?;
    let n = split.len();
    let mut rows = Vec::with_capacity(3 * n);
    for (i, id) in ids.iter().enumerate() {
        let span = split.intervals.as_ref().and_then(|iv| {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for per in &iv.per_modality {
                let t = per.len() / (2 * n);
                for pair in per[i * t * 2..(i + 1) * t * 2].chunks_exact(2) {
                    if pair[0].is_finite() {
                        lo = lo.min(pair[0]);
                        hi = hi.max(pair[1]);
                    }
                }
            }
            (lo <= hi).then_some((lo, hi))
        });
        rows.push(id.clone());
        match span {
            Some((lo, hi)) => {
                rows.push(format!("{lo:.3}"));
                rows.push(format!("{hi:.3}"));
            }
            None => rows.extend([String::new(), String::new()]),
        }
    }
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::synth::{generate, SynthConfig, SynthSize};

    fn tiny(size: SynthSize) -> Dataset {
        let mut cfg = SynthConfig::preset(size, 3);
        (cfg.n_train, cfg.n_valid, cfg.n_test) = (3, 2, 2);
        generate(&cfg).unwrap()
    }

    fn pickle_bytes(ds: &Dataset) -> Vec<u8> {
        let mut out = Vec::new();
        write_mult_pickle_to(ds, &mut out).unwrap();
        out
    }

    #[test]
    fn frame_is_protocol_4_dict_and_ends_with_stop() {
        let bytes = pickle_bytes(&tiny(SynthSize::Small));
        assert_eq!(
            &bytes[..4],
            &[OpCode::PROTO, 4, OpCode::EMPTY_DICT, OpCode::MARK]
        );
        assert_eq!(&bytes[bytes.len() - 2..], &[OpCode::SETITEMS, OpCode::STOP]);
    }

    #[test]
    fn raw_array_bytes_are_embedded_in_order() {
        let ds = tiny(SynthSize::Small);
        let bytes = pickle_bytes(&ds);
        for name in MULT_SPLITS {
            for m in ds.splits[name].modalities() {
                let raw: Vec<u8> = m.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                let mut header = vec![OpCode::BINBYTES];
                header.extend((raw.len() as u32).to_le_bytes());
                header.extend(&raw);
                assert!(
                    bytes.windows(header.len()).any(|w| w == header.as_slice()),
                    "{name}: array bytes not found"
                );
            }
        }
    }

    #[test]
    fn emotion_labels_become_one_hot_pairs() {
        let (shape, v) = mult_labels(&Labels::Emotion(vec![0, 1, 0, 0]));
        assert_eq!(shape, [1, 4, 2]);
        assert_eq!(v, vec![1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 0.0]);
    }

    #[test]
    fn ids_carry_the_clip_span() {
        let ds = tiny(SynthSize::Small);
        let split = &ds.splits["train"];
        let rows = mult_ids(split).unwrap();
        assert_eq!(rows.len(), 3 * split.len());
        assert_eq!(rows[0], split.ids.as_ref().unwrap()[0]);
        let (lo, hi): (f32, f32) = (rows[1].parse().unwrap(), rows[2].parse().unwrap());
        assert!(lo >= 0.0 && hi > lo);
    }

    #[test]
    fn bytes_headers_pick_the_smallest_opcode() {
        let header = |len: usize| {
            let mut p = Pickler { w: Vec::new() };
            p.bytes_header(len).unwrap();
            p.w
        };
        assert_eq!(header(1), vec![OpCode::SHORT_BINBYTES, 1]);
        assert_eq!(header(256), vec![OpCode::BINBYTES, 0, 1, 0, 0]);
        let big = 5usize << 30; // > 4 GiB: a whole MOSEI split can exceed it
        let mut want = vec![OpCode::BINBYTES8];
        want.extend((big as u64).to_le_bytes());
        assert_eq!(header(big), want);
    }

    #[test]
    fn ints_use_bininit1_or_signed_binint() {
        let enc = |v: i64| {
            let mut p = Pickler { w: Vec::new() };
            p.int(v).unwrap();
            p.w
        };
        assert_eq!(enc(3), vec![OpCode::BININT1, 3]);
        assert_eq!(enc(-1), vec![OpCode::BININT, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(enc(500), vec![OpCode::BININT, 0xf4, 1, 0, 0]);
    }

    #[test]
    fn missing_split_is_an_error() {
        let mut ds = tiny(SynthSize::Small);
        ds.splits.remove("valid");
        let err = write_mult_pickle_to(&ds, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("valid"), "{err}");
    }
}
