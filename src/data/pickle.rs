//! A safe reader for Python pickles (protocols 2 to 5) as written for numpy datasets.
//!
//! A pickle is a program for a stack machine; Python's `pickle.load` runs it and can be made
//! to call any function. This module is a pure *parser*: it interprets the opcodes that build
//! plain values (numbers, strings, bytes, lists, tuples, dicts, sets) and recognises exactly
//! the numpy constructors of an allow-list ([`Global`]); any other global is refused with its
//! name and byte offset. Nothing from the file is ever executed.
//!
//! Memory: large byte payloads (`BINBYTES*`, `BYTEARRAY8`, big strings) are not read when met;
//! they are recorded as a [`Span`] of the file and only read, in chunks, when numpy's
//! `BUILD` / `_frombuffer` turns them into an array, converting straight to `f32`. Peak
//! memory is therefore close to the size of the `f32` arrays, never file + result.
//!
//! The object graph (every value the program builds, its containers, memo and stack, and
//! the decoded arrays) is charged against a budget proportional to the file
//! ([`ParseOptions::budget_floor`] + [`ParseOptions::budget_per_byte`] × file size), so a
//! small file cannot make the parser allocate without bound (e.g. a file of `EMPTY_DICT`
//! opcodes, or one payload memoised once and built into arrays a thousand times).
//!
//! Robustness: every length declared by the file is checked against the bytes that remain
//! before anything is allocated or read; all arithmetic on sizes is checked; no input can
//! make the parser panic. Arrays of dtypes the reader does not convert (complex,
//! datetime, structured, ...) are kept as [`ArrayData::Unconverted`] with their payload
//! skipped, so an unused key never makes a file fail.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};

use super::pickle_numpy::{
    decode_text_items, element_count, is_order_free, Converter, FortranCursor, Latin1FromUtf8,
};
pub use super::pickle_numpy::{DType, ScalarKind};

/// Index of an object in a [`Pickle`]'s arena.
pub type ObjId = usize;

/// The globals a pickle may name: numpy's array reconstruction and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`.
    Reconstruct,
    /// `numpy.core.numeric._frombuffer` / `numpy._core.numeric._frombuffer` (protocol 5).
    FromBuffer,
    /// `numpy.ndarray` (only as the class argument of `_reconstruct`).
    NdArray,
    /// `numpy.dtype`.
    DType,
    /// `_codecs.encode` (Python 3 protocol-2 bytes: `_codecs.encode(str, 'latin1')`).
    CodecsEncode,
    /// `builtins.bytes` / `__builtin__.bytes`, called with no argument only (empty bytes in
    /// protocol 2, e.g. the data of an empty array).
    EmptyBytes,
}

/// Maps a `module.name` pair to an allow-listed [`Global`], or `None` if it is refused.
pub fn allowed_global(module: &str, name: &str) -> Option<Global> {
    match (module, name) {
        ("numpy.core.multiarray" | "numpy._core.multiarray", "_reconstruct") => {
            Some(Global::Reconstruct)
        }
        ("numpy.core.numeric" | "numpy._core.numeric", "_frombuffer") => Some(Global::FromBuffer),
        ("numpy", "ndarray") => Some(Global::NdArray),
        ("numpy", "dtype") => Some(Global::DType),
        ("_codecs", "encode") => Some(Global::CodecsEncode),
        ("builtins" | "__builtin__", "bytes") => Some(Global::EmptyBytes),
        _ => None,
    }
}

/// A byte range of the pickle file whose content has not been read yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// Offset of the first byte.
    pub offset: u64,
    /// Number of bytes.
    pub len: u64,
}

/// The content of a numpy array.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayData {
    /// A numeric array converted to `f32` (row-major); non-finite values were replaced by 0
    /// unless [`ParseOptions::keep_non_finite`].
    Numeric {
        /// The values, C order.
        values: Vec<f32>,
        /// How many values were non-finite after the cast to `f32`.
        non_finite: u64,
    },
    /// An object array: the element objects, C order.
    Objects(Vec<ObjId>),
    /// A fixed-width string array (`S` / `U`), decoded, C order.
    Text(Vec<String>),
    /// An array of a dtype this reader does not convert; its payload was skipped.
    Unconverted {
        /// numpy's spec string of the dtype (`c16`, `M8`, `V12`, ...).
        dtype: String,
    },
}

/// A numpy array read from the pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The dtype stored in the file ([`ScalarKind::Object`] with size 0 for
    /// [`ArrayData::Unconverted`] arrays, whose spec is in the data).
    pub dtype: DType,
    /// The shape.
    pub shape: Vec<usize>,
    /// The content.
    pub data: ArrayData,
}

impl Array {
    /// The dtype's name (`float64`, `object`, `|S10`, `<U7`, or the spec string of an
    /// unconverted dtype such as `c16`).
    pub fn dtype_name(&self) -> String {
        match &self.data {
            ArrayData::Unconverted { dtype } => dtype.clone(),
            _ => self.dtype.name(),
        }
    }
}

/// A value built by the pickle program.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// An integer within `i64`.
    Int(i64),
    /// A float.
    Float(f64),
    /// A text string.
    Str(String),
    /// A byte string (or bytearray).
    Bytes(Vec<u8>),
    /// A large byte string left in the file.
    LazyBytes(Span),
    /// A large UTF-8 text string left in the file.
    LazyStr(Span),
    /// `_codecs.encode(s, 'latin1')` of a large string left in the file.
    LazyLatin1(Span),
    /// A tuple.
    Tuple(Vec<ObjId>),
    /// A list.
    List(Vec<ObjId>),
    /// A dict, in insertion order.
    Dict(Vec<(ObjId, ObjId)>),
    /// A set or frozenset.
    Set(Vec<ObjId>),
    /// An allow-listed global.
    Global(Global),
    /// A numpy dtype.
    DType(DType),
    /// A numpy dtype this reader does not convert (its spec string).
    OtherDType(String),
    /// The result of `_reconstruct(ndarray, ...)` before its `BUILD`.
    ArrayStub,
    /// A numpy array.
    Array(Box<Array>),
}

impl Object {
    /// A short name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Object::None => "None",
            Object::Bool(_) => "bool",
            Object::Int(_) => "int",
            Object::Float(_) => "float",
            Object::Str(_) | Object::LazyStr(_) => "str",
            Object::Bytes(_) | Object::LazyBytes(_) | Object::LazyLatin1(_) => "bytes",
            Object::Tuple(_) => "tuple",
            Object::List(_) => "list",
            Object::Dict(_) => "dict",
            Object::Set(_) => "set",
            Object::Global(_) => "global",
            Object::DType(_) | Object::OtherDType(_) => "numpy.dtype",
            Object::ArrayStub => "unbuilt numpy.ndarray",
            Object::Array(_) => "numpy.ndarray",
        }
    }
}

