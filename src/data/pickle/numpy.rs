//! numpy arrays inside a pickle: dtypes ([`DType`]) and the conversion of their raw bytes
//! (any byte order, C or Fortran order, split anywhere across chunks) to `f32` values or,
//! for fixed-width `S` / `U` strings, to text.

use super::{malformed, ArrayData, PickleErrorKind, Res};

/// Element kind of a numpy dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// IEEE float (`f2`, `f4`, `f8`).
    Float,
    /// Signed integer (`i1`..`i8`).
    Int,
    /// Unsigned integer (`u1`..`u8`).
    UInt,
    /// Boolean (`b1`).
    Bool,
    /// Python objects (`O`).
    Object,
    /// Fixed-width byte strings (`S<n>`, `|S10`): `size` bytes, NUL-padded.
    Bytes,
    /// Fixed-width unicode strings (`U<n>`, `<U10`, `>U10`): `size / 4` UCS-4 code points.
    Unicode,
}

/// A numpy dtype this reader converts (numbers, objects, fixed-width strings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DType {
    /// Element kind.
    pub kind: ScalarKind,
    /// Bytes per element (8 for objects, as numpy reports; 4 per character for `U`).
    pub size: usize,
    /// Byte order of the stored data.
    pub big_endian: bool,
}

/// Longest dtype spec string looked at (numpy writes at most a few characters).
const MAX_SPEC: usize = 24;

impl DType {
    /// Parses numpy's dtype spec string (`'f8'`, `'<f4'`, `'i8'`, `'O8'`, `'b1'`, `'u1'`,
    /// `'S10'`, `'U10'`); `None` for the dtypes this reader does not convert (complex,
    /// datetime, void / structured, ...) and for malformed specs.
    pub fn parse(spec: &str) -> Option<DType> {
        if spec.len() > MAX_SPEC {
            return None;
        }
        let (big_endian, rest) = match spec.as_bytes().first() {
            Some(b'>') => (true, &spec[1..]),
            Some(b'<' | b'=' | b'|') => (false, &spec[1..]),
            _ => (false, spec),
        };
        let mut chars = rest.chars();
        let kind = match chars.next()? {
            'f' => ScalarKind::Float,
            'i' => ScalarKind::Int,
            'u' => ScalarKind::UInt,
            'b' | '?' => ScalarKind::Bool,
            'O' => ScalarKind::Object,
            'S' | 'a' => ScalarKind::Bytes,
            'U' => ScalarKind::Unicode,
            _ => return None,
        };
        let digits = chars.as_str();
        let size = if digits.is_empty() {
            match kind {
                ScalarKind::Bool => 1,
                ScalarKind::Object => 8,
                // Width from the dtype's BUILD state (numpy's `elsize`).
                ScalarKind::Bytes | ScalarKind::Unicode => 0,
                _ => return None,
            }
        } else {
            if !digits.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            digits.parse::<usize>().ok()?
        };
        let size = match kind {
            ScalarKind::Float if matches!(size, 2 | 4 | 8) => size,
            ScalarKind::Int | ScalarKind::UInt if matches!(size, 1 | 2 | 4 | 8) => size,
            ScalarKind::Bool if size == 1 => size,
            ScalarKind::Object if size == 8 || size == 4 => size,
            ScalarKind::Bytes => size,
            ScalarKind::Unicode => size.checked_mul(4)?,
            _ => return None,
        };
        Some(DType {
            kind,
            size,
            big_endian,
        })
    }

    /// True for the kinds read as text (`S`, `U`).
    pub fn is_text(&self) -> bool {
        matches!(self.kind, ScalarKind::Bytes | ScalarKind::Unicode)
    }

    /// numpy's name of the dtype (`float64`, `int32`, `bool`, `object`), or its string
    /// form for fixed-width strings (`|S10`, `<U10`, `>U10`).
    pub fn name(&self) -> String {
        let order = if self.big_endian { '>' } else { '<' };
        match self.kind {
            ScalarKind::Float => format!("float{}", self.size * 8),
            ScalarKind::Int => format!("int{}", self.size * 8),
            ScalarKind::UInt => format!("uint{}", self.size * 8),
            ScalarKind::Bool => "bool".to_string(),
            ScalarKind::Object => "object".to_string(),
            ScalarKind::Bytes => format!("|S{}", self.size),
            ScalarKind::Unicode => format!("{order}U{}", self.size / 4),
        }
    }
}

