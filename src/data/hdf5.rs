//! A minimal, bounded reader for the subset of HDF5 that CMU-MultimodalSDK computational
//! sequences (`.csd`) use, in pure Rust (no libhdf5):
//!
//! * superblock version 0 or 1 (sizes of offsets and lengths 2, 4 or 8);
//! * "old-style" groups: symbol-table messages, version-1 B-trees (type 0), local heaps,
//!   symbol-table nodes;
//! * version-1 object headers with continuation blocks;
//! * dataspace (v1, v2), datatype (little-endian IEEE floats, integers, fixed-length and
//!   variable-length strings), layout v3 (compact, contiguous, chunked with a version-1
//!   B-tree of type 1) and filter-pipeline (v1, v2) messages;
//! * filters: deflate (via `miniz_oxide`) and shuffle;
//! * variable-length strings in global heap collections.
//!
//! Everything else is refused with an error naming it. Every offset and size read from the
//! file is checked against the file length before use, every buffer is allocated only after
//! the bytes that justify it were found (a chunked data set's output is bounded by its
//! chunks' stored sizes times deflate's maximal ratio), and the number of structures visited
//! is bounded by the file size, so no input (a truncated, corrupted or cyclic file) panics,
//! loops or allocates without bound.

use std::cell::Cell;
use std::fmt;

mod read;

/// An HDF5 structure problem: the byte offset where it was found and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hdf5Error {
    /// Byte offset in the file of the structure being read.
    pub offset: u64,
    /// What is wrong.
    pub problem: String,
}

impl fmt::Display for Hdf5Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "HDF5 structure at byte {}: {}",
            self.offset, self.problem
        )
    }
}

impl std::error::Error for Hdf5Error {}

type Result<T> = std::result::Result<T, Hdf5Error>;

fn err<T>(offset: u64, problem: impl Into<String>) -> Result<T> {
    Err(Hdf5Error {
        offset,
        problem: problem.into(),
    })
}

/// Random access to the bytes of a file: a slice in memory or an open file.
pub trait ReadAt {
    /// Total length in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` with the bytes at `offset` (the caller checked the range).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()>;
}

impl ReadAt for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// An open file with its length taken once at open.
pub struct FileSource {
    file: std::fs::File,
    len: u64,
}

impl FileSource {
    /// Wraps an open file.
    pub fn new(file: std::fs::File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(FileSource { file, len })
    }
}

impl ReadAt for FileSource {
    fn size(&self) -> u64 {
        self.len
    }
    #[cfg(unix)]
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    #[cfg(windows)]
    fn read_exact_at(&self, mut buf: &mut [u8], mut offset: u64) -> std::io::Result<()> {
        while !buf.is_empty() {
            let n = std::os::windows::fs::FileExt::seek_read(&self.file, buf, offset)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf = &mut buf[n..];
            offset += n as u64;
        }
        Ok(())
    }
}

/// Element type of a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// Little-endian IEEE float of 4 or 8 bytes.
    Float(usize),
    /// Little-endian integer of 1, 2, 4 or 8 bytes.
    Int {
        /// Size in bytes.
        size: usize,
        /// Two's complement signed.
        signed: bool,
    },
    /// Fixed-length byte string of this many bytes (null-padded or null-terminated).
    FixedString(usize),
    /// Variable-length string (global heap).
    VlenString,
}

/// Where a data set's elements are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    Compact(Vec<u8>),
    Contiguous { addr: Option<u64>, size: u64 },
    Chunked { btree: Option<u64>, chunk: Vec<u64> },
}

/// A data set's shape, type and storage, as its object header declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetInfo {
    /// Dimensions (empty for a scalar).
    pub shape: Vec<u64>,
    /// Element type.
    pub dtype: Dtype,
    /// Size of one stored element in bytes.
    pub elem_size: usize,
    layout: Layout,
    filters: Vec<(u16, Vec<u32>)>,
    at: u64,
}

