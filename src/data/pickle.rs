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
//! Robustness: every length declared by the file is checked against the bytes that remain
//! before anything is allocated or read; all arithmetic on sizes is checked; no input can
//! make the parser panic.

use std::collections::HashMap;
use std::fmt;
use std::io::{Read, Seek, SeekFrom};

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

/// Element kind of a numpy dtype.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// IEEE float (`f4`, `f8`).
    Float,
    /// Signed integer (`i1`..`i8`).
    Int,
    /// Unsigned integer (`u1`..`u8`).
    UInt,
    /// Boolean (`b1`).
    Bool,
    /// Python objects (`O`).
    Object,
}

/// A numpy dtype as far as this reader supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DType {
    /// Element kind.
    pub kind: ScalarKind,
    /// Bytes per element (8 for objects, as numpy reports).
    pub size: usize,
    /// Byte order of the stored data.
    pub big_endian: bool,
}

impl DType {
    /// Parses numpy's dtype spec string (`'f8'`, `'<f4'`, `'i8'`, `'O8'`, `'b1'`, `'u1'`);
    /// specs longer than 4 characters (numpy never writes them) are refused.
    pub fn parse(spec: &str) -> Option<DType> {
        if spec.len() > 4 {
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
            _ => return None,
        };
        let digits = chars.as_str();
        let size = if digits.is_empty() {
            match kind {
                ScalarKind::Bool => 1,
                ScalarKind::Object => 8,
                _ => return None,
            }
        } else {
            digits.parse::<usize>().ok()?
        };
        let ok = match kind {
            ScalarKind::Float => matches!(size, 4 | 8),
            ScalarKind::Int | ScalarKind::UInt => matches!(size, 1 | 2 | 4 | 8),
            ScalarKind::Bool => size == 1,
            ScalarKind::Object => size == 8 || size == 4,
        };
        ok.then_some(DType {
            kind,
            size,
            big_endian,
        })
    }

    /// numpy's name of the dtype (`float64`, `int32`, `bool`, `object`, ...).
    pub fn name(&self) -> String {
        match self.kind {
            ScalarKind::Float => format!("float{}", self.size * 8),
            ScalarKind::Int => format!("int{}", self.size * 8),
            ScalarKind::UInt => format!("uint{}", self.size * 8),
            ScalarKind::Bool => "bool".to_string(),
            ScalarKind::Object => "object".to_string(),
        }
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
    /// A numeric array converted to `f32` (row-major); non-finite values were replaced by 0.
    Numeric {
        /// The values, C order.
        values: Vec<f32>,
        /// How many values were non-finite after the cast to `f32` (and replaced by 0).
        non_finite: u64,
    },
    /// An object array: the element objects, C order.
    Objects(Vec<ObjId>),
}

/// A numpy array read from the pickle.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// The dtype stored in the file.
    pub dtype: DType,
    /// The shape.
    pub shape: Vec<usize>,
    /// The content.
    pub data: ArrayData,
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
    /// The result of `_reconstruct(ndarray, ...)` before its `BUILD`.
    ArrayStub,
    /// A numpy array.
    Array(Array),
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
            Object::DType(_) => "numpy.dtype",
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
}