/// What went wrong while parsing.
#[derive(Debug)]
pub enum PickleErrorKind {
    /// The file names a global that is not allow-listed.
    ForbiddenGlobal {
        /// Module of the global.
        module: String,
        /// Name of the global.
        name: String,
    },
    /// An opcode byte that is not a pickle opcode.
    UnknownOpcode(u8),
    /// A pickle opcode that this reader refuses (persistent ids, extensions, protocol-0
    /// object building, out-of-band buffers, ...).
    UnsupportedOpcode(u8, &'static str),
    /// The file ends before the opcode's data.
    Truncated {
        /// Bytes the opcode needs.
        needed: u64,
        /// Bytes left in the file.
        available: u64,
    },
    /// A structural problem (stack underflow, wrong argument types, bad sizes, ...).
    Malformed(String),
    /// The file ended without a `STOP` opcode.
    NoStop,
    /// A read failed.
    Io(std::io::Error),
    /// The object graph needs more memory than the budget allows.
    Budget {
        /// The budget, in bytes.
        limit: u64,
        /// Size of the file, in bytes.
        file_len: u64,
    },
}

/// A parse error: what went wrong and at which byte offset of the file.
#[derive(Debug)]
pub struct PickleError {
    /// Offset of the opcode where the problem was found.
    pub offset: u64,
    /// The problem.
    pub kind: PickleErrorKind,
    /// The dict keys leading to the value being built when the problem was found (e.g.
    /// `["train", "audio"]`: split and key), as far as the parser's stack tells.
    pub within: Vec<String>,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut at = self.offset.to_string();
        if !self.within.is_empty() {
            at.push_str(", in ");
            for key in &self.within {
                at.push_str(&format!("['{key}']"));
            }
        }
        match &self.kind {
            PickleErrorKind::ForbiddenGlobal { module, name } => write!(
                f,
                "byte {at}: refusing global '{module}.{name}': only numpy array reconstruction \
                 is allowed (the file asks to run code; nothing was run)"
            ),
            PickleErrorKind::UnknownOpcode(op) => {
                write!(f, "byte {at}: unknown pickle opcode 0x{op:02x}")
            }
            PickleErrorKind::UnsupportedOpcode(op, name) => {
                write!(
                    f,
                    "byte {at}: unsupported pickle opcode {name} (0x{op:02x})"
                )
            }
            PickleErrorKind::Truncated { needed, available } => write!(
                f,
                "byte {at}: file truncated: the opcode needs {needed} more bytes but only \
                 {available} remain (incomplete download?)"
            ),
            PickleErrorKind::Malformed(msg) => write!(f, "byte {at}: malformed pickle: {msg}"),
            PickleErrorKind::NoStop => write!(
                f,
                "byte {at}: file ends without the pickle STOP opcode (truncated file?)"
            ),
            PickleErrorKind::Io(e) => write!(f, "byte {at}: read error: {e}"),
            PickleErrorKind::Budget { limit, file_len } => write!(
                f,
                "byte {at}: the pickle's objects need more than {limit} bytes of memory for \
                 a {file_len}-byte file (the budget grows with the file size): this is not a \
                 dataset pickle (a memory bomb?)"
            ),
        }
    }
}

impl std::error::Error for PickleError {}

/// Parser settings.
#[derive(Debug, Clone, Copy)]
pub struct ParseOptions {
    /// Byte payloads of at least this size are left in the file and read on demand.
    pub lazy_threshold: u64,
    /// Text payloads of at least this size are left in the file (after a streaming UTF-8
    /// check); they only serve as array data (`_codecs.encode(str, 'latin1')`).
    pub lazy_str_threshold: u64,
    /// Size of the chunks in which lazy payloads are read and converted.
    pub chunk_bytes: usize,
    /// Keep non-finite values of numeric arrays (default: replace them by 0); they are
    /// counted either way.
    pub keep_non_finite: bool,
    /// Memory budget of the object graph: this many bytes ...
    pub budget_floor: u64,
    /// ... plus this many per byte of the file.
    pub budget_per_byte: u64,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            lazy_threshold: 64 * 1024,
            lazy_str_threshold: 64 * 1024,
            chunk_bytes: 8 * 1024 * 1024,
            keep_non_finite: false,
            budget_floor: 32 << 20,
            budget_per_byte: 8,
        }
    }
}

/// A parsed pickle: an arena of objects and the root value.
#[derive(Debug, Clone, PartialEq)]
pub struct Pickle {
    objects: Vec<Object>,
    root: ObjId,
    /// The protocol declared by the `PROTO` opcode (0 if none).
    pub protocol: u8,
}

impl Pickle {
    /// The value the pickle returns.
    pub fn root(&self) -> ObjId {
        self.root
    }

    /// The object with id `id` (ids come from this pickle, so they are always valid;
    /// an invalid id yields `None`).
    pub fn get(&self, id: ObjId) -> Option<&Object> {
        self.objects.get(id)
    }

    /// The items of a dict, or `None` if `id` is not a dict.
    pub fn dict_items(&self, id: ObjId) -> Option<&[(ObjId, ObjId)]> {
        match self.get(id)? {
            Object::Dict(items) => Some(items),
            _ => None,
        }
    }

    /// The entries of a dict with Python semantics: one entry per string key (first
    /// position, last value); non-string keys are kept as they are.
    pub fn dict_entries(&self, id: ObjId) -> Vec<(ObjId, ObjId)> {
        let items = self.dict_items(id).unwrap_or(&[]);
        let mut seen = std::collections::HashSet::new();
        items
            .iter()
            .filter_map(|&(k, v)| match self.as_str(k) {
                Some(s) if !seen.insert(s) => None,
                Some(s) => self.dict_get(id, s).map(|last| (k, last)),
                None => Some((k, v)),
            })
            .collect()
    }

    /// The value of string key `key` in dict `id` (the last one, as in Python).
    pub fn dict_get(&self, id: ObjId, key: &str) -> Option<ObjId> {
        self.dict_items(id)?
            .iter()
            .rev()
            .find(|(k, _)| self.as_str(*k) == Some(key))
            .map(|(_, v)| *v)
    }

    /// The string keys of dict `id` (non-string keys are shown as `<type>`).
    pub fn dict_keys(&self, id: ObjId) -> Vec<String> {
        self.dict_entries(id)
            .iter()
            .map(|(k, _)| match self.as_str(*k) {
                Some(s) => s.to_string(),
                None => format!("<{}>", self.type_name(*k)),
            })
            .collect()
    }