impl DatasetInfo {
    /// Number of elements (product of the dimensions).
    pub fn len(&self) -> u64 {
        self.shape.iter().product()
    }
    /// True when the data set has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an object is: a group (with its entries' B-tree and heap) or a data set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// An old-style group.
    Group {
        /// Address of its version-1 B-tree.
        btree: u64,
        /// Address of its local heap.
        heap: u64,
    },
    /// A data set.
    Dataset(DatasetInfo),
}

const SIGNATURE: [u8; 8] = [0x89, b'H', b'D', b'F', b'\r', b'\n', 0x1a, b'\n'];
/// Deflate cannot expand more than ~1032:1; a chunk claiming more is corrupt.
const MAX_INFLATE_RATIO: u64 = 1100;
const MAX_RANK: usize = 32;
const MAX_BTREE_DEPTH: u32 = 64;

/// A byte cursor over a structure read from the file, for bounded little-endian decoding.
struct Cur<'a> {
    b: &'a [u8],
    pos: usize,
    at: u64,
    what: &'static str,
}

impl<'a> Cur<'a> {
    fn new(b: &'a [u8], at: u64, what: &'static str) -> Self {
        Cur {
            b,
            pos: 0,
            at,
            what,
        }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        match self
            .pos
            .checked_add(n)
            .and_then(|e| self.b.get(self.pos..e))
        {
            Some(s) => {
                self.pos += n;
                Ok(s)
            }
            None => err(self.at, format!("{} truncated", self.what)),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(self.uint(2)? as u16)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(self.uint(4)? as u32)
    }
    fn uint(&mut self, n: usize) -> Result<u64> {
        let s = self.take(n)?;
        Ok(s.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    }
    fn skip(&mut self, n: usize) -> Result<()> {
        self.take(n).map(|_| ())
    }
}

/// An HDF5 file opened for reading the `.csd` subset (see the module docs).
pub struct Hdf5<R: ReadAt> {
    src: R,
    len: u64,
    base: u64,
    so: usize,
    sl: usize,
    root: u64,
    budget: Cell<u64>,
}

impl<R: ReadAt> Hdf5<R> {
    /// Reads the superblock of `src`.
    pub fn open(src: R) -> Result<Self> {
        let len = src.size();
        let mut h = Hdf5 {
            src,
            len,
            base: 0,
            so: 8,
            sl: 8,
            root: 0,
            // Every structure visited costs one unit; a valid file cannot hold more
            // structures than it has 16-byte blocks.
            budget: Cell::new(len / 16 + 64),
        };
        let mut at = 0u64;
        loop {
            if at.checked_add(8).is_none_or(|e| e > len) {
                return err(
                    0,
                    "not an HDF5 file (no signature at byte 0, 512, 1024, ...)",
                );
            }
            if h.bytes(at, 8, "signature")? == SIGNATURE {
                break;
            }
            at = if at == 0 { 512 } else { at * 2 };
        }
        let head = h.bytes(at, 24, "superblock")?;
        let mut c = Cur::new(&head, at, "superblock");
        c.skip(8)?;
        let version = c.u8()?;
        if version > 1 {
            return err(
                at,
                format!(
                    "superblock version {version} is not supported (only 0 and 1: files \
                     written with h5py's default libver \"earliest\", as the SDK does)"
                ),
            );
        }
        c.skip(4)?;
        h.so = usize::from(c.u8()?);
        h.sl = usize::from(c.u8()?);
        for (name, v) in [("offsets", h.so), ("lengths", h.sl)] {
            if !matches!(v, 2 | 4 | 8) {
                return err(at, format!("size of {name} {v} is not 2, 4 or 8"));
            }
        }
        let fixed = if version == 0 { 24 } else { 28 };
        // Base, free-space, end-of-file and driver addresses, then the root's symbol-table
        // entry (link name offset, object header address, cache type, reserved, scratch).
        let rest = 4 * h.so + 2 * h.so + 8 + 16;
        let sb = h.bytes(at, (fixed + rest) as u64, "superblock")?;
        let mut c = Cur::new(&sb, at, "superblock");
        c.skip(fixed)?;
        h.base = c.uint(h.so)?;
        if h.base > len {
            return err(at, format!("base address {} beyond the file", h.base));
        }
        c.skip(h.so)?;
        let eof = c.uint(h.so)?;
        if !h.undefined(eof) && h.base.checked_add(eof).is_none_or(|e| e > len) {
            return err(
                at,
                format!("the superblock says the file ends at byte {eof}, it has {len} bytes: truncated"),
            );
        }
        c.skip(h.so)?;
        c.skip(h.so)?;
        let root = c.uint(h.so)?;
        h.root = h.addr(root).ok_or_else(|| Hdf5Error {
            offset: at,
            problem: "undefined root group address".into(),
        })?;
        Ok(h)
    }

    /// Address of the root group's object header.
    pub fn root(&self) -> u64 {
        self.root
    }

    /// Length of the file in bytes.
    pub fn file_len(&self) -> u64 {
        self.len
    }

    fn undefined(&self, raw: u64) -> bool {
        self.so == 8 && raw == u64::MAX || self.so < 8 && raw == (1u64 << (8 * self.so)) - 1
    }

    /// Absolute address of a relative one, `None` when undefined or beyond the file.
    fn addr(&self, raw: u64) -> Option<u64> {
        if self.undefined(raw) {
            return None;
        }
        self.base.checked_add(raw).filter(|&a| a < self.len)
    }

    fn need_addr(&self, raw: u64, at: u64, what: &str) -> Result<u64> {
        if self.undefined(raw) {
            return err(at, format!("{what}: undefined address"));
        }
        match self.addr(raw) {
            Some(a) => Ok(a),
            None => err(
                at,
                format!(
                    "{what}: address {raw} beyond the end of the file ({} bytes)",
                    self.len
                ),
            ),
        }
    }

    fn spend(&self, at: u64) -> Result<()> {
        let b = self.budget.get();
        if b == 0 {
            return err(
                at,
                "too many structures for the file size (a cycle or corrupt links)",
            );
        }
        self.budget.set(b - 1);
        Ok(())
    }

    /// Reads `n` bytes at `at`, checked against the file length.
    fn bytes(&self, at: u64, n: u64, what: &str) -> Result<Vec<u8>> {
        if at.checked_add(n).is_none_or(|e| e > self.len) {
            return err(
                at,
                format!("{what}: {n} bytes at byte {at} run past the end of the file ({} bytes): truncated?", self.len),
            );
        }
        let mut buf = vec![0u8; n as usize];
        self.src
            .read_exact_at(&mut buf, at)
            .map_err(|e| Hdf5Error {
                offset: at,
                problem: format!("{what}: read failed: {e}"),
            })?;
        Ok(buf)
    }

    /// The messages (type, data, offset) of the version-1 object header at `at`.
    fn messages(&self, at: u64) -> Result<Vec<(u16, Vec<u8>, u64)>> {
        const NEEDED: [u16; 6] = [0x01, 0x03, 0x08, 0x0B, 0x10, 0x11];
        self.spend(at)?;
        let head = self.bytes(at, 16, "object header")?;
        let mut c = Cur::new(&head, at, "object header");
        let version = c.u8()?;
        if version != 1 {
            let what = if head.starts_with(b"OHDR") {
                "a version-2 object header (file written with libver \"latest\")".to_string()
            } else {
                format!("object header version {version}")
            };
            return err(at, format!("{what} is not supported (only version 1)"));
        }
        c.skip(1)?;
        let count = usize::from(c.u16()?);
        c.skip(4)?;
        let size = u64::from(c.u32()?);
        let mut blocks = vec![(at + 16, size)];
        let mut out = Vec::new();
        let mut i = 0;
        while i < blocks.len() && out.len() < count {
            let (b_at, b_len) = blocks[i];
            i += 1;
            self.spend(b_at)?;
            let block = self.bytes(b_at, b_len, "object header messages")?;
            let mut c = Cur::new(&block, b_at, "object header message");
            while c.pos + 8 <= block.len() && out.len() < count {
                let m_at = b_at + c.pos as u64;
                let mtype = c.u16()?;
                let msize = usize::from(c.u16()?);
                let flags = c.u8()?;
                c.skip(3)?;
                let data = c.take(msize)?.to_vec();
                if flags & 0x02 != 0 && NEEDED.contains(&mtype) {
                    return err(
                        m_at,
                        format!("shared (committed) message of type {mtype} is not supported"),
                    );
                }
                if mtype == 0x10 {
                    let mut d = Cur::new(&data, m_at, "continuation message");
                    let raw = d.uint(self.so)?;
                    let len = d.uint(self.sl)?;
                    let addr = self.need_addr(raw, m_at, "continuation block")?;
                    blocks.push((addr, len));
                }
                out.push((mtype, data, m_at));
            }
        }
        Ok(out)
    }

    /// What the object at `at` is (a group or a data set).
    pub fn object(&self, at: u64) -> Result<Object> {
        let msgs = self.messages(at)?;
        let find = |t: u16| msgs.iter().find(|m| m.0 == t);
        if let Some((_, d, m_at)) = find(0x11) {
            let mut c = Cur::new(d, *m_at, "symbol table message");
            let b = c.uint(self.so)?;
            let h = c.uint(self.so)?;
            return Ok(Object::Group {
                btree: self.need_addr(b, *m_at, "group B-tree")?,
                heap: self.need_addr(h, *m_at, "group local heap")?,
            });
        }
        if find(0x06).is_some() || find(0x02).is_some() {
            return err(
                at,
                "a new-style group (link messages) is not supported (only symbol-table groups)",
            );
        }
        let (Some(space), Some(dtype), Some(layout)) = (find(0x01), find(0x03), find(0x08)) else {
            return err(at, "object is neither a group (no symbol table) nor a data set (no dataspace, datatype or layout)");
        };
        let shape = self.dataspace(&space.1, space.2)?;
        let (dtype, elem_size) = datatype(&dtype.1, dtype.2)?;
        let layout = self.layout(&layout.1, layout.2)?;
        let filters = match find(0x0B) {
            Some((_, d, m_at)) => filters(d, *m_at)?,
            None => Vec::new(),
        };
        Ok(Object::Dataset(DatasetInfo {
            shape,
            dtype,
            elem_size,
            layout,
            filters,
            at,
        }))
    }

    fn dataspace(&self, d: &[u8], at: u64) -> Result<Vec<u64>> {
        let mut c = Cur::new(d, at, "dataspace message");
        let version = c.u8()?;
        let rank = usize::from(c.u8()?);
        let _flags = c.u8()?;
        match version {
            1 => c.skip(5)?,
            2 => {
                let kind = c.u8()?;
                if kind == 2 {
                    return Ok(vec![0]); // null dataspace: no elements
                }
            }
            v => return err(at, format!("dataspace version {v} is not supported")),
        }
        if rank > MAX_RANK {
            return err(at, format!("rank {rank} is too large"));
        }
        (0..rank).map(|_| c.uint(self.sl)).collect()
    }

    fn layout(&self, d: &[u8], at: u64) -> Result<Layout> {
        let mut c = Cur::new(d, at, "layout message");
        let version = c.u8()?;
        if version != 3 {
            return err(
                at,
                format!("layout message version {version} is not supported (only 3)"),
            );
        }
        match c.u8()? {
            0 => {
                let n = usize::from(c.u16()?);
                Ok(Layout::Compact(c.take(n)?.to_vec()))
            }
            1 => {
                let raw = c.uint(self.so)?;
                let size = c.uint(self.sl)?;
                let addr = if self.undefined(raw) {
                    None
                } else {
                    Some(self.need_addr(raw, at, "contiguous data")?)
                };
                Ok(Layout::Contiguous { addr, size })
            }
            2 => {
                let dims = usize::from(c.u8()?);
                if !(2..=MAX_RANK + 1).contains(&dims) {
                    return err(at, format!("chunked layout with {dims} dimensions"));
                }
                let raw = c.uint(self.so)?;
                let btree = if self.undefined(raw) {
                    None
                } else {
                    Some(self.need_addr(raw, at, "chunk B-tree")?)
                };
                let chunk = (0..dims)
                    .map(|_| c.u32().map(u64::from))
                    .collect::<Result<Vec<_>>>()?;
                if chunk.contains(&0) {
                    return err(at, "chunk dimension 0");
                }
                Ok(Layout::Chunked { btree, chunk })
            }
            k => err(at, format!("layout class {k} is not supported")),
        }
    }

    /// Entries (name, object header address) of the group at `at`, in the file's order
    /// (HDF5's byte-wise name order).
    pub fn group_entries(&self, at: u64) -> Result<Vec<(String, u64)>> {
        let Object::Group { btree, heap } = self.object(at)? else {
            return err(at, "expected a group, found a data set");
        };
        // Local heap: "HEAP", version, reserved, data size, free list offset, data address.
        self.spend(heap)?;
        let h = self.bytes(heap, (8 + 2 * self.sl + self.so) as u64, "local heap")?;
        let mut c = Cur::new(&h, heap, "local heap");
        if c.take(4)? != b"HEAP" {
            return err(heap, "local heap signature missing");
        }
        c.skip(4)?;
        let size = c.uint(self.sl)?;
        c.skip(self.sl)?;
        let data_raw = c.uint(self.so)?;
        let data_at = self.need_addr(data_raw, heap, "local heap data")?;
        let names = self.bytes(data_at, size, "local heap data")?;
        let mut out = Vec::new();
        self.group_node(btree, &names, data_at, 0, &mut out)?;
        Ok(out)
    }

    fn btree_header(&self, at: u64, want_type: u8) -> Result<(u8, usize)> {
        self.spend(at)?;
        let h = self.bytes(at, 8, "B-tree node")?;
        let mut c = Cur::new(&h, at, "B-tree node");
        if c.take(4)? != b"TREE" {
            return err(at, "B-tree node signature missing");
        }
        let t = c.u8()?;
        if t != want_type {
            return err(at, format!("B-tree node type {t}, expected {want_type}"));
        }
        let level = c.u8()?;
        Ok((level, usize::from(c.u16()?)))
    }

    fn group_node(
        &self,
        at: u64,
        names: &[u8],
        names_at: u64,
        depth: u32,
        out: &mut Vec<(String, u64)>,
    ) -> Result<()> {
        if depth > MAX_BTREE_DEPTH {
            return err(at, "group B-tree too deep");
        }
        let (level, used) = self.btree_header(at, 0)?;
        let body = 8 + 2 * self.so as u64;
        let n = (used as u64) * (self.sl + self.so) as u64 + self.sl as u64;
        let b = self.bytes(at + body, n, "group B-tree node")?;
        let mut c = Cur::new(&b, at, "group B-tree node");
        for _ in 0..used {
            c.skip(self.sl)?;
            let raw = c.uint(self.so)?;
            let child = self.need_addr(raw, at, "group B-tree child")?;
            if level > 0 {
                self.group_node(child, names, names_at, depth + 1, out)?;
            } else {
                self.symbol_node(child, names, names_at, out)?;
            }
        }
        Ok(())
    }

    fn symbol_node(
        &self,
        at: u64,
        names: &[u8],
        names_at: u64,
        out: &mut Vec<(String, u64)>,
    ) -> Result<()> {
        self.spend(at)?;
        let h = self.bytes(at, 8, "symbol table node")?;
        if &h[..4] != b"SNOD" {
            return err(at, "symbol table node signature missing");
        }
        let count = u64::from(u16::from_le_bytes([h[6], h[7]]));
        let entry = (2 * self.so + 24) as u64;
        let b = self.bytes(at + 8, count * entry, "symbol table node")?;
        let mut c = Cur::new(&b, at, "symbol table entry");
        for _ in 0..count {
            let name_off = c.uint(self.so)?;
            let raw = c.uint(self.so)?;
            c.skip(24)?;
            let obj = self.need_addr(raw, at, "symbol table entry")?;
            let start = usize::try_from(name_off).ok().filter(|&s| s < names.len());
            let Some(start) = start else {
                return err(
                    names_at,
                    format!("link name offset {name_off} beyond the local heap"),
                );
            };
            let Some(end) = names[start..].iter().position(|&x| x == 0) else {
                return err(names_at, "link name not terminated in the local heap");
            };
            let name = String::from_utf8_lossy(&names[start..start + end]).into_owned();
            out.push((name, obj));
        }
        Ok(())
    }

    /// Address of `name` in the group at `group`, if present.
    pub fn child(&self, group: u64, name: &str) -> Result<Option<u64>> {
        Ok(self
            .group_entries(group)?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, a)| a))
    }