/// A parse error: what went wrong and at which byte offset of the file.
#[derive(Debug)]
pub struct PickleError {
    /// Offset of the opcode where the problem was found.
    pub offset: u64,
    /// The problem.
    pub kind: PickleErrorKind,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.offset;
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
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            lazy_threshold: 64 * 1024,
            lazy_str_threshold: 64 * 1024,
            chunk_bytes: 8 * 1024 * 1024,
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
    pub fn take_array(&mut self, id: ObjId) -> Option<Array> {
        let slot = self.objects.get_mut(id)?;
        if !matches!(slot, Object::Array(_)) {
            return None;
        }
        match std::mem::replace(slot, Object::None) {
            Object::Array(a) => Some(a),
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
    };
    let root = machine.run()?;
    Ok(Pickle {
        objects: machine.objects,
        root,
        protocol: machine.protocol,
    })
}

type Res<T> = Result<T, PickleErrorKind>;

fn malformed<T>(msg: impl Into<String>) -> Res<T> {
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
}

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
        }
    }

    fn push_new(&mut self, obj: Object) {
        let id = self.objects.len();
        self.objects.push(obj);
        self.stack.push(id);
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
        self.memo.insert(idx, top);
        Ok(())
    }

    fn memo_get(&mut self, idx: u64) -> Res<()> {
        let id = *self
            .memo
            .get(&idx)
            .ok_or_else(|| PickleErrorKind::Malformed(format!("memo key {idx} not defined")))?;
        self.stack.push(id);
        Ok(())
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
            b'(' => self.marks.push(self.stack.len()),
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
                self.stack.push(top);
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
            b'N' => self.push_new(Object::None),
            0x88 => self.push_new(Object::Bool(true)),
            0x89 => self.push_new(Object::Bool(false)),
            b'J' => {
                let v = i32::from_le_bytes(self.src.fixed()?);
                self.push_new(Object::Int(i64::from(v)));
            }
            b'K' => {
                let v = self.src.byte()?;
                self.push_new(Object::Int(i64::from(v)));
            }
            b'M' => {
                let v = u16::from_le_bytes(self.src.fixed()?);
                self.push_new(Object::Int(i64::from(v)));
            }
            0x8a => {
                let n = u64::from(self.src.byte()?);
                let v = self.long_bytes(n)?;
                self.push_new(Object::Int(v));
            }
            0x8b => {
                let n = i32::from_le_bytes(self.src.fixed()?);
                let n = u64::try_from(n).or_else(|_| malformed("negative LONG4 size"))?;
                let v = self.long_bytes(n)?;
                self.push_new(Object::Int(v));
            }
            b'I' => {
                let line = self.text_line()?;
                let obj = match line.as_str() {
                    "00" => Object::Bool(false),
                    "01" => Object::Bool(true),
                    s => Object::Int(parse_int_text(s)?),
                };
                self.push_new(obj);
            }
            b'L' => {
                let line = self.text_line()?;
                let s = line.strip_suffix('L').unwrap_or(&line);
                let v = parse_int_text(s)?;
                self.push_new(Object::Int(v));
            }
            b'G' => {
                let v = f64::from_be_bytes(self.src.fixed()?);
                self.push_new(Object::Float(v));
            }
            b'F' => {
                let line = self.text_line()?;
                let v = line
                    .trim()
                    .parse::<f64>()
                    .or_else(|_| malformed(format!("bad float {line:?}")))?;
                self.push_new(Object::Float(v));
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
                self.push_new(o);
            }
            0x8c => {
                let n = u64::from(self.src.byte()?);
                let o = self.payload(n, true)?;
                self.push_new(o);
            }
            0x8d => {
                let n = self.u64_len()?;
                let o = self.payload(n, true)?;
                self.push_new(o);
            }
            b'V' => {
                let line = self.src.line()?;
                let s = decode_raw_unicode_escape(&line)?;
                self.push_new(Object::Str(s));
            }
            b'T' => {
                let n = i32::from_le_bytes(self.src.fixed()?);
                let n = u64::try_from(n).or_else(|_| malformed("negative BINSTRING size"))?;
                let o = self.payload(n, false)?;
                self.push_new(o);
            }
            b'U' | b'C' => {
                let n = u64::from(self.src.byte()?);
                let o = self.payload(n, false)?;
                self.push_new(o);
            }
            b'B' => {
                let n = self.u32_len()?;
                let o = self.payload(n, false)?;
                self.push_new(o);
            }
            0x8e | 0x96 => {
                let n = self.u64_len()?;
                let o = self.payload(n, false)?;
                self.push_new(o);
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Container opcodes; `false` if `op` is not one of them.
    fn container_op(&mut self, op: u8) -> Res<bool> {
        match op {
            b'}' => self.push_new(Object::Dict(Vec::new())),
            b']' => self.push_new(Object::List(Vec::new())),
            b')' => self.push_new(Object::Tuple(Vec::new())),
            0x8f => self.push_new(Object::Set(Vec::new())),
            b't' => {
                let items = self.pop_mark()?;
                self.push_new(Object::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_new(Object::Tuple(items));
            }
            b'l' => {
                let items = self.pop_mark()?;
                self.push_new(Object::List(items));
            }
            b'd' => {
                let items = self.pop_mark()?;
                let pairs = pairs_of(items)?;
                self.push_new(Object::Dict(Vec::new()));
                let dict = self.top()?;
                for (k, v) in pairs {
                    self.dict_insert(dict, k, v)?;
                }
            }
            0x91 => {
                let items = self.pop_mark()?;
                self.push_new(Object::Set(items));
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
                self.push_new(obj);
            }
            0x81 => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let obj = self.call(cls, args, "NEWOBJ")?;
                self.push_new(obj);
            }
            0x92 => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                if !matches!(self.obj(kwargs)?, Object::Dict(d) if d.is_empty()) {
                    return malformed("NEWOBJ_EX with keyword arguments is not supported");
                }
                let obj = self.call(cls, args, "NEWOBJ_EX")?;
                self.push_new(obj);
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
                self.push_new(Object::Global(g));
                Ok(())
            }
            None => Err(PickleErrorKind::ForbiddenGlobal { module, name }),
        }
    }

    fn extend_list(&mut self, list: ObjId, items: Vec<ObjId>) -> Res<()> {
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
        DType::parse(&spec)
            .map(Object::DType)
            .ok_or_else(|| PickleErrorKind::Malformed(format!("unsupported numpy dtype {spec:?}")))
    }

    fn codecs_encode(&self, args: &[ObjId]) -> Res<Object> {
        let [text, encoding] = args else {
            return malformed("_codecs.encode expects (str, encoding)");
        };
        match self.obj(*encoding)? {
            Object::Str(e) if e == "latin1" || e == "latin-1" || e == "iso-8859-1" => {}
            _ => return malformed("_codecs.encode is only accepted with 'latin1'"),
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

    fn dtype_of(&self, id: ObjId) -> Res<DType> {
        match self.obj(id)? {
            Object::DType(d) => Ok(*d),
            other => malformed(format!("expected a numpy.dtype, got {}", other.type_name())),
        }
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
        if dtype.kind == ScalarKind::Object {
            return malformed("_frombuffer of an object dtype");
        }
        let data = self.numeric_data(*buf, dtype, &shape, fortran)?;
        Ok(Object::Array(Array { dtype, shape, data }))
    }

    /// `BUILD`: sets the state of a dtype or of an array made by `_reconstruct`.
    fn build(&mut self, target: ObjId, state: ObjId) -> Res<()> {
        match self.obj(target)? {
            Object::DType(d) => {
                let d = self.dtype_state(*d, state)?;
                *self.obj_mut(target)? = Object::DType(d);
                Ok(())
            }
            Object::ArrayStub => {
                let array = self.array_state(state)?;
                *self.obj_mut(target)? = Object::Array(array);
                Ok(())
            }
            other => malformed(format!("BUILD on a {} is not supported", other.type_name())),
        }
    }

    fn dtype_state(&mut self, mut d: DType, state: ObjId) -> Res<DType> {
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
            return malformed("structured numpy dtypes are not supported");
        }
        Ok(d)
    }

    fn array_state(&mut self, state: ObjId) -> Res<Array> {
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
        let dtype = self.dtype_of(items[1])?;
        let fortran = match self.obj(items[2])? {
            Object::Bool(b) => *b,
            Object::Int(i) => *i != 0,
            _ => return malformed("array is_fortran flag must be a bool"),
        };
        let data = if dtype.kind == ScalarKind::Object {
            self.object_data(items[3], &shape, fortran)?
        } else {
            self.numeric_data(items[3], dtype, &shape, fortran)?
        };
        Ok(Array { dtype, shape, data })
    }

    fn object_data(&self, raw: ObjId, shape: &[usize], fortran: bool) -> Res<ArrayData> {
        let items = match self.obj(raw)? {
            Object::List(v) => v,
            other => return malformed(format!("object array data is a {}", other.type_name())),
        };
        let count = element_count(shape)?;
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
        let mut conv = Converter::new(dtype, shape, fortran, count);
        let chunk = self.opts.chunk_bytes;
        match raw {
            Object::Bytes(b) => conv.feed(&b)?,
            Object::LazyBytes(span) => self.src.read_span(span, chunk, &mut |c| conv.feed(c))?,
            Object::LazyLatin1(span) => {
                let mut utf8 = Latin1FromUtf8::default();
                let mut buf = Vec::new();
                self.src.read_span(span, chunk, &mut |c| {
                    buf.clear();
                    utf8.decode(c, &mut buf)?;
                    conv.feed(&buf)
                })?;
                utf8.finish()?;
            }
            _ => return malformed("array data"),
        }
        conv.finish()
    }
}

/// Number of elements of `shape` (checked).
fn element_count(shape: &[usize]) -> Res<usize> {
    shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| PickleErrorKind::Malformed(format!("array shape {shape:?} overflows")))
}