/// Decodes the raw bytes of a fixed-width string array (`S` or `U`, `data.len()` a multiple
/// of the item size) in storage order: NUL padding at the end of each item is removed;
/// bytes that are not UTF-8 and code points that are not characters become U+FFFD.
pub fn decode_text_items(dtype: DType, data: &[u8]) -> Vec<String> {
    if dtype.size == 0 {
        return Vec::new();
    }
    data.chunks_exact(dtype.size)
        .map(|item| match dtype.kind {
            ScalarKind::Unicode => {
                let mut points: Vec<u32> = item
                    .chunks_exact(4)
                    .map(|c| {
                        let b = [c[0], c[1], c[2], c[3]];
                        if dtype.big_endian {
                            u32::from_be_bytes(b)
                        } else {
                            u32::from_le_bytes(b)
                        }
                    })
                    .collect();
                while points.last() == Some(&0) {
                    points.pop();
                }
                points
                    .into_iter()
                    .map(|c| char::from_u32(c).unwrap_or(char::REPLACEMENT_CHARACTER))
                    .collect()
            }
            _ => {
                let end = item.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
                String::from_utf8_lossy(&item[..end]).into_owned()
            }
        })
        .collect()
}

/// IEEE half precision to `f32` (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        0x1f if frac == 0.0 => sign * f32::INFINITY,
        0x1f => f32::NAN,
        e => sign * (1.0 + frac / 1024.0) * 2f32.powi(e - 15),
    }
}

/// Number of elements of `shape` (checked).
pub(crate) fn element_count(shape: &[usize]) -> Res<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| PickleErrorKind::Malformed(format!("array shape {shape:?} overflows")))
}

/// True when C and Fortran order give the same element sequence (at most one axis > 1).
pub(crate) fn is_order_free(shape: &[usize]) -> bool {
    shape.iter().filter(|&&d| d > 1).count() <= 1
}

/// Streaming decoder of UTF-8 text whose code points are all below 256 into latin-1 bytes
/// (how Python 3 protocol 2 stores `bytes`).
#[derive(Default)]
pub(crate) struct Latin1FromUtf8 {
    pending: Option<u8>,
}

impl Latin1FromUtf8 {
    pub(crate) fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Res<()> {
        for &b in input {
            match self.pending.take() {
                Some(lead) => {
                    if b & 0xc0 != 0x80 {
                        return malformed("invalid UTF-8 in latin1 data");
                    }
                    out.push(((lead & 0x03) << 6) | (b & 0x3f));
                }
                None if b < 0x80 => out.push(b),
                None if b == 0xc2 || b == 0xc3 => self.pending = Some(b),
                None => return malformed("latin1 data holds a character beyond U+00FF"),
            }
        }
        Ok(())
    }

    pub(crate) fn finish(&self) -> Res<()> {
        match self.pending {
            Some(_) => malformed("latin1 data ends inside a UTF-8 sequence"),
            None => Ok(()),
        }
    }
}

/// Walks the C-order destination index of elements given in Fortran order.
pub(crate) struct FortranCursor {
    shape: Vec<usize>,
    strides: Vec<usize>,
    idx: Vec<usize>,
    dest: usize,
    started: bool,
}

impl FortranCursor {
    pub(crate) fn new(shape: &[usize]) -> Self {
        let mut strides = vec![1usize; shape.len()];
        for a in (0..shape.len().saturating_sub(1)).rev() {
            strides[a] = strides[a + 1].saturating_mul(shape[a + 1]);
        }
        FortranCursor {
            shape: shape.to_vec(),
            strides,
            idx: vec![0; shape.len()],
            dest: 0,
            started: false,
        }
    }