    /// The text of a `str` object.
    pub fn as_str(&self, id: ObjId) -> Option<&str> {
        match self.get(id)? {
            Object::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The text of a `str` or (lossily decoded) `bytes` object.
    pub fn as_text(&self, id: ObjId) -> Option<String> {
        match self.get(id)? {
            Object::Str(s) => Some(s.clone()),
            Object::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }

    /// The value of an `int` (or `bool`) object.
    pub fn as_int(&self, id: ObjId) -> Option<i64> {
        match self.get(id)? {
            Object::Int(i) => Some(*i),
            Object::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    /// The elements of a list or tuple.
    pub fn as_seq(&self, id: ObjId) -> Option<&[ObjId]> {
        match self.get(id)? {
            Object::List(v) | Object::Tuple(v) => Some(v),
            _ => None,
        }
    }

    /// The array `id`, if it is one.
    pub fn as_array(&self, id: ObjId) -> Option<&Array> {
        match self.get(id)? {
            Object::Array(a) => Some(a),
            _ => None,
        }
    }

    /// Moves the array `id` out of the pickle (leaving `None` behind), avoiding a copy.
    /// Callers must not take an array that is referenced again later (shared references,
    /// e.g. `d['valid'] = d['test']`): clone it with [`Pickle::as_array`] instead.
    pub fn take_array(&mut self, id: ObjId) -> Option<Array> {
        let slot = self.objects.get_mut(id)?;
        if !matches!(slot, Object::Array(_)) {
            return None;
        }
        match std::mem::replace(slot, Object::None) {
            Object::Array(a) => Some(*a),
            _ => None,
        }
    }

    /// The type name of object `id`.
    pub fn type_name(&self, id: ObjId) -> &'static str {
        self.get(id).map_or("<invalid>", Object::type_name)
    }
}

/// Parses a pickle held in memory.
pub fn parse_bytes(data: &[u8], opts: &ParseOptions) -> Result<Pickle, PickleError> {
    parse(std::io::Cursor::new(data), opts)
}

/// Parses a pickle from a seekable reader positioned anywhere (it is read from its start).
pub fn parse<R: Read + Seek>(mut reader: R, opts: &ParseOptions) -> Result<Pickle, PickleError> {
    let io_err = |e| PickleError {
        offset: 0,
        kind: PickleErrorKind::Io(e),
        within: Vec::new(),
    };
    let len = reader.seek(SeekFrom::End(0)).map_err(io_err)?;
    reader.seek(SeekFrom::Start(0)).map_err(io_err)?;
    let mut machine = Machine {
        src: Source {
            r: reader,
            pos: 0,
            len,
        },
        opts: *opts,
        objects: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        protocol: 0,
        op_offset: 0,
        budget: opts
            .budget_floor
            .saturating_add(opts.budget_per_byte.saturating_mul(len)),
        used: 0,
    };
    let root = machine.run()?;
    Ok(Pickle {
        objects: machine.objects,
        root,
        protocol: machine.protocol,
    })
}

pub(crate) type Res<T> = Result<T, PickleErrorKind>;

pub(crate) fn malformed<T>(msg: impl Into<String>) -> Res<T> {
    Err(PickleErrorKind::Malformed(msg.into()))
}

/// Longest text line accepted by the text opcodes (`GLOBAL`, `INT`, `UNICODE`, ...).
const MAX_LINE: usize = 16 * 1024 * 1024;

/// The file being read, with its position and length.
struct Source<R> {
    r: R,
    pos: u64,
    len: u64,
}

impl<R: Read + Seek> Source<R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn need(&self, n: u64) -> Res<()> {
        if n > self.remaining() {
            Err(PickleErrorKind::Truncated {
                needed: n,
                available: self.remaining(),
            })
        } else {
            Ok(())
        }
    }

    fn fixed<const N: usize>(&mut self) -> Res<[u8; N]> {
        self.need(N as u64)?;
        let mut buf = [0u8; N];
        self.r.read_exact(&mut buf).map_err(PickleErrorKind::Io)?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn byte(&mut self) -> Res<u8> {
        Ok(self.fixed::<1>()?[0])
    }

    fn bytes(&mut self, n: u64) -> Res<Vec<u8>> {
        self.need(n)?;
        let size = usize::try_from(n).map_err(|_| PickleErrorKind::Malformed("size".into()))?;
        let mut buf = vec![0u8; size];
        self.r.read_exact(&mut buf).map_err(PickleErrorKind::Io)?;
        self.pos += n;
        Ok(buf)
    }

    fn skip(&mut self, n: u64) -> Res<()> {
        self.need(n)?;
        self.pos += n;
        self.r
            .seek(SeekFrom::Start(self.pos))
            .map_err(PickleErrorKind::Io)?;
        Ok(())
    }

    /// Reads up to and excluding the next `\n` (which is consumed); lines are capped at
    /// [`MAX_LINE`] bytes.
    fn line(&mut self) -> Res<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            if out.len() >= MAX_LINE {
                return malformed(format!("text line longer than {MAX_LINE} bytes"));
            }
            if self.remaining() == 0 {
                return Err(PickleErrorKind::Truncated {
                    needed: 1,
                    available: 0,
                });
            }
            match self.byte()? {
                b'\n' => return Ok(out),
                b => out.push(b),
            }
        }
    }

    /// Reads `span` in chunks of at most `chunk` bytes, handing each to `sink`, then returns
    /// to the current position.
    fn read_span(
        &mut self,
        span: Span,
        chunk: usize,
        sink: &mut dyn FnMut(&[u8]) -> Res<()>,
    ) -> Res<()> {
        let end = span.offset.checked_add(span.len);
        if end.is_none_or(|e| e > self.len) {
            return malformed("byte range beyond the end of the file");
        }
        self.r
            .seek(SeekFrom::Start(span.offset))
            .map_err(PickleErrorKind::Io)?;
        let mut buf = vec![
            0u8;
            chunk
                .max(16)
                .min(usize::try_from(span.len).unwrap_or(chunk))
        ];
        let mut left = span.len;
        while left > 0 {
            let n = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
            let piece = buf
                .get_mut(..n)
                .ok_or_else(|| PickleErrorKind::Malformed("chunk".into()))?;
            self.r.read_exact(piece).map_err(PickleErrorKind::Io)?;
            sink(piece)?;
            left -= n as u64;
        }
        self.r
            .seek(SeekFrom::Start(self.pos))
            .map_err(PickleErrorKind::Io)?;
        Ok(())
    }
}

/// Opcode names of the opcodes this reader knows but refuses.
fn refused_opcode(op: u8) -> Option<&'static str> {
    Some(match op {
        b'P' => "PERSID",
        b'Q' => "BINPERSID",
        b'S' => "STRING",
        b'i' => "INST",
        b'o' => "OBJ",
        0x82 => "EXT1",
        0x83 => "EXT2",
        0x84 => "EXT4",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => return None,
    })
}

/// The pickle virtual machine (without the ability to call anything).
struct Machine<R> {
    src: Source<R>,
    opts: ParseOptions,
    objects: Vec<Object>,
    stack: Vec<ObjId>,
    marks: Vec<usize>,
    memo: HashMap<u64, ObjId>,
    protocol: u8,
    op_offset: u64,
    /// Memory budget of the object graph, bytes.
    budget: u64,
    /// Memory charged so far (never refunded: an upper bound of the live graph).
    used: u64,
}

/// Bytes charged per new object (its arena slot, with room for the arena's growth, and
/// a stack slot).
const OBJECT_COST: u64 = 2 * std::mem::size_of::<Object>() as u64 + 8;
/// Bytes charged per reference stored in a container, the stack or the memo.
const REF_COST: u64 = 8;

impl<R: Read + Seek> Machine<R> {
    fn run(&mut self) -> Result<ObjId, PickleError> {
        loop {
            self.op_offset = self.src.pos;
            if self.src.remaining() == 0 {
                return Err(self.error(PickleErrorKind::NoStop));
            }
            let op = self.src.byte().map_err(|k| self.error(k))?;
            match self.step(op) {
                Ok(Some(root)) => return Ok(root),
                Ok(None) => {}
                Err(kind) => return Err(self.error(kind)),
            }
        }
    }

    fn error(&self, kind: PickleErrorKind) -> PickleError {
        PickleError {
            offset: self.op_offset,
            kind,
            within: self.within(),
        }
    }