    /// The data set at `at`.
    pub fn dataset(&self, at: u64) -> Result<DatasetInfo> {
        match self.object(at)? {
            Object::Dataset(d) => Ok(d),
            Object::Group { .. } => err(at, "expected a data set, found a group"),
        }
    }
}

/// Parses a datatype message: the element type and its stored size.
fn datatype(d: &[u8], at: u64) -> Result<(Dtype, usize)> {
    let mut c = Cur::new(d, at, "datatype message");
    let cv = c.u8()?;
    let bits = [c.u8()?, c.u8()?, c.u8()?];
    let size = c.u32()? as usize;
    let class = cv & 0x0f;
    let little = bits[0] & 1 == 0;
    let t = match class {
        0 if little && matches!(size, 1 | 2 | 4 | 8) => Dtype::Int {
            size,
            signed: bits[0] & 0x08 != 0,
        },
        1 if little && bits[0] & 0x40 == 0 && matches!(size, 4 | 8) => {
            let bit_off = c.u16()?;
            let prec = c.u16()?;
            let (eloc, esize, mloc, msize) = (c.u8()?, c.u8()?, c.u8()?, c.u8()?);
            let bias = c.u32()?;
            let ieee = if size == 4 {
                (32, 23, 8, 0, 23, 127)
            } else {
                (64, 52, 11, 0, 52, 1023)
            };
            if (bit_off, prec, eloc, esize, mloc, msize, bias)
                != (0, ieee.0, ieee.1, ieee.2, ieee.3, ieee.4, ieee.5)
            {
                return err(at, "floating-point layout is not IEEE 754");
            }
            Dtype::Float(size)
        }
        3 if size > 0 => Dtype::FixedString(size),
        9 if bits[0] & 0x0f == 1 => Dtype::VlenString,
        9 => {
            return err(
                at,
                "variable-length sequences are not supported (only strings)",
            )
        }
        0 | 1 => {
            return err(
                at,
                format!("{}-byte big-endian or unusual number type", size),
            )
        }
        _ => return err(at, format!("datatype class {class} is not supported")),
    };
    Ok((t, size))
}

/// Parses a filter-pipeline message (versions 1 and 2): filter ids with client data.
fn filters(d: &[u8], at: u64) -> Result<Vec<(u16, Vec<u32>)>> {
    let mut c = Cur::new(d, at, "filter pipeline message");
    let version = c.u8()?;
    let n = c.u8()?;
    if version == 1 {
        c.skip(6)?;
    } else if version != 2 {
        return err(
            at,
            format!("filter pipeline version {version} is not supported"),
        );
    }
    let mut out = Vec::new();
    for _ in 0..n {
        let id = c.u16()?;
        let name_len = if version == 1 || id >= 256 {
            usize::from(c.u16()?)
        } else {
            0
        };
        let _flags = c.u16()?;
        let nvals = usize::from(c.u16()?);
        if version == 1 {
            c.skip(name_len.next_multiple_of(8))?;
        } else {
            c.skip(name_len)?;
        }
        let vals = (0..nvals).map(|_| c.u32()).collect::<Result<Vec<_>>>()?;
        if version == 1 && nvals % 2 == 1 {
            c.skip(4)?;
        }
        out.push((id, vals));
    }
    Ok(out)
}