/// True when C and Fortran order give the same element sequence (at most one axis > 1).
fn is_order_free(shape: &[usize]) -> bool {
    shape.iter().filter(|&&d| d > 1).count() <= 1
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

/// Streaming decoder of UTF-8 text whose code points are all below 256 into latin-1 bytes
/// (how Python 3 protocol 2 stores `bytes`).
#[derive(Default)]
struct Latin1FromUtf8 {
    pending: Option<u8>,
}

impl Latin1FromUtf8 {
    fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Res<()> {
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

    fn finish(&self) -> Res<()> {
        match self.pending {
            Some(_) => malformed("latin1 data ends inside a UTF-8 sequence"),
            None => Ok(()),
        }
    }
}

/// Walks the C-order destination index of elements given in Fortran order.
struct FortranCursor {
    shape: Vec<usize>,
    strides: Vec<usize>,
    idx: Vec<usize>,
    dest: usize,
    started: bool,
}

impl FortranCursor {
    fn new(shape: &[usize]) -> Self {
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
    fn next_dest(&mut self) -> usize {
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
struct Converter {
    dtype: DType,
    count: usize,
    out: Vec<f32>,
    scratch: Vec<f32>,
    fortran: Option<FortranCursor>,
    written: usize,
    carry: Vec<u8>,
    non_finite: u64,
}

impl Converter {
    fn new(dtype: DType, shape: &[usize], fortran: bool, count: usize) -> Self {
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
        }
    }

    fn feed(&mut self, mut bytes: &[u8]) -> Res<()> {
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
        self.non_finite += decode_elements(self.dtype, body, dest);
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

    fn finish(self) -> Res<ArrayData> {
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
/// non-finite results by 0; returns how many were replaced.
fn decode_elements(dtype: DType, body: &[u8], out: &mut Vec<f32>) -> u64 {
    use ScalarKind::*;
    let be = dtype.big_endian;
    match (dtype.kind, dtype.size) {
        (Float, 8) => decode_floats::<8>(body, out, |b| {
            (if be {
                f64::from_be_bytes(b)
            } else {
                f64::from_le_bytes(b)
            }) as f32
        }),
        (Float, 4) => decode_floats::<4>(body, out, |b| {
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
            0.0
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
        for bad in [
            "",
            "f2",
            "f16",
            "i3",
            "U8",
            "S10",
            "c16",
            ">",
            "fx",
            "i99999999999999999999999",
        ] {
            assert!(DType::parse(bad).is_none(), "{bad}");
        }
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
            let mut c = Converter::new(d, &[4], false, 4);
            for chunk in bytes.chunks(size) {
                c.feed(chunk).unwrap();
            }
            let ArrayData::Numeric { values, non_finite } = c.finish().unwrap() else {
                panic!()
            };
            assert_eq!((values, non_finite), (vec![1.0, -2.5, 0.0, 0.0], 2));
        }
        let mut c = Converter::new(d, &[1], false, 1);
        c.feed(&bytes[..12]).unwrap_or(());
        assert!(c.finish().is_err(), "partial element");
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