    /// The string keys of the dicts being filled (`dict, MARK, k1, v1, k2, ...`: the last
    /// key of each such batch), outermost first.
    fn within(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (i, &m) in self.marks.iter().enumerate() {
            let is_dict = m
                .checked_sub(1)
                .and_then(|d| self.stack.get(d))
                .is_some_and(|&d| matches!(self.objects.get(d), Some(Object::Dict(_))));
            if !is_dict {
                continue;
            }
            let end = self
                .marks
                .get(i + 1)
                .copied()
                .unwrap_or(self.stack.len())
                .min(self.stack.len());
            let key = (m..end)
                .step_by(2)
                .filter_map(|k| match self.objects.get(*self.stack.get(k)?) {
                    Some(Object::Str(s)) => Some(s.clone()),
                    _ => None,
                })
                .last();
            keys.extend(key);
        }
        keys
    }

    /// Charges `bytes` against the memory budget.
    fn charge(&mut self, bytes: u64) -> Res<()> {
        self.used = self.used.saturating_add(bytes);
        if self.used > self.budget {
            return Err(PickleErrorKind::Budget {
                limit: self.budget,
                file_len: self.src.len,
            });
        }
        Ok(())
    }

    /// Charges `n` references of `size` bytes.
    fn charge_refs(&mut self, n: usize, size: u64) -> Res<()> {
        self.charge((n as u64).saturating_mul(size))
    }

    fn push_new(&mut self, obj: Object) -> Res<()> {
        self.charge(OBJECT_COST)?;
        let id = self.objects.len();
        self.objects.push(obj);
        self.stack.push(id);
        Ok(())
    }

    /// Pushes an existing object again (memo `GET`, `DUP`).
    fn push_ref(&mut self, id: ObjId) -> Res<()> {
        self.charge(2 * REF_COST)?;
        self.stack.push(id);
        Ok(())
    }

    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self) -> Res<ObjId> {
        if self.stack.len() <= self.floor() {
            return malformed("stack underflow");
        }
        self.stack
            .pop()
            .ok_or_else(|| PickleErrorKind::Malformed("stack underflow".into()))
    }

    fn top(&self) -> Res<ObjId> {
        if self.stack.len() <= self.floor() {
            return malformed("stack underflow");
        }
        self.stack
            .last()
            .copied()
            .ok_or_else(|| PickleErrorKind::Malformed("stack underflow".into()))
    }

    fn pop_mark(&mut self) -> Res<Vec<ObjId>> {
        let mark = self
            .marks
            .pop()
            .ok_or_else(|| PickleErrorKind::Malformed("no MARK on the stack".into()))?;
        Ok(self.stack.split_off(mark.min(self.stack.len())))
    }

    fn obj(&self, id: ObjId) -> Res<&Object> {
        self.objects
            .get(id)
            .ok_or_else(|| PickleErrorKind::Malformed("invalid object reference".into()))
    }

    fn obj_mut(&mut self, id: ObjId) -> Res<&mut Object> {
        self.objects
            .get_mut(id)
            .ok_or_else(|| PickleErrorKind::Malformed("invalid object reference".into()))
    }