    /// The C-order index of the next element in Fortran order.
    pub(crate) fn next_dest(&mut self) -> usize {
        if !self.started {
            self.started = true;
            return self.dest;
        }
        for a in 0..self.shape.len() {
            self.idx[a] += 1;
            self.dest = self.dest.wrapping_add(self.strides[a]);
            if self.idx[a] < self.shape[a] {
                return self.dest;
            }
            self.dest = self
                .dest
                .wrapping_sub(self.strides[a].wrapping_mul(self.shape[a]));
            self.idx[a] = 0;
        }
        self.dest
    }
}

/// Converts a stream of raw element bytes (split anywhere) to `f32`.
pub(crate) struct Converter {
    dtype: DType,
    count: usize,
    out: Vec<f32>,
    scratch: Vec<f32>,
    fortran: Option<FortranCursor>,
    written: usize,
    carry: Vec<u8>,
    non_finite: u64,
    keep_non_finite: bool,
}

impl Converter {
    /// A converter for `count` elements of `dtype` stored in C (or Fortran) order;
    /// non-finite values are replaced by 0 unless `keep_non_finite` (they are counted
    /// either way).
    pub(crate) fn new(
        dtype: DType,
        shape: &[usize],
        fortran: bool,
        count: usize,
        keep_non_finite: bool,
    ) -> Self {
        let fortran = (fortran && !is_order_free(shape)).then(|| FortranCursor::new(shape));
        let out = if fortran.is_some() {
            vec![0.0; count]
        } else {
            Vec::with_capacity(count)
        };
        Converter {
            dtype,
            count,
            out,
            scratch: Vec::new(),
            fortran,
            written: 0,
            carry: Vec::with_capacity(8),
            non_finite: 0,
            keep_non_finite,
        }
    }

    pub(crate) fn feed(&mut self, mut bytes: &[u8]) -> Res<()> {
        let size = self.dtype.size;
        if !self.carry.is_empty() {
            let take = (size - self.carry.len()).min(bytes.len());
            let (head, rest) = bytes.split_at(take);
            self.carry.extend_from_slice(head);
            bytes = rest;
            if self.carry.len() == size {
                let item = std::mem::take(&mut self.carry);
                self.convert(&item)?;
                self.carry = item;
                self.carry.clear();
            }
        }
        let whole = bytes.len() / size * size;
        let (body, tail) = bytes.split_at(whole);
        self.convert(body)?;
        self.carry.extend_from_slice(tail);
        Ok(())
    }

    fn convert(&mut self, body: &[u8]) -> Res<()> {
        if body.is_empty() {
            return Ok(());
        }
        let n = body.len() / self.dtype.size;
        if self.written.saturating_add(n) > self.count {
            return malformed("array data longer than its shape");
        }
        let mut target = std::mem::take(&mut self.scratch);
        let direct = self.fortran.is_none();
        let dest = if direct { &mut self.out } else { &mut target };
        if !direct {
            dest.clear();
        }
        self.non_finite += decode_elements(self.dtype, body, dest, self.keep_non_finite);
        if let Some(cursor) = self.fortran.as_mut() {
            for &v in target.iter() {
                if let Some(slot) = self.out.get_mut(cursor.next_dest()) {
                    *slot = v;
                }
            }
        }
        self.scratch = target;
        self.written += n;
        Ok(())
    }

    pub(crate) fn finish(self) -> Res<ArrayData> {
        if !self.carry.is_empty() || self.written != self.count {
            return malformed(format!(
                "array data holds {} elements, its shape needs {}",
                self.written, self.count
            ));
        }
        Ok(ArrayData::Numeric {
            values: self.out,
            non_finite: self.non_finite,
        })
    }
}

