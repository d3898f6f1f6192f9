//! The opcodes the machine executes, by kind (stack, memo, numbers, text, containers,
//! calls), and the decoders they use.

use super::*;

impl<R: Read + Seek> Machine<R> {
    pub(super) fn step(&mut self, op: u8) -> Res<Option<ObjId>> {
        if op == OpCode::STOP {
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
        Err(match OpCode::refused_name(op) {
            Some(name) => PickleErrorKind::UnsupportedOpcode(op, name),
            None => PickleErrorKind::UnknownOpcode(op),
        })
    }

    /// Protocol, frame, mark and stack opcodes; `false` if `op` is not one of them.
    pub(super) fn stack_op(&mut self, op: u8) -> Res<bool> {
        match op {
            OpCode::PROTO => {
                let v = self.src.byte()?;
                if v > 5 {
                    return malformed(format!("unsupported pickle protocol {v}"));
                }
                self.protocol = v;
            }
            OpCode::FRAME => {
                let n = self.u64_len()?;
                self.src.need(n)?;
            }
            OpCode::MARK => {
                self.charge(2 * REF_COST)?;
                self.marks.push(self.stack.len());
            }
            OpCode::POP => {
                if self.stack.len() > self.floor() {
                    self.pop()?;
                } else {
                    self.pop_mark()?;
                }
            }
            OpCode::POP_MARK => {
                self.pop_mark()?;
            }
            OpCode::DUP => {
                let top = self.top()?;
                self.push_ref(top)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Memo opcodes (`PUT`, `GET`, `MEMOIZE`, ...); `false` if `op` is not one of them.
    pub(super) fn memo_op(&mut self, op: u8) -> Res<bool> {
        match op {
            OpCode::PUT => {
                let idx = self.decimal_line()?;
                self.memo_put(idx)?;
            }
            OpCode::BINPUT => {
                let idx = u64::from(self.src.byte()?);
                self.memo_put(idx)?;
            }
            OpCode::LONG_BINPUT => {
                let idx = self.u32_len()?;
                self.memo_put(idx)?;
            }
            OpCode::MEMOIZE => {
                let idx = self.memo.len() as u64;
                self.memo_put(idx)?;
            }
            OpCode::GET => {
                let idx = self.decimal_line()?;
                self.memo_get(idx)?;
            }
            OpCode::BINGET => {
                let idx = u64::from(self.src.byte()?);
                self.memo_get(idx)?;
            }
            OpCode::LONG_BINGET => {
                let idx = self.u32_len()?;
                self.memo_get(idx)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Constants and numbers; `false` if `op` is not one of them.
    pub(super) fn number_op(&mut self, op: u8) -> Res<bool> {
        match op {
            OpCode::NONE => self.push_new(Object::None)?,
            OpCode::NEWTRUE => self.push_new(Object::Bool(true))?,
            OpCode::NEWFALSE => self.push_new(Object::Bool(false))?,
            OpCode::BININT => {
                let v = i32::from_le_bytes(self.src.fixed()?);
                self.push_new(Object::Int(i64::from(v)))?;
            }
            OpCode::BININT1 => {
                let v = self.src.byte()?;
                self.push_new(Object::Int(i64::from(v)))?;
            }
            OpCode::BININT2 => {
                let v = u16::from_le_bytes(self.src.fixed()?);
                self.push_new(Object::Int(i64::from(v)))?;
            }
            OpCode::LONG1 => {
                let n = u64::from(self.src.byte()?);
                let v = self.long_bytes(n)?;
                self.push_new(Object::Int(v))?;
            }
            OpCode::LONG4 => {
                let n = i32::from_le_bytes(self.src.fixed()?);
                let n = u64::try_from(n).or_else(|_| malformed("negative LONG4 size"))?;
                let v = self.long_bytes(n)?;
                self.push_new(Object::Int(v))?;
            }
            OpCode::INT => {
                let line = self.text_line()?;
                let obj = match line.as_str() {
                    "00" => Object::Bool(false),
                    "01" => Object::Bool(true),
                    s => Object::Int(parse_int_text(s)?),
                };
                self.push_new(obj)?;
            }
            OpCode::LONG => {
                let line = self.text_line()?;
                let s = line.strip_suffix('L').unwrap_or(&line);
                let v = parse_int_text(s)?;
                self.push_new(Object::Int(v))?;
            }
            OpCode::BINFLOAT => {
                let v = f64::from_be_bytes(self.src.fixed()?);
                self.push_new(Object::Float(v))?;
            }
            OpCode::FLOAT => {
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
    pub(super) fn text_op(&mut self, op: u8) -> Res<bool> {
        match op {
            OpCode::BINUNICODE => {
                let n = self.u32_len()?;
                let o = self.payload(n, true)?;
                self.push_new(o)?;
            }
            OpCode::SHORT_BINUNICODE => {
                let n = u64::from(self.src.byte()?);
                let o = self.payload(n, true)?;
                self.push_new(o)?;
            }
            OpCode::BINUNICODE8 => {
                let n = self.u64_len()?;
                let o = self.payload(n, true)?;
                self.push_new(o)?;
            }
            OpCode::UNICODE => {
                let line = self.src.line()?;
                self.charge(2 * line.len() as u64)?;
                let s = decode_raw_unicode_escape(&line)?;
                self.push_new(Object::Str(s))?;
            }
            OpCode::BINSTRING => {
                let n = i32::from_le_bytes(self.src.fixed()?);
                let n = u64::try_from(n).or_else(|_| malformed("negative BINSTRING size"))?;
                let o = self.payload(n, false)?;
                self.push_new(o)?;
            }
            OpCode::SHORT_BINSTRING | OpCode::SHORT_BINBYTES => {
                let n = u64::from(self.src.byte()?);
                let o = self.payload(n, false)?;
                self.push_new(o)?;
            }
            OpCode::BINBYTES => {
                let n = self.u32_len()?;
                let o = self.payload(n, false)?;
                self.push_new(o)?;
            }
            OpCode::BINBYTES8 | OpCode::BYTEARRAY8 => {
                let n = self.u64_len()?;
                let o = self.payload(n, false)?;
                self.push_new(o)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Container opcodes; `false` if `op` is not one of them.
    pub(super) fn container_op(&mut self, op: u8) -> Res<bool> {
        match op {
            OpCode::EMPTY_DICT => self.push_new(Object::Dict(Vec::new()))?,
            OpCode::EMPTY_LIST => self.push_new(Object::List(Vec::new()))?,
            OpCode::EMPTY_TUPLE => self.push_new(Object::Tuple(Vec::new()))?,
            OpCode::EMPTY_SET => self.push_new(Object::Set(Vec::new()))?,
            OpCode::TUPLE => {
                let items = self.pop_mark()?;
                self.charge_refs(items.len(), REF_COST)?;
                self.push_new(Object::Tuple(items))?;
            }
            OpCode::TUPLE1..=OpCode::TUPLE3 => {
                let n = usize::from(op - OpCode::EXT4);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop()?);
                }
                items.reverse();
                self.push_new(Object::Tuple(items))?;
            }
            OpCode::LIST => {
                let items = self.pop_mark()?;
                self.charge_refs(items.len(), REF_COST)?;
                self.push_new(Object::List(items))?;
            }
            OpCode::DICT => {
                let items = self.pop_mark()?;
                let pairs = pairs_of(items)?;
                self.push_new(Object::Dict(Vec::new()))?;
                let dict = self.top()?;
                for (k, v) in pairs {
                    self.dict_insert(dict, k, v)?;
                }
            }
            OpCode::FROZENSET => {
                let items = self.pop_mark()?;
                self.charge_refs(items.len(), REF_COST)?;
                self.push_new(Object::Set(items))?;
            }
            OpCode::APPEND => {
                let v = self.pop()?;
                let list = self.top()?;
                self.extend_list(list, vec![v])?;
            }
            OpCode::APPENDS => {
                let items = self.pop_mark()?;
                let list = self.top()?;
                self.extend_list(list, items)?;
            }
            OpCode::SETITEM => {
                let v = self.pop()?;
                let k = self.pop()?;
                let dict = self.top()?;
                self.dict_insert(dict, k, v)?;
            }
            OpCode::SETITEMS => {
                let items = self.pop_mark()?;
                let dict = self.top()?;
                for (k, v) in pairs_of(items)? {
                    self.dict_insert(dict, k, v)?;
                }
            }
            OpCode::ADDITEMS => {
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
    pub(super) fn call_op(&mut self, op: u8) -> Res<bool> {
        match op {
            OpCode::GLOBAL => {
                let module = self.text_line()?;
                let name = self.text_line()?;
                self.push_global(module, name)?;
            }
            OpCode::STACK_GLOBAL => {
                let name = self.pop()?;
                let module = self.pop()?;
                let (Object::Str(m), Object::Str(n)) = (self.obj(module)?, self.obj(name)?) else {
                    return malformed("STACK_GLOBAL needs two strings");
                };
                let (m, n) = (m.clone(), n.clone());
                self.push_global(m, n)?;
            }
            OpCode::REDUCE => {
                let args = self.pop()?;
                let callable = self.pop()?;
                let obj = self.call(callable, args, "REDUCE")?;
                self.push_new(obj)?;
            }
            OpCode::NEWOBJ => {
                let args = self.pop()?;
                let cls = self.pop()?;
                let obj = self.call(cls, args, "NEWOBJ")?;
                self.push_new(obj)?;
            }
            OpCode::NEWOBJ_EX => {
                let kwargs = self.pop()?;
                let args = self.pop()?;
                let cls = self.pop()?;
                if !matches!(self.obj(kwargs)?, Object::Dict(d) if d.is_empty()) {
                    return malformed("NEWOBJ_EX with keyword arguments is not supported");
                }
                let obj = self.call(cls, args, "NEWOBJ_EX")?;
                self.push_new(obj)?;
            }
            OpCode::BUILD => {
                let state = self.pop()?;
                let target = self.top()?;
                self.build(target, state)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    }
}

/// Splits a flat `[k0, v0, k1, v1, ...]` list into pairs.
pub(super) fn pairs_of(items: Vec<ObjId>) -> Res<Vec<(ObjId, ObjId)>> {
    if !items.len().is_multiple_of(2) {
        return malformed("odd number of items for a dict");
    }
    Ok(items.chunks_exact(2).map(|p| (p[0], p[1])).collect())
}

/// Parses a decimal integer of the text opcodes (`INT`, `LONG`).
pub(super) fn parse_int_text(s: &str) -> Res<i64> {
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
pub(crate) fn decode_raw_unicode_escape(bytes: &[u8]) -> Res<String> {
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
pub(crate) struct Utf8Check {
    carry: Vec<u8>,
}

impl Utf8Check {
    pub(crate) fn feed(&mut self, chunk: &[u8]) -> Res<()> {
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

    pub(crate) fn finish(&self) -> Res<()> {
        if self.carry.is_empty() {
            Ok(())
        } else {
            malformed("string ends inside a UTF-8 character")
        }
    }
}
