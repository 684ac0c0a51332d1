//! A minimal reader for Python pickles (protocol 2, the opcodes PyTorch writes for module
//! archives), producing a plain value tree. Objects are kept symbolic — the class, its
//! constructor arguments and its state — since nothing here runs Python code.

use crate::{EmError, Result};

/// A decoded pickle value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `None`.
    None,
    /// `True` / `False`.
    Bool(bool),
    /// Any integer that fits in 64 bits.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string.
    Str(String),
    /// A tuple.
    Tuple(Vec<Value>),
    /// A list.
    List(Vec<Value>),
    /// A dict, in insertion order.
    Dict(Vec<(Value, Value)>),
    /// A reference to `module.name`.
    Global(String, String),
    /// `cls(*args)` (NEWOBJ or REDUCE) with the state given by BUILD.
    Object {
        /// The class or function called.
        class: Box<Value>,
        /// Its arguments.
        args: Vec<Value>,
        /// State set by BUILD (`__setstate__` or `__dict__.update`).
        state: Option<Box<Value>>,
    },
    /// A persistent id (PyTorch uses them for tensor storages).
    Persistent(Box<Value>),
}

impl Value {
    /// The entries of a dict value.
    pub fn as_dict(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Dict(d) => Some(d),
            _ => None,
        }
    }

    /// The string inside a `Str`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The integer inside an `Int`.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The items of a tuple or list.
    pub fn as_seq(&self) -> Option<&[Value]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self.pos + n;
        if end > self.bytes.len() {
            return Err(format!(
                "expected {n} more bytes at offset {}, found the end",
                self.pos
            ));
        }
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> std::result::Result<usize, String> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]) as usize)
    }

    fn u32(&mut self) -> std::result::Result<usize, String> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }

    fn line(&mut self) -> std::result::Result<String, String> {
        let rest = &self.bytes[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("expected a newline-terminated name")?;
        self.pos += n + 1;
        String::from_utf8(rest[..n].to_vec()).map_err(|e| e.to_string())
    }

    fn utf8(&mut self, n: usize) -> std::result::Result<String, String> {
        String::from_utf8(self.take(n)?.to_vec()).map_err(|e| e.to_string())
    }
}

/// The pickle machine's stack; each item remembers the memo slot it was stored to or loaded
/// from, so that a container filled after BINPUT (EMPTY_LIST, BINPUT, MARK, …, APPENDS) also
/// updates its memo copy.
#[derive(Default)]
struct Stack {
    items: Vec<Value>,
    tags: Vec<Option<usize>>,
}

impl Stack {
    fn push(&mut self, v: Value) {
        self.items.push(v);
        self.tags.push(None);
    }

    fn pop(&mut self) -> Option<Value> {
        self.tags.pop();
        self.items.pop()
    }

    fn last(&self) -> Option<&Value> {
        self.items.last()
    }

    fn last_mut(&mut self) -> Option<&mut Value> {
        self.items.last_mut()
    }

    fn len(&self) -> usize {
        self.items.len()
    }

    fn split_off(&mut self, at: usize) -> Vec<Value> {
        self.tags.truncate(at);
        self.items.split_off(at)
    }

    fn tag_top(&mut self, k: usize) {
        if let Some(t) = self.tags.last_mut() {
            *t = Some(k);
        }
    }

    fn top_tag(&self) -> Option<usize> {
        self.tags.last().copied().flatten()
    }
}

/// Decodes a pickle; `what` names it in errors.
pub fn parse(bytes: &[u8], what: &str) -> Result<Value> {
    run(bytes).map_err(|reason| EmError::Parse {
        path: what.into(),
        reason: format!("pickle: {reason}"),
    })
}