/// Appends the elements of `body` (a whole number of items) to `out` as `f32`, replacing
/// non-finite results by 0 unless `keep`; returns how many were non-finite.
fn decode_elements(dtype: DType, body: &[u8], out: &mut Vec<f32>, keep: bool) -> u64 {
    use ScalarKind::*;
    let be = dtype.big_endian;
    match (dtype.kind, dtype.size) {
        (Float, 2) => decode_floats::<2>(body, out, keep, |b| {
            f16_to_f32(if be {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            })
        }),
        (Float, 8) => decode_floats::<8>(body, out, keep, |b| {
            (if be {
                f64::from_be_bytes(b)
            } else {
                f64::from_le_bytes(b)
            }) as f32
        }),
        (Float, 4) => decode_floats::<4>(body, out, keep, |b| {
            if be {
                f32::from_be_bytes(b)
            } else {
                f32::from_le_bytes(b)
            }
        }),
        (Int, 1) => decode_ints::<1>(body, out, |b| f32::from(b[0] as i8)),
        (Bool, 1) => decode_ints::<1>(body, out, |b| f32::from(u8::from(b[0] != 0))),
        (UInt, 1) => decode_ints::<1>(body, out, |b| f32::from(b[0])),
        (Int, 2) => decode_ints::<2>(body, out, |b| {
            f32::from(if be {
                i16::from_be_bytes(b)
            } else {
                i16::from_le_bytes(b)
            })
        }),
        (UInt, 2) => decode_ints::<2>(body, out, |b| {
            f32::from(if be {
                u16::from_be_bytes(b)
            } else {
                u16::from_le_bytes(b)
            })
        }),
        (Int, 4) => decode_ints::<4>(body, out, |b| {
            (if be {
                i32::from_be_bytes(b)
            } else {
                i32::from_le_bytes(b)
            }) as f32
        }),
        (UInt, 4) => decode_ints::<4>(body, out, |b| {
            (if be {
                u32::from_be_bytes(b)
            } else {
                u32::from_le_bytes(b)
            }) as f32
        }),
        (Int, 8) => decode_ints::<8>(body, out, |b| {
            (if be {
                i64::from_be_bytes(b)
            } else {
                i64::from_le_bytes(b)
            }) as f32
        }),
        (UInt, 8) => decode_ints::<8>(body, out, |b| {
            (if be {
                u64::from_be_bytes(b)
            } else {
                u64::from_le_bytes(b)
            }) as f32
        }),
        _ => 0,
    }
}

fn decode_floats<const N: usize>(
    body: &[u8],
    out: &mut Vec<f32>,
    keep: bool,
    f: impl Fn([u8; N]) -> f32,
) -> u64 {
    let mut bad = 0u64;
    out.extend(body.chunks_exact(N).map(|c| {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        let v = f(b);
        if v.is_finite() {
            v
        } else {
            bad += 1;
            if keep {
                v
            } else {
                0.0
            }
        }
    }));
    bad
}

