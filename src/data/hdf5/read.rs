//! Reading a data set's elements: compact, contiguous and chunked storage (version-1
//! B-tree of type 1, deflate and shuffle filters) and variable-length strings in global
//! heap collections. Every output buffer is allocated only once the chunks that justify it
//! were found and checked.

use super::{err, Cur, DatasetInfo, Dtype, Hdf5, Hdf5Error, Layout, ReadAt, Result};
use super::{MAX_BTREE_DEPTH, MAX_INFLATE_RATIO};

impl<R: ReadAt> Hdf5<R> {
    /// The stored bytes of every element of `ds` in C order (`len * elem_size` bytes).
    pub fn read_raw(&self, ds: &DatasetInfo) -> Result<Vec<u8>> {
        let total = ds
            .shape
            .iter()
            .try_fold(ds.elem_size as u64, |a, &d| a.checked_mul(d))
            .filter(|&t| t <= self.len.saturating_mul(MAX_INFLATE_RATIO))
            .ok_or_else(|| Hdf5Error {
                offset: ds.at,
                problem: format!(
                    "data set shape {:?} is larger than the file could hold",
                    ds.shape
                ),
            })?;
        match &ds.layout {
            Layout::Compact(d) => match d.get(..total as usize) {
                Some(s) => Ok(s.to_vec()),
                None => err(
                    ds.at,
                    format!("compact data holds {} bytes, shape needs {total}", d.len()),
                ),
            },
            Layout::Contiguous { addr, size } => {
                if total == 0 {
                    return Ok(Vec::new());
                }
                let Some(addr) = addr else {
                    return err(ds.at, "data set has no storage allocated");
                };
                if *size < total {
                    return err(
                        ds.at,
                        format!("contiguous storage of {size} bytes, shape needs {total}"),
                    );
                }
                self.bytes(*addr, total, "contiguous data")
            }
            Layout::Chunked { btree, chunk } => self.read_chunked(ds, *btree, chunk, total),
        }
    }

    fn read_chunked(
        &self,
        ds: &DatasetInfo,
        btree: Option<u64>,
        chunk: &[u64],
        total: u64,
    ) -> Result<Vec<u8>> {
        let rank = ds.shape.len();
        if chunk.len() != rank + 1 || chunk[rank] != ds.elem_size as u64 {
            return err(
                ds.at,
                format!("chunk dimensions {chunk:?} do not fit shape {:?}", ds.shape),
            );
        }
        if total == 0 {
            return Ok(Vec::new());
        }
        let Some(btree) = btree else {
            return err(ds.at, "chunked data set has no chunks allocated");
        };
        let Some(chunk_bytes) = chunk.iter().try_fold(1u64, |a, &c| a.checked_mul(c)) else {
            return err(ds.at, format!("chunk dimensions {chunk:?} overflow"));
        };
        let expected = ds
            .shape
            .iter()
            .zip(chunk)
            .try_fold(1u64, |a, (&d, &c)| a.checked_mul(d.div_ceil(c)))
            .unwrap_or(u64::MAX);
        let mut entries = Vec::new();
        self.chunk_node(btree, rank, 0, &mut entries)?;
        if entries.len() as u64 != expected {
            return err(
                ds.at,
                format!(
                    "{} chunks stored, the shape needs {expected}",
                    entries.len()
                ),
            );
        }
        for e in &entries {
            let bound = if ds.filters.is_empty() {
                e.size
            } else {
                e.size
                    .saturating_mul(MAX_INFLATE_RATIO)
                    .saturating_add(1024)
            };
            if chunk_bytes > bound {
                return err(
                    e.addr,
                    format!(
                        "chunk of {} stored bytes cannot hold {chunk_bytes} bytes",
                        e.size
                    ),
                );
            }
        }
        // Every chunk is present and justifies its bytes, so the output is justified.
        let mut out = vec![0u8; total as usize];
        let mut seen = std::collections::HashSet::new();
        for e in &entries {
            if e.offsets.iter().zip(chunk).any(|(&o, &c)| o % c != 0)
                || e.offsets.iter().zip(&ds.shape).any(|(&o, &d)| o >= d)
                || !seen.insert(e.offsets.clone())
            {
                return err(
                    e.addr,
                    format!("chunk offsets {:?} invalid or repeated", e.offsets),
                );
            }
            let raw = self.bytes(e.addr, e.size, "chunk")?;
            let data = self.unfilter(ds, raw, e.mask, chunk_bytes, e.addr)?;
            copy_chunk(
                &mut out,
                &data,
                &ds.shape,
                &chunk[..rank],
                &e.offsets,
                ds.elem_size,
            );
        }
        Ok(out)
    }