    fn memo_put(&mut self, idx: u64) -> Res<()> {
        let top = self.top()?;
        if self.memo.insert(idx, top).is_none() {
            self.charge(6 * REF_COST)?;
        }
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Res<()> {
        let id = *self
            .memo
            .get(&idx)
            .ok_or_else(|| PickleErrorKind::Malformed(format!("memo key {idx} not defined")))?;
        self.push_ref(id)
    }

    fn u32_len(&mut self) -> Res<u64> {
        Ok(u64::from(u32::from_le_bytes(self.src.fixed()?)))
    }

    fn u64_len(&mut self) -> Res<u64> {
        Ok(u64::from_le_bytes(self.src.fixed()?))
    }

    /// Reads `n` bytes of payload, leaving large payloads in the file.
    fn payload(&mut self, n: u64, text: bool) -> Res<Object> {
        self.src.need(n)?;
        let threshold = if text {
            self.opts.lazy_str_threshold
        } else {
            self.opts.lazy_threshold
        };
        if n >= threshold {
            let span = Span {
                offset: self.src.pos,
                len: n,
            };
            if text {
                let mut check = Utf8Check::default();
                self.src
                    .read_span(span, self.opts.chunk_bytes, &mut |c| check.feed(c))?;
                check.finish()?;
            }
            self.src.skip(n)?;
            return Ok(if text {
                Object::LazyStr(span)
            } else {
                Object::LazyBytes(span)
            });
        }
        self.charge(n)?;
        let data = self.src.bytes(n)?;
        if text {
            String::from_utf8(data)
                .map(Object::Str)
                .or_else(|_| malformed("string is not valid UTF-8"))
        } else {
            Ok(Object::Bytes(data))
        }
    }

    fn text_line(&mut self) -> Res<String> {
        let line = self.src.line()?;
        String::from_utf8(line).or_else(|_| malformed("text line is not valid UTF-8"))
    }

    fn decimal_line(&mut self) -> Res<u64> {
        let line = self.text_line()?;
        line.trim()
            .parse::<u64>()
            .or_else(|_| malformed(format!("bad memo index {line:?}")))
    }

    /// Executes one opcode; returns the root on `STOP`.
    fn step(&mut self, op: u8) -> Res<Option<ObjId>> {
        if op == b'.' {
            return self.pop().map(Some);
        }
        let done = self.stack_op(op)?
            || self.memo_op(op)?
            || self.number_op(op)?
            || self.text_op(op)?
            || self.container_op(op)?
            || self.call_op(op)?;
        if done {
            return Ok(None);
        }
        Err(match refused_opcode(op) {
            Some(name) => PickleErrorKind::UnsupportedOpcode(op, name),
            None => PickleErrorKind::UnknownOpcode(op),
        })
    }

    /// Protocol, frame, mark and stack opcodes; `false` if `op` is not one of them.
    fn stack_op(&mut self, op: u8) -> Res<bool> {
        match op {
            0x80 => {
                let v = self.src.byte()?;
                if v > 5 {
                    return malformed(format!("unsupported pickle protocol {v}"));
                }
                self.protocol = v;
            }
            0x95 => {
                let n = self.u64_len()?;
                self.src.need(n)?;
            }
            b'(' => {
                self.charge(2 * REF_COST)?;
                self.marks.push(self.stack.len());
            }
            b'0' => {
                if self.stack.len() > self.floor() {
                    self.pop()?;
                } else {
                    self.pop_mark()?;
                }
            }
            b'1' => {
                self.pop_mark()?;
            }
            b'2' => {
                let top = self.top()?;
                self.push_ref(top)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Memo opcodes (`PUT`, `GET`, `MEMOIZE`, ...); `false` if `op` is not one of them.
    fn memo_op(&mut self, op: u8) -> Res<bool> {
        match op {
            b'p' => {
                let idx = self.decimal_line()?;
                self.memo_put(idx)?;
            }
            b'q' => {
                let idx = u64::from(self.src.byte()?);
                self.memo_put(idx)?;
            }
            b'r' => {
                let idx = self.u32_len()?;
                self.memo_put(idx)?;
            }
            0x94 => {
                let idx = self.memo.len() as u64;
                self.memo_put(idx)?;
            }
            b'g' => {
                let idx = self.decimal_line()?;
                self.memo_get(idx)?;
            }
            b'h' => {
                let idx = u64::from(self.src.byte()?);
                self.memo_get(idx)?;
            }
            b'j' => {
                let idx = self.u32_len()?;
                self.memo_get(idx)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Constants and numbers; `false` if `op` is not one of them.
    fn number_op(&mut self, op: u8) -> Res<bool> {
        match op {
            b'N' => self.push_new(Object::None)?,
            0x88 => self.push_new(Object::Bool(true))?,
            0x89 => self.push_new(Object::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(self.src.fixed()?);
                self.push_new(Object::Int(i64::from(v)))?;
            }
            b'K' => {
                let v = self.src.byte()?;
                self.push_new(Object::Int(i64::from(v)))?;
            }
            b'M' => {
                let v = u16::from_le_bytes(self.src.fixed()?);
                self.push_new(Object::Int(i64::from(v)))?;
            }
            0x8a => {
                let n = u64::from(self.src.byte()?);
                let v = self.long_bytes(n)?;
                self.push_new(Object::Int(v))?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.src.fixed()?);
                let n = u64::try_from(n).or_else(|_| malformed("negative LONG4 size"))?;
                let v = self.long_bytes(n)?;
                self.push_new(Object::Int(v))?;
            }
            b'I' => {
                let line = self.text_line()?;
                let obj = match line.as_str() {
                    "00" => Object::Bool(false),
                    "01" => Object::Bool(true),
                    s => Object::Int(parse_int_text(s)?),
                };
                self.push_new(obj)?;
            }
            b'L' => {
                let line = self.text_line()?;
                let s = line.strip_suffix('L').unwrap_or(&line);
                let v = parse_int_text(s)?;
                self.push_new(Object::Int(v))?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.src.fixed()?);
                self.push_new(Object::Float(v))?;
            }
            b'F' => {
                let line = self.text_line()?;
                let v = line
                    .trim()
                    .parse::<f64>()
                    .or_else(|_| malformed(format!("bad float {line:?}")))?;
                self.push_new(Object::Float(v))?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Strings and bytes; `false` if `op` is not one of them.
    fn text_op(&mut self, op: u8) -> Res<bool> {
        match op {
            b'X' => {
                let n = self.u32_len()?;
                let o = self.payload(n, true)?;
                self.push_new(o)?;
            }
            0x8c => {
                let n = u64::from(self.src.byte()?);
                let o = self.payload(n, true)?;
                self.push_new(o)?;
            }
            0x8d => {
                let n = self.u64_len()?;
                let o = self.payload(n, true)?;
                self.push_new(o)?;
            }
            b'V' => {
                let line = self.src.line()?;
                self.charge(2 * line.len() as u64)?;
                let s = decode_raw_unicode_escape(&line)?;
                self.push_new(Object::Str(s))?;
            }
            b'T' => {
                let n = i32::from_le_bytes(self.src.fixed()?);
                let n = u64::try_from(n).or_else(|_| malformed("negative BINSTRING size"))?;
                let o = self.payload(n, false)?;
                self.push_new(o)?;
            }
            b'U' | b'C' => {
                let n = u64::from(self.src.byte()?);
                let o = self.payload(n, false)?;
                self.push_new(o)?;
            }
            b'B' => {
                let n = self.u32_len()?;
                let o = self.payload(n, false)?;
                self.push_new(o)?;
            }
            0x8e | 0x96 => {
                let n = self.u64_len()?;
                let o = self.payload(n, false)?;
                self.push_new(o)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Container opcodes; `false` if `op` is not one of them.
    fn container_op(&mut self, op: u8) -> Res<bool> {
        match op {
            b'}' => self.push_new(Object::Dict(Vec::new()))?,
            b']' => self.push_new(Object::List(Vec::new()))?,
            b')' => self.push_new(Object::Tuple(Vec::new()))?,
            0x8f => self.push_new(Object::Set(Vec::new()))?,
            b't' => {
                let items = self.pop_mark()?;
                self.charge_refs(items.len(), REF_COST)?;
                self.push_new(Object::Tuple(items))?;
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_new(Object::Tuple(items))?;
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.charge_refs(items.len(), REF_COST)?;
                self.push_new(Object::List(items))?;
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs_of(items)?;
                self.push_new(Object::Dict(Vec::new()))?;
                let dict = self.top()?;
                for (k, v) in pairs {
                    self.dict_insert(dict, k, v)?;
                }
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.charge_refs(items.len(), REF_COST)?;
                self.push_new(Object::Set(items))?;
            }
            b'a' => {
                let v = self.pop()?;
                let list = self.top()?;
                self.extend_list(list, vec![v])?;
            }
            b'e' => {
                let items = self.pop_mark()?;
                let list = self.top()?;
                self.extend_list(list, items)?;
            }
            b's' => {
                let v = self.pop()?;
                let k = self.pop()?;
                let dict = self.top()?;
                self.dict_insert(dict, k, v)?;
            }
            b'u' => {
                let items = self.pop_mark()?;
                let dict = self.top()?;
                for (k, v) in pairs_of(items)? {
                    self.dict_insert(dict, k, v)?;
                }
            }
            0x90 => {
                let items = self.pop_mark()?;
                self.charge_refs(items.len(), REF_COST)?;
                let set = self.top()?;
                match self.obj_mut(set)? {
                    Object::Set(v) => v.extend(items),
                    other => return malformed(format!("ADDITEMS on a {}", other.type_name())),
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Globals, calls (`REDUCE`, `NEWOBJ`) and `BUILD`; `false` if `op` is not one of them.
    fn call_op(&mut self, op: u8) -> Res<bool> {
        match op {
            b'c' => {
                let module = self.text_line()?;
                let name = self.text_line()?;
                self.push_global(module, name)?;
            }
            0x93 => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Object::Str(m), Object::Str(n)) = (self.obj(module)?, self.obj(name)?) else {
                    return malformed("STACK_GLOBAL needs two strings");
                };
                let (m, n) = (m.clone(), n.clone());
                self.push_global(m, n)?;
            }
            b'R' => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let obj = self.call(callable, args, "REDUCE")?;
                self.push_new(obj)?;
            }
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let obj = self.call(cls, args, "NEWOBJ")?;
                self.push_new(obj)?;
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                if !matches!(self.obj(kwargs)?, Object::Dict(d) if d.is_empty()) {
                    return malformed("NEWOBJ_EX with keyword arguments is not supported");
                }
                let obj = self.call(cls, args, "NEWOBJ_EX")?;
                self.push_new(obj)?;
            }
            b'b' => {
                let state = self.pop()?;
                let target = self.top()?;
                self.build(target, state)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn long_bytes(&mut self, n: u64) -> Res<i64> {
        self.src.need(n)?;
        if n > 64 {
            return malformed(format!("integer of {n} bytes is out of range"));
        }
        let bytes = self.src.bytes(n)?;
        decode_long(&bytes).ok_or_else(|| {
            PickleErrorKind::Malformed("integer out of the 64-bit range".to_string())
        })
    }

    fn push_global(&mut self, module: String, name: String) -> Res<()> {
        match allowed_global(&module, &name) {
            Some(g) => {
                self.push_new(Object::Global(g))?;
                Ok(())
            }
            None => Err(PickleErrorKind::ForbiddenGlobal { module, name }),
        }
    }

    fn extend_list(&mut self, list: ObjId, items: Vec<ObjId>) -> Res<()> {
        self.charge_refs(items.len(), REF_COST)?;
        match self.obj_mut(list)? {
            Object::List(v) => {
                v.extend(items);
                Ok(())
            }
            other => malformed(format!("APPEND to a {}", other.type_name())),
        }
    }

    /// `SETITEM`: appends the pair; lookups take the last value of a key, as Python does
    /// (no de-duplication here, so a huge dict cannot make parsing quadratic).
    fn dict_insert(&mut self, dict: ObjId, key: ObjId, value: ObjId) -> Res<()> {
        self.charge(2 * REF_COST)?;
        match self.obj_mut(dict)? {
            Object::Dict(items) => {
                items.push((key, value));
                Ok(())
            }
            other => malformed(format!("SETITEM on a {}", other.type_name())),
        }
    }

    fn args_of(&self, args: ObjId, what: &str) -> Res<Vec<ObjId>> {
        match self.obj(args)? {
            Object::Tuple(v) => Ok(v.clone()),
            other => malformed(format!(
                "{what} arguments must be a tuple, got {}",
                other.type_name()
            )),
        }
    }

    /// Applies an allow-listed constructor to its arguments (`REDUCE` / `NEWOBJ`).
    fn call(&mut self, callable: ObjId, args: ObjId, opname: &str) -> Res<Object> {
        let g = match self.obj(callable)? {
            Object::Global(g) => *g,
            other => return malformed(format!("{opname} of a {}", other.type_name())),
        };
        let args = self.args_of(args, opname)?;
        match g {
            Global::Reconstruct => {
                let cls = args.first().map(|&c| self.obj(c)).transpose()?;
                if args.len() != 3 || !matches!(cls, Some(Object::Global(Global::NdArray))) {
                    return malformed("_reconstruct expects (numpy.ndarray, shape, dtype)");
                }
                Ok(Object::ArrayStub)
            }
            Global::NdArray if opname != "REDUCE" => Ok(Object::ArrayStub),
            Global::NdArray => malformed("numpy.ndarray cannot be called by REDUCE"),
            Global::DType => self.make_dtype(&args),
            Global::FromBuffer => self.call_frombuffer(&args),
            Global::CodecsEncode => self.codecs_encode(&args),
            Global::EmptyBytes if args.is_empty() => Ok(Object::Bytes(Vec::new())),
            Global::EmptyBytes => malformed("bytes(...) is only accepted without arguments"),
        }
    }

    /// The text of a short `str` / `bytes` argument, reading it from the file if it was left
    /// there (so results do not depend on the lazy thresholds); `None` for other values.
    fn small_text(&mut self, id: ObjId) -> Res<Option<String>> {
        let span = match self.obj(id)? {
            Object::Str(s) => return Ok(Some(s.clone())),
            Object::Bytes(b) => return Ok(Some(String::from_utf8_lossy(b).into_owned())),
            Object::LazyStr(span) | Object::LazyBytes(span) if span.len <= 64 => *span,
            _ => return Ok(None),
        };
        let mut text = Vec::new();
        self.src.read_span(span, 64, &mut |c| {
            text.extend_from_slice(c);
            Ok(())
        })?;
        Ok(Some(String::from_utf8_lossy(&text).into_owned()))
    }

    fn make_dtype(&mut self, args: &[ObjId]) -> Res<Object> {
        let spec = match args.first() {
            Some(&a) => self.small_text(a)?,
            None => None,
        };
        let Some(spec) = spec else {
            return malformed("numpy.dtype expects a type string");
        };
        if spec.len() > 64 {
            return malformed("numpy.dtype spec longer than 64 characters");
        }
        Ok(match DType::parse(&spec) {
            Some(d) => Object::DType(d),
            None => Object::OtherDType(spec),
        })
    }

    fn codecs_encode(&mut self, args: &[ObjId]) -> Res<Object> {
        let [text, encoding] = args else {
            return malformed("_codecs.encode expects (str, encoding)");
        };
        match self.obj(*encoding)? {
            Object::Str(e) if e == "latin1" || e == "latin-1" || e == "iso-8859-1" => {}
            _ => return malformed("_codecs.encode is only accepted with 'latin1'"),
        }
        if let Object::Str(s) = self.obj(*text)? {
            let n = s.len() as u64;
            self.charge(n)?;
        }
        match self.obj(*text)? {
            Object::Str(s) => s
                .chars()
                .map(|c| u8::try_from(u32::from(c)).ok())
                .collect::<Option<Vec<u8>>>()
                .map(Object::Bytes)
                .ok_or_else(|| PickleErrorKind::Malformed("character beyond latin1".into())),
            Object::LazyStr(span) => Ok(Object::LazyLatin1(*span)),
            other => malformed(format!("_codecs.encode of a {}", other.type_name())),
        }
    }

    fn shape_of(&self, id: ObjId) -> Res<Vec<usize>> {
        let dims = match self.obj(id)? {
            Object::Tuple(v) | Object::List(v) => v.clone(),
            Object::Int(_) => vec![id],
            other => return malformed(format!("array shape is a {}", other.type_name())),
        };
        dims.iter()
            .map(|&d| match self.obj(d)? {
                Object::Int(i) => usize::try_from(*i).or_else(|_| malformed("negative dimension")),
                other => malformed(format!("array dimension is a {}", other.type_name())),
            })
            .collect()
    }

    /// The dtype `id`: `Ok(Err(spec))` for a dtype this reader does not convert.
    fn dtype_of(&self, id: ObjId) -> Res<Result<DType, String>> {
        match self.obj(id)? {
            Object::DType(d) => Ok(Ok(*d)),
            Object::OtherDType(spec) => Ok(Err(spec.clone())),
            other => malformed(format!("expected a numpy.dtype, got {}", other.type_name())),
        }
    }

    /// An array of a dtype this reader does not convert (its payload is not read).
    fn unconverted(spec: String, shape: Vec<usize>) -> Object {
        let dtype = DType {
            kind: ScalarKind::Object,
            size: 0,
            big_endian: false,
        };
        let data = ArrayData::Unconverted { dtype: spec };
        Object::Array(Box::new(Array { dtype, shape, data }))
    }

    fn call_frombuffer(&mut self, args: &[ObjId]) -> Res<Object> {
        let [buf, dtype, shape, order] = args else {
            return malformed("_frombuffer expects (buffer, dtype, shape, order)");
        };
        let dtype = self.dtype_of(*dtype)?;
        let shape = self.shape_of(*shape)?;
        let fortran = match self.obj(*order)? {
            Object::Str(s) if s == "C" => false,
            Object::Str(s) if s == "F" => true,
            _ => return malformed("_frombuffer order must be 'C' or 'F'"),
        };
        let dtype = match dtype {
            Ok(d) => d,
            Err(spec) => return Ok(Self::unconverted(spec, shape)),
        };
        if dtype.kind == ScalarKind::Object {
            return malformed("_frombuffer of an object dtype");
        }
        let data = if dtype.is_text() {
            self.text_data(*buf, dtype, &shape, fortran)?
        } else {
            self.numeric_data(*buf, dtype, &shape, fortran)?
        };
        Ok(Object::Array(Box::new(Array { dtype, shape, data })))
    }

    /// `BUILD`: sets the state of a dtype or of an array made by `_reconstruct`.
    fn build(&mut self, target: ObjId, state: ObjId) -> Res<()> {
        match self.obj(target)? {
            Object::DType(d) => {
                let d = self.dtype_state(*d, state)?;
                *self.obj_mut(target)? = d;
                Ok(())
            }
            // A dtype this reader does not convert: its state (fields, metadata, ...) is
            // not needed.
            Object::OtherDType(_) => Ok(()),
            Object::ArrayStub => {
                let array = self.array_state(state)?;
                *self.obj_mut(target)? = array;
                Ok(())
            }
            other => malformed(format!("BUILD on a {} is not supported", other.type_name())),
        }
    }

    /// The dtype after its `BUILD` state `(version, byte order, subarray, names, fields,
    /// elsize, alignment, flags[, metadata])`: byte order, and the width of `S` / `U`;
    /// a structured or sub-array dtype becomes an [`Object::OtherDType`].
    fn dtype_state(&mut self, mut d: DType, state: ObjId) -> Res<Object> {
        let items = match self.obj(state)? {
            Object::Tuple(v) if v.len() >= 8 => v.clone(),
            _ => return malformed("numpy.dtype state must be a tuple of 8 or 9 items"),
        };
        let Some(order) = self.small_text(items[1])? else {
            return malformed("dtype byte order must be a string");
        };
        d.big_endian = match order.as_str() {
            ">" => true,
            "<" | "|" | "=" => false,
            _ => return malformed(format!("bad dtype byte order {order:?}")),
        };
        let is_plain = |i: usize| matches!(self.objects.get(items[i]), Some(Object::None));
        if !is_plain(2) || !is_plain(3) {
            return Ok(Object::OtherDType(format!("structured {}", d.name())));
        }
        if d.is_text() {
            let elsize = match self.obj(items[5])? {
                Object::Int(n) => usize::try_from(*n).ok(),
                _ => None,
            };
            match elsize {
                Some(n) if d.kind == ScalarKind::Unicode && n % 4 != 0 => {
                    return malformed(format!("unicode dtype of {n} bytes per item"))
                }
                Some(n) => d.size = n,
                None => return malformed("string dtype without a valid item size"),
            }
        }
        Ok(Object::DType(d))
    }

    fn array_state(&mut self, state: ObjId) -> Res<Object> {
        let items = match self.obj(state)? {
            Object::Tuple(v) if v.len() == 5 => v[1..].to_vec(),
            Object::Tuple(v) if v.len() == 4 => v.clone(),
            _ => {
                return malformed(
                    "numpy array state must be (version, shape, dtype, fortran, data)",
                )
            }
        };
        let shape = self.shape_of(items[0])?;
        let dtype = match self.dtype_of(items[1])? {
            Ok(d) => d,
            Err(spec) => return Ok(Self::unconverted(spec, shape)),
        };
        let fortran = match self.obj(items[2])? {
            Object::Bool(b) => *b,
            Object::Int(i) => *i != 0,
            _ => return malformed("array is_fortran flag must be a bool"),
        };
        let data = if dtype.kind == ScalarKind::Object {
            self.object_data(items[3], &shape, fortran)?
        } else if dtype.is_text() {
            self.text_data(items[3], dtype, &shape, fortran)?
        } else {
            self.numeric_data(items[3], dtype, &shape, fortran)?
        };
        Ok(Object::Array(Box::new(Array { dtype, shape, data })))
    }

    fn object_data(&mut self, raw: ObjId, shape: &[usize], fortran: bool) -> Res<ArrayData> {
        let count = element_count(shape)?;
        self.charge_refs(count, REF_COST)?;
        let items = match self.obj(raw)? {
            Object::List(v) => v,
            other => return malformed(format!("object array data is a {}", other.type_name())),
        };
        if items.len() != count {
            return malformed(format!(
                "object array of shape {shape:?} holds {} items",
                items.len()
            ));
        }
        if !fortran || is_order_free(shape) {
            return Ok(ArrayData::Objects(items.clone()));
        }
        let mut out = vec![0; count];
        let mut cursor = FortranCursor::new(shape);
        for &item in items {
            let slot = out
                .get_mut(cursor.next_dest())
                .ok_or_else(|| PickleErrorKind::Malformed("index".into()))?;
            *slot = item;
        }
        Ok(ArrayData::Objects(out))
    }

    /// Converts the raw bytes of a numeric array to `f32`, reading lazy payloads in chunks.
    fn numeric_data(
        &mut self,
        raw: ObjId,
        dtype: DType,
        shape: &[usize],
        fortran: bool,
    ) -> Res<ArrayData> {
        let (count, raw) = self.array_payload(raw, dtype, shape)?;
        self.charge_refs(count, 4)?;
        let mut conv = Converter::new(dtype, shape, fortran, count, self.opts.keep_non_finite);
        self.stream_payload(raw, &mut |c| conv.feed(c))?;
        conv.finish()
    }

    /// The element count of an array of `dtype` and `shape` and its payload object,
    /// checking the payload's size.
    fn array_payload(&self, raw: ObjId, dtype: DType, shape: &[usize]) -> Res<(usize, Object)> {
        let count = element_count(shape)?;
        let nbytes = (count as u64)
            .checked_mul(dtype.size as u64)
            .ok_or_else(|| PickleErrorKind::Malformed("array too large".into()))?;
        let raw = self.obj(raw)?.clone();
        let (available, exact) = match &raw {
            Object::Bytes(b) => (b.len() as u64, true),
            Object::LazyBytes(s) => (s.len, true),
            Object::LazyLatin1(s) => (s.len, false),
            other => return malformed(format!("array data is a {}", other.type_name())),
        };
        if (exact && available != nbytes) || nbytes > available {
            return malformed(format!(
                "array of shape {shape:?} and dtype {} needs {nbytes} bytes, the data has {available}",
                dtype.name()
            ));
        }
        Ok((count, raw))
    }

    /// Hands the bytes of an array payload to `sink`, in chunks for lazy payloads.
    fn stream_payload(&mut self, raw: Object, sink: &mut dyn FnMut(&[u8]) -> Res<()>) -> Res<()> {
        let chunk = self.opts.chunk_bytes;
        match raw {
            Object::Bytes(b) => sink(&b),
            Object::LazyBytes(span) => self.src.read_span(span, chunk, sink),
            Object::LazyLatin1(span) => {
                let mut utf8 = Latin1FromUtf8::default();
                let mut buf = Vec::new();
                self.src.read_span(span, chunk, &mut |c| {
                    buf.clear();
                    utf8.decode(c, &mut buf)?;
                    sink(&buf)
                })?;
                utf8.finish()
            }
            _ => malformed("array data"),
        }
    }

    /// Decodes a fixed-width string array (`S` / `U`) to text, C order.
    fn text_data(
        &mut self,
        raw: ObjId,
        dtype: DType,
        shape: &[usize],
        fortran: bool,
    ) -> Res<ArrayData> {
        let (count, raw) = self.array_payload(raw, dtype, shape)?;
        let nbytes = count.saturating_mul(dtype.size);
        // The raw bytes, one String per item and its text.
        self.charge_refs(count, 2 * std::mem::size_of::<String>() as u64)?;
        self.charge(2 * nbytes as u64)?;
        let mut bytes = Vec::with_capacity(nbytes);
        self.stream_payload(raw, &mut |c| {
            if bytes.len().saturating_add(c.len()) > nbytes {
                return malformed("string array data longer than its shape");
            }
            bytes.extend_from_slice(c);
            Ok(())
        })?;
        if bytes.len() != nbytes {
            return malformed(format!(
                "string array data holds {} bytes, its shape needs {nbytes}",
                bytes.len()
            ));
        }
        let items = if dtype.size == 0 {
            vec![String::new(); count]
        } else {
            decode_text_items(dtype, &bytes)
        };
        if !fortran || is_order_free(shape) {
            return Ok(ArrayData::Text(items));
        }
        let mut out = vec![String::new(); count];
        let mut cursor = FortranCursor::new(shape);
        for item in items {
            let slot = out
                .get_mut(cursor.next_dest())
                .ok_or_else(|| PickleErrorKind::Malformed("index".into()))?;
            *slot = item;
        }
        Ok(ArrayData::Text(out))
    }
}

/// Splits a flat `[k0, v0, k1, v1, ...]` list into pairs.
fn pairs_of(items: Vec<ObjId>) -> Res<Vec<(ObjId, ObjId)>> {
    if !items.len().is_multiple_of(2) {
        return malformed("odd number of items for a dict");
    }
    Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

/// Parses a decimal integer of the text opcodes (`INT`, `LONG`).
fn parse_int_text(s: &str) -> Res<i64> {
    s.trim()
        .parse::<i64>()
        .or_else(|_| malformed(format!("bad or out-of-range integer {s:?}")))
}

/// Decodes a little-endian two's complement integer; `None` if it does not fit `i64`.
pub fn decode_long(bytes: &[u8]) -> Option<i64> {
    let Some(&last) = bytes.last() else {
        return Some(0);
    };
    let negative = last & 0x80 != 0;
    let fill = if negative { 0xff } else { 0x00 };
    let mut buf = [fill; 8];
    for (i, &b) in bytes.iter().enumerate() {
        match buf.get_mut(i) {
            Some(slot) => *slot = b,
            None if b == fill => {}
            None => return None,
        }
    }
    let v = i64::from_le_bytes(buf);
    // Sign of the decoded value must match the sign of the encoding.
    ((v < 0) == negative).then_some(v)
}

/// Decodes Python's `raw-unicode-escape` (the `UNICODE` opcode): latin-1 bytes with
/// `\uXXXX` and `\UXXXXXXXX` escapes.
fn decode_raw_unicode_escape(bytes: &[u8]) -> Res<String> {
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let width = match (b, bytes.get(i + 1)) {
            (b'\\', Some(b'u')) => 4,
            (b'\\', Some(b'U')) => 8,
            _ => 0,
        };
        if width == 0 {
            out.push(char::from(b));
            i += 1;
            continue;
        }
        let hex = bytes
            .get(i + 2..i + 2 + width)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .and_then(char::from_u32)
            .ok_or_else(|| PickleErrorKind::Malformed("bad \\u escape in UNICODE".into()))?;
        out.push(hex);
        i += 2 + width;
    }
    Ok(out)
}

/// Streaming UTF-8 validation (chunks may split a character).
#[derive(Default)]
struct Utf8Check {
    carry: Vec<u8>,
}

impl Utf8Check {
    fn feed(&mut self, chunk: &[u8]) -> Res<()> {
        let mut rest = chunk;
        // Complete a character split by the previous chunk, one byte at a time.
        while !self.carry.is_empty() {
            let Some((&b, tail)) = rest.split_first() else {
                return Ok(());
            };
            self.carry.push(b);
            rest = tail;
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_some() || self.carry.len() >= 4 => {
                    return malformed("string is not valid UTF-8")
                }
                Err(_) => {}
            }
        }
        match std::str::from_utf8(rest) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => malformed("string is not valid UTF-8"),
            Err(e) => {
                self.carry
                    .extend_from_slice(rest.get(e.valid_up_to()..).unwrap_or(&[]));
                Ok(())
            }
        }
    }

    fn finish(&self) -> Res<()> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            malformed("string ends inside a UTF-8 character")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longs_decode_within_i64_and_refuse_beyond() {
        assert_eq!(decode_long(&[]), Some(0));
        assert_eq!(decode_long(&[0xff]), Some(-1));
        assert_eq!(decode_long(&[0x80]), Some(-128));
        assert_eq!(decode_long(&[0x80, 0x00]), Some(128));
        assert_eq!(decode_long(&[0xff; 8]), Some(-1));
        let max = i64::MAX.to_le_bytes();
        assert_eq!(decode_long(&max), Some(i64::MAX));
        assert_eq!(decode_long(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]), None);
        assert_eq!(decode_long(&[0, 0, 0, 0, 0, 0, 0, 0x80]), Some(i64::MIN));
        assert_eq!(decode_long(&[0, 0, 0, 0, 0, 0, 0, 0, 1]), None);
        assert_eq!(decode_long(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 0]), Some(5));
    }

    #[test]
    fn raw_unicode_escape_decodes_escapes_and_latin1() {
        assert_eq!(
            decode_raw_unicode_escape(b"ab\\u00e9\\U0001F600\xe9").unwrap(),
            "abé😀é"
        );
        assert_eq!(decode_raw_unicode_escape(b"a\\b").unwrap(), "a\\b");
        assert!(decode_raw_unicode_escape(b"\\u12").is_err());
        assert!(decode_raw_unicode_escape(b"\\UFFFFFFFF").is_err());
    }

    #[test]
    fn utf8_check_handles_characters_split_across_chunks() {
        let text = "aé😀ü€z".as_bytes();
        for size in 1..text.len() {
            let mut c = Utf8Check::default();
            for chunk in text.chunks(size) {
                c.feed(chunk).unwrap();
            }
            c.finish().unwrap();
        }
        let mut c = Utf8Check::default();
        c.feed(&[0xe2, 0x82]).unwrap();
        assert!(c.finish().is_err(), "incomplete at the end");
        let mut c = Utf8Check::default();
        c.feed(&[0xe2]).unwrap();
        assert!(c.feed(&[0x41]).is_err(), "broken sequence across chunks");
        assert!(Utf8Check::default().feed(&[0xff]).is_err());
    }

    #[test]
    fn allow_list_is_exact() {
        assert_eq!(
            allowed_global("numpy._core.multiarray", "_reconstruct"),
            Some(Global::Reconstruct)
        );
        assert_eq!(
            allowed_global("numpy.core.numeric", "_frombuffer"),
            Some(Global::FromBuffer)
        );
        for (m, n) in [
            ("os", "system"),
            ("posix", "system"),
            ("builtins", "eval"),
            ("builtins", "getattr"),
            ("numpy", "load"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy.testing", "ndarray"),
            ("numpy ", "dtype"),
            ("_codecs", "decode"),
        ] {
            assert_eq!(allowed_global(m, n), None, "{m}.{n}");
        }
    }
}