fn decode_ints<const N: usize>(body: &[u8], out: &mut Vec<f32>, f: impl Fn([u8; N]) -> f32) -> u64 {
    out.extend(body.chunks_exact(N).map(|c| {
        let mut b = [0u8; N];
        b.copy_from_slice(c);
        f(b)
    }));
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dtype_specs_parse_and_name() {
        let d = DType::parse("f8").unwrap();
        assert_eq!(
            (d.kind, d.size, d.big_endian, d.name()),
            (ScalarKind::Float, 8, false, "float64".into())
        );
        assert!(DType::parse(">i2").unwrap().big_endian);
        assert_eq!(DType::parse("O8").unwrap().name(), "object");
        assert_eq!(DType::parse("b1").unwrap().name(), "bool");
        assert_eq!(DType::parse("u1").unwrap().name(), "uint8");
        let s10 = DType::parse("|S10").unwrap();
        assert_eq!(
            (s10.kind, s10.size, s10.name()),
            (ScalarKind::Bytes, 10, "|S10".into())
        );
        let u10 = DType::parse(">U10").unwrap();
        assert_eq!(
            (u10.kind, u10.size, u10.big_endian, u10.name()),
            (ScalarKind::Unicode, 40, true, ">U10".into())
        );
        assert_eq!(
            DType::parse("U").unwrap().size,
            0,
            "width from the BUILD state"
        );
        assert_eq!(DType::parse("<f2").unwrap().name(), "float16");
        for bad in [
            "",
            "f16",
            "i3",
            "c16",
            "M8",
            "V12",
            ">",
            "fx",
            "S+1",
            "U-2",
            "i99999999999999999999999",
            "S99999999999999999999999",
        ] {
            assert!(DType::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn text_items_drop_nul_padding_in_both_byte_orders() {
        let s = DType::parse("S3").unwrap();
        assert_eq!(decode_text_items(s, b"ab\0xyz\0\0\0"), ["ab", "xyz", ""]);
        let le: Vec<u8> = ['a', 'é', '\0', '😀', 'b', '\0']
            .iter()
            .flat_map(|&c| u32::from(c).to_le_bytes())
            .collect();
        let be: Vec<u8> = le
            .chunks(4)
            .flat_map(|c| [c[3], c[2], c[1], c[0]])
            .collect();
        let u = DType::parse("<U3").unwrap();
        assert_eq!(decode_text_items(u, &le), ["aé", "😀b"]);
        let u = DType::parse(">U3").unwrap();
        assert_eq!(decode_text_items(u, &be), ["aé", "😀b"]);
        // An invalid code point is replaced, not a panic.
        assert_eq!(
            decode_text_items(DType::parse("<U1").unwrap(), &[0xff; 4]),
            ["\u{fffd}"]
        );
    }

    #[test]
    fn half_floats_convert_exactly() {
        for (h, want) in [
            (0x3c00u16, 1.0f32),
            (0xc000, -2.0),
            (0x3555, 0.333_251_95),
            (0x0001, 5.960_464_5e-8),
            (0x7bff, 65504.0),
            (0x0000, 0.0),
        ] {
            assert_eq!(f16_to_f32(h), want, "{h:#x}");
        }
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn latin1_from_utf8_decodes_and_refuses_wide_characters() {
        let raw: Vec<u8> = (0..=255).collect();
        let text: String = raw.iter().map(|&b| char::from(b)).collect();
        for size in [1, 2, 3, 1000] {
            let mut d = Latin1FromUtf8::default();
            let mut out = Vec::new();
            for chunk in text.as_bytes().chunks(size) {
                d.decode(chunk, &mut out).unwrap();
            }
            d.finish().unwrap();
            assert_eq!(out, raw);
        }
        let mut out = Vec::new();
        assert!(Latin1FromUtf8::default()
            .decode("€".as_bytes(), &mut out)
            .is_err());
        assert!(Latin1FromUtf8::default()
            .decode(&[0xc3, 0x41], &mut out)
            .is_err());
        let mut d = Latin1FromUtf8::default();
        d.decode(&[0xc3], &mut out).unwrap();
        assert!(d.finish().is_err());
    }

    #[test]
    fn fortran_cursor_walks_c_indices_in_column_major_order() {
        let mut c = FortranCursor::new(&[2, 3]);
        let got: Vec<usize> = (0..6).map(|_| c.next_dest()).collect();
        assert_eq!(got, [0, 3, 1, 4, 2, 5]);
        let mut c = FortranCursor::new(&[2, 2, 2]);
        let got: Vec<usize> = (0..8).map(|_| c.next_dest()).collect();
        assert_eq!(got, [0, 4, 2, 6, 1, 5, 3, 7]);
        assert!(is_order_free(&[1, 5, 1]));
        assert!(!is_order_free(&[2, 5]));
    }

    #[test]
    fn converter_accepts_elements_split_anywhere() {
        let d = DType::parse("<f8").unwrap();
        let values = [1.0f64, -2.5, f64::NAN, 1e300];
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        for size in [1, 3, 7, 8, 9, 32] {
            let mut c = Converter::new(d, &[4], false, 4, false);
            for chunk in bytes.chunks(size) {
                c.feed(chunk).unwrap();
            }
            let ArrayData::Numeric { values, non_finite } = c.finish().unwrap() else {
                panic!()
            };
            assert_eq!((values, non_finite), (vec![1.0, -2.5, 0.0, 0.0], 2));
        }
        let mut c = Converter::new(d, &[1], false, 1, false);
        c.feed(&bytes[..12]).unwrap_or(());
        assert!(c.finish().is_err(), "partial element");
    }
}