    fn chunk_node(
        &self,
        at: u64,
        rank: usize,
        depth: u32,
        out: &mut Vec<ChunkEntry>,
    ) -> Result<()> {
        if depth > MAX_BTREE_DEPTH {
            return err(at, "chunk B-tree too deep");
        }
        let (level, used) = self.btree_header(at, 1)?;
        let key = 8 + 8 * (rank as u64 + 1);
        let body = 8 + 2 * self.so as u64;
        let n = (used as u64) * (key + self.so as u64) + key;
        let b = self.bytes(at + body, n, "chunk B-tree node")?;
        let mut c = Cur::new(&b, at, "chunk B-tree node");
        for _ in 0..used {
            let size = u64::from(c.u32()?);
            let mask = c.u32()?;
            let offsets = (0..rank).map(|_| c.uint(8)).collect::<Result<Vec<_>>>()?;
            c.skip(8)?;
            let raw = c.uint(self.so)?;
            let child = self.need_addr(raw, at, "chunk B-tree child")?;
            if level > 0 {
                self.chunk_node(child, rank, depth + 1, out)?;
            } else {
                self.spend(child)?;
                out.push(ChunkEntry {
                    addr: child,
                    size,
                    mask,
                    offsets,
                });
            }
        }
        Ok(())
    }

    fn unfilter(
        &self,
        ds: &DatasetInfo,
        mut data: Vec<u8>,
        mask: u32,
        want: u64,
        at: u64,
    ) -> Result<Vec<u8>> {
        for (i, (id, client)) in ds.filters.iter().enumerate().rev() {
            if i < 32 && mask & (1 << i) != 0 {
                continue;
            }
            data = match id {
                1 => miniz_oxide::inflate::decompress_to_vec_zlib_with_limit(&data, want as usize)
                    .map_err(|e| Hdf5Error {
                        offset: at,
                        problem: format!("deflate chunk cannot be decompressed: {:?}", e.status),
                    })?,
                2 => {
                    let size = client.first().map_or(ds.elem_size, |&s| s as usize).max(1);
                    unshuffle(&data, size)
                }
                _ => {
                    return err(
                        at,
                        format!(
                            "filter {} is not supported (only deflate and shuffle)",
                            filter_name(*id)
                        ),
                    )
                }
            };
        }
        if data.len() as u64 != want {
            return err(
                at,
                format!(
                    "chunk holds {} bytes after filters, expected {want}",
                    data.len()
                ),
            );
        }
        Ok(data)
    }

    /// The strings of a variable-length string data set, in C order.
    pub fn read_vlen_strings(&self, ds: &DatasetInfo) -> Result<Vec<String>> {
        if ds.dtype != Dtype::VlenString {
            return err(ds.at, "not a variable-length string data set");
        }
        let raw = self.read_raw(ds)?;
        let step = 4 + self.so + 4;
        if ds.elem_size != step {
            return err(
                ds.at,
                format!(
                    "variable-length element of {} bytes, expected {step}",
                    ds.elem_size
                ),
            );
        }
        raw.chunks_exact(step)
            .map(|e| {
                let mut c = Cur::new(e, ds.at, "variable-length string");
                let n = u64::from(c.u32()?);
                let coll = c.uint(self.so)?;
                let idx = c.u32()?;
                if n == 0 {
                    return Ok(String::new());
                }
                let coll = self.need_addr(coll, ds.at, "global heap collection")?;
                let b = self.global_heap_object(coll, idx)?;
                match b.get(..n as usize) {
                    Some(s) => Ok(String::from_utf8_lossy(s).into_owned()),
                    None => err(
                        coll,
                        format!(
                            "global heap object {idx} holds {} bytes, string needs {n}",
                            b.len()
                        ),
                    ),
                }
            })
            .collect()
    }