fn run(bytes: &[u8]) -> std::result::Result<Value, String> {
    let mut r = Reader { bytes, pos: 0 };
    let mut stack = Stack::default();
    let mut marks: Vec<usize> = Vec::new();
    let mut memo: std::collections::HashMap<usize, Value> = Default::default();
    let pop = |stack: &mut Stack| stack.pop().ok_or("stack underflow".to_string());
    let since_mark = |stack: &mut Stack, marks: &mut Vec<usize>| {
        let m = marks.pop().ok_or("MARK expected")?;
        Ok::<Vec<Value>, String>(stack.split_off(m))
    };
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 3 {
                    return Err(format!("expected pickle protocol ≤ 3, found {proto}"));
                }
            }
            b'.' => return pop(&mut stack),
            b'(' => marks.push(stack.len()),
            b'N' => stack.push(Value::None),
            0x88 => stack.push(Value::Bool(true)),
            0x89 => stack.push(Value::Bool(false)),
            b'J' => {
                let b = r.take(4)?;
                stack.push(Value::Int(
                    i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64
                ));
            }
            b'K' => stack.push(Value::Int(r.u8()? as i64)),
            b'M' => stack.push(Value::Int(r.u16()? as i64)),
            0x8a => {
                let n = r.u8()? as usize;
                let b = r.take(n)?;
                if n > 8 {
                    return Err(format!("expected an integer of ≤ 8 bytes, found {n}"));
                }
                let mut v: i64 = 0;
                for (i, &x) in b.iter().enumerate() {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && b[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(Value::Int(v));
            }
            b'G' => {
                let b = r.take(8)?;
                stack.push(Value::Float(f64::from_be_bytes(
                    b.try_into().expect("8 bytes"),
                )));
            }
            b'X' => {
                let n = r.u32()?;
                stack.push(Value::Str(r.utf8(n)?));
            }
            0x8c => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(r.utf8(n)?));
            }
            b'U' => {
                let n = r.u8()? as usize;
                stack.push(Value::Str(String::from_utf8_lossy(r.take(n)?).into_owned()));
            }
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                stack.push(Value::Global(module, name));
            }
            b')' => stack.push(Value::Tuple(Vec::new())),
            b']' => stack.push(Value::List(Vec::new())),
            b'}' => stack.push(Value::Dict(Vec::new())),
            b't' => {
                let items = since_mark(&mut stack, &mut marks)?;
                stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = (op - 0x84) as usize;
                if stack.len() < n {
                    return Err("stack underflow".into());
                }
                let items = stack.split_off(stack.len() - n);
                stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = since_mark(&mut stack, &mut marks)?;
                stack.push(Value::List(items));
            }
            b'a' | b'e' => {
                let items = if op == b'a' {
                    vec![pop(&mut stack)?]
                } else {
                    since_mark(&mut stack, &mut marks)?
                };
                match stack.last_mut() {
                    Some(Value::List(l)) => l.extend(items),
                    _ => return Err(format!("APPEND(S) at offset {at} onto a non-list")),
                }
            }
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                } else {
                    since_mark(&mut stack, &mut marks)?
                };
                if items.len() % 2 != 0 {
                    return Err("SETITEMS with an odd number of items".into());
                }
                match stack.last_mut() {
                    Some(Value::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.push((k, v));
                        }
                    }
                    _ => return Err(format!("SETITEM(S) at offset {at} onto a non-dict")),
                }
            }
            b'q' | b'r' => {
                let k = if op == b'q' {
                    r.u8()? as usize
                } else {
                    r.u32()?
                };
                memo.insert(k, stack.last().ok_or("BINPUT on an empty stack")?.clone());
                stack.tag_top(k);
            }
            b'h' | b'j' => {
                let k = if op == b'h' {
                    r.u8()? as usize
                } else {
                    r.u32()?
                };
                stack.push(memo.get(&k).ok_or(format!("memo {k} is not set"))?.clone());
                stack.tag_top(k);
            }
            b'R' | 0x81 => {
                let args = pop(&mut stack)?;
                let class = pop(&mut stack)?;
                let args = match args {
                    Value::Tuple(a) => a,
                    other => return Err(format!("expected an argument tuple, found {other:?}")),
                };
                stack.push(Value::Object {
                    class: Box::new(class),
                    args,
                    state: None,
                });
            }
            b'b' => {
                let st = pop(&mut stack)?;
                match stack.last_mut() {
                    Some(Value::Object { state, .. }) => *state = Some(Box::new(st)),
                    _ => return Err(format!("BUILD at offset {at} onto a non-object")),
                }
            }
            b'Q' => {
                let pid = pop(&mut stack)?;
                stack.push(Value::Persistent(Box::new(pid)));
            }
            other => return Err(format!("unsupported opcode 0x{other:02x} at offset {at}")),
        }
        // a container mutated in place (APPENDS, SETITEMS, BUILD) refreshes its memo copy
        if matches!(op, b'a' | b'e' | b's' | b'u' | b'b') {
            if let (Some(k), Some(v)) = (stack.top_tag(), stack.last()) {
                memo.insert(k, v.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_opcodes_torch_writes() {
        // Python: pickle.dumps({'a': [1, -2, 300, 70000], 'b': (True, None, 1.5), 'c': 'x'}, 2)
        let bytes: &[u8] = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffM,\x01Jp\x11\x01\x00eX\x01\x00\x00\x00bq\x03\x88NG?\xf8\x00\x00\x00\x00\x00\x00\x87q\x04X\x01\x00\x00\x00cq\x05X\x01\x00\x00\x00xq\x06u.";
        let v = parse(bytes, "test").unwrap();
        let d = v.as_dict().unwrap();
        assert_eq!(d[0].0, Value::Str("a".into()));
        assert_eq!(
            d[0].1,
            Value::List(vec![
                Value::Int(1),
                Value::Int(-2),
                Value::Int(300),
                Value::Int(70000)
            ])
        );
        assert_eq!(
            d[1].1,
            Value::Tuple(vec![Value::Bool(true), Value::None, Value::Float(1.5)])
        );
        assert_eq!(d[2].1.as_str(), Some("x"));
    }

    #[test]
    fn objects_keep_class_arguments_and_state_and_memo_references_resolve() {
        // GLOBAL m C, BINPUT 0, EMPTY_TUPLE, NEWOBJ, EMPTY_DICT, 'k' -> BINGET 0, SETITEM, BUILD
        let bytes: &[u8] = b"\x80\x02cm\nC\nq\x00)\x81}X\x01\x00\x00\x00kh\x00sb.";
        let v = parse(bytes, "test").unwrap();
        match v {
            Value::Object { class, args, state } => {
                assert_eq!(*class, Value::Global("m".into(), "C".into()));
                assert!(args.is_empty());
                let st = state.unwrap();
                assert_eq!(
                    st.as_dict().unwrap()[0].1,
                    Value::Global("m".into(), "C".into())
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_list_filled_after_it_was_memoised_is_seen_full_through_the_memo() {
        // Python: l = [1, 2]; pickle.dumps((l, l), 2)
        let v = parse(b"\x80\x02]q\x00(K\x01K\x02eh\x00\x86q\x01.", "t").unwrap();
        let full = Value::List(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(v, Value::Tuple(vec![full.clone(), full]));
    }

    #[test]
    fn truncated_and_unknown_input_is_an_error() {
        let err = parse(b"\x80\x02X\x05\x00\x00\x00ab", "t")
            .unwrap_err()
            .to_string();
        assert!(err.contains("more bytes"), "{err}");
        let err = parse(b"\x80\x02\xff", "t").unwrap_err().to_string();
        assert!(err.contains("unsupported opcode 0xff"), "{err}");
        let err = parse(b"\x80\x05.", "t").unwrap_err().to_string();
        assert!(err.contains("protocol"), "{err}");
    }
}
