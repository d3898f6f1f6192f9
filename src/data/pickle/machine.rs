//! The pickle virtual machine (without the ability to call anything): the byte source
//! with its length checks, the object arena, stack, marks and memo, the memory budget,
//! and the helpers the opcodes share. The opcodes themselves are in [`ops`].

use super::*;
use std::collections::HashMap;

mod ops;
pub use ops::decode_long;
#[cfg(test)]
pub(super) use ops::decode_raw_unicode_escape;
pub(super) use ops::Utf8Check;

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