    fn global_heap_object(&self, at: u64, want: u32) -> Result<Vec<u8>> {
        self.spend(at)?;
        let h = self.bytes(at, 8 + self.sl as u64, "global heap collection")?;
        if &h[..4] != b"GCOL" {
            return err(at, "global heap collection signature missing");
        }
        let size = Cur::new(&h[8..], at, "global heap collection").uint(self.sl)?;
        let coll = self.bytes(at, size, "global heap collection")?;
        let mut c = Cur::new(&coll, at, "global heap object");
        c.skip(8 + self.sl)?;
        while c.pos + 8 + self.sl <= coll.len() {
            let idx = c.u16()?;
            c.skip(6)?;
            let n = c.uint(self.sl)?;
            if idx == 0 {
                break;
            }
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            let data = c.take(n)?;
            if u32::from(idx) == want {
                return Ok(data.to_vec());
            }
            c.skip(n.next_multiple_of(8) - n).ok();
        }
        err(at, format!("global heap object {want} not found"))
    }
}

struct ChunkEntry {
    addr: u64,
    size: u64,
    mask: u32,
    offsets: Vec<u64>,
}

fn filter_name(id: u16) -> String {
    match id {
        3 => "fletcher32 (3)".into(),
        4 => "szip (4)".into(),
        5 => "nbit (5)".into(),
        6 => "scaleoffset (6)".into(),
        32000 => "lzf (32000)".into(),
        id => format!("{id}"),
    }
}

fn unshuffle(data: &[u8], size: usize) -> Vec<u8> {
    let n = data.len() / size;
    let mut out = data.to_vec();
    for b in 0..size {
        for i in 0..n {
            out[i * size + b] = data[b * n + i];
        }
    }
    out
}

/// Copies the in-bounds part of a (possibly partial edge) chunk into the C-order output.
fn copy_chunk(
    out: &mut [u8],
    chunk: &[u8],
    shape: &[u64],
    cdims: &[u64],
    offs: &[u64],
    elem: usize,
) {
    let rank = shape.len();
    let last = rank - 1;
    let run = (cdims[last].min(shape[last] - offs[last])) as usize * elem;
    let rows: u64 = cdims[..last].iter().product();
    let mut idx = vec![0u64; last];
    for _ in 0..rows {
        let in_bounds = (0..last).all(|k| offs[k] + idx[k] < shape[k]);
        if in_bounds {
            let (mut src, mut dst) = (0u64, 0u64);
            for k in 0..rank {
                let i = if k < last { idx[k] } else { 0 };
                src = src * cdims[k] + i;
                dst = dst * shape[k] + offs[k] + i;
            }
            let (s, d) = (src as usize * elem, dst as usize * elem);
            out[d..d + run].copy_from_slice(&chunk[s..s + run]);
        }
        for k in (0..last).rev() {
            idx[k] += 1;
            if idx[k] < cdims[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshuffle_inverts_byte_planes() {
        // Two 2-byte elements [a0 a1][b0 b1] shuffled as [a0 b0][a1 b1].
        assert_eq!(unshuffle(&[1, 3, 2, 4], 2), vec![1, 2, 3, 4]);
    }

    #[test]
    fn partial_edge_chunk_is_clipped() {
        // Shape [3, 3] u8, chunk [2, 2] at offset (2, 2): only element (2, 2) is inside.
        let mut out = vec![0u8; 9];
        copy_chunk(&mut out, &[7, 8, 9, 10], &[3, 3], &[2, 2], &[2, 2], 1);
        assert_eq!(out, vec![0, 0, 0, 0, 0, 0, 0, 0, 7]);
        copy_chunk(&mut out, &[1, 2, 3, 4], &[3, 3], &[2, 2], &[0, 0], 1);
        assert_eq!(out, vec![1, 2, 0, 3, 4, 0, 0, 0, 7]);
    }

    #[test]
    fn not_hdf5_and_empty_are_errors() {
        let e = Hdf5::open(&b"hello world"[..]).err().unwrap();
        assert!(e.problem.contains("not an HDF5 file"), "{e}");
        assert!(Hdf5::open(&b""[..]).is_err());
    }
}
