//! Porcupine's kv test files: EDN maps, one event per line, line order is time.
//!
//! Porcupine's kv model reads an absent key as `""`; seedkv's model distinguishes
//! absent from `""`. So that the files mean the same thing under [`Model::Kv`]
//! (crate::Model::Kv), this parser maps a read of `""` to "absent" and a put of `""`
//! to a delete; appends build on absent as on `""`. Revisions are reported as 0
//! everywhere, which the model accepts as long as they agree (they always do), so
//! in effect they are not checked. `:fail` drops an operation, `:info` (and an
//! invocation never completed) makes its outcome unknown.
//!
//! A small hand parser is enough for the subset of EDN these lines use: a flat map
//! of keywords to strings, keywords, integers, `nil` and booleans.

use super::{Completion, Events};
use crate::error::ParseError;
use crate::record::{Op, OpResult, Record};

#[derive(Debug, Clone, PartialEq)]
enum Edn {
    Nil,
    Bool(bool),
    Int(i64),
    Str(String),
    Keyword(String),
}

impl Edn {
    fn describe(&self) -> String {
        match self {
            Edn::Nil => "nil".into(),
            Edn::Bool(b) => b.to_string(),
            Edn::Int(i) => i.to_string(),
            Edn::Str(s) => format!("{s:?}"),
            Edn::Keyword(k) => format!(":{k}"),
        }
    }
}

struct Cursor<'a> {
    chars: std::iter::Peekable<std::str::CharIndices<'a>>,
}

fn is_delim(c: char) -> bool {
    c.is_whitespace() || matches!(c, ',' | '{' | '}' | '[' | ']' | '(' | ')' | '"')
}

impl<'a> Cursor<'a> {
    fn skip_ws(&mut self) {
        while let Some(&(_, c)) = self.chars.peek() {
            if c.is_whitespace() || c == ',' {
                self.chars.next();
            } else {
                break;
            }
        }
    }

    fn peek(&mut self) -> Option<char> {
        self.chars.peek().map(|&(_, c)| c)
    }

    fn symbol(&mut self) -> String {
        let mut s = String::new();
        while let Some(c) = self.peek() {
            if is_delim(c) {
                break;
            }
            s.push(c);
            self.chars.next();
        }
        s
    }

    fn string(&mut self) -> Result<String, String> {
        // Opening quote already consumed.
        let mut s = String::new();
        loop {
            match self.chars.next() {
                None => return Err("unterminated string".into()),
                Some((_, '"')) => return Ok(s),
                Some((_, '\\')) => match self.chars.next() {
                    Some((_, 'n')) => s.push('\n'),
                    Some((_, 't')) => s.push('\t'),
                    Some((_, 'r')) => s.push('\r'),
                    Some((_, '"')) => s.push('"'),
                    Some((_, '\\')) => s.push('\\'),
                    Some((_, c)) => return Err(format!("unsupported escape \\{c} in string")),
                    None => return Err("unterminated string".into()),
                },
                Some((_, c)) => s.push(c),
            }
        }
    }

    fn value(&mut self) -> Result<Edn, String> {
        match self.peek() {
            None => Err("missing value at end of line".into()),
            Some('"') => {
                self.chars.next();
                Ok(Edn::Str(self.string()?))
            }
            Some(':') => {
                self.chars.next();
                let k = self.symbol();
                if k.is_empty() {
                    Err("empty keyword".into())
                } else {
                    Ok(Edn::Keyword(k))
                }
            }
            Some(c) if is_delim(c) => Err(format!("unexpected {c:?} where a value should be")),
            Some(_) => {
                let sym = self.symbol();
                match sym.as_str() {
                    "nil" => Ok(Edn::Nil),
                    "true" => Ok(Edn::Bool(true)),
                    "false" => Ok(Edn::Bool(false)),
                    _ => sym
                        .parse::<i64>()
                        .map(Edn::Int)
                        .map_err(|_| format!("unsupported value {sym:?}")),
                }
            }
        }
    }
}

/// Parses one flat EDN map `{:k v, ...}`.
fn parse_map(line: &str) -> Result<Vec<(String, Edn)>, String> {
    let mut cur = Cursor {
        chars: line.char_indices().peekable(),
    };
    cur.skip_ws();
    if cur.chars.next().map(|(_, c)| c) != Some('{') {
        return Err("expected an EDN map starting with '{'".into());
    }
    let mut entries = Vec::new();
    loop {
        cur.skip_ws();
        match cur.peek() {
            None => return Err("missing closing '}'".into()),
            Some('}') => {
                cur.chars.next();
                break;
            }
            Some(_) => {}
        }
        let key = match cur.value()? {
            Edn::Keyword(k) => k,
            other => return Err(format!("map key {} is not a keyword", other.describe())),
        };
        cur.skip_ws();
        if cur.peek() == Some('}') || cur.peek().is_none() {
            return Err(format!("key :{key} has no value"));
        }
        let value = cur.value()?;
        if entries.iter().any(|(k, _)| *k == key) {
            return Err(format!("duplicate key :{key}"));
        }
        entries.push((key, value));
    }
    cur.skip_ws();
    if let Some(c) = cur.peek() {
        return Err(format!("unexpected {c:?} after the closing '}}'"));
    }
    Ok(entries)
}

fn field<'m>(map: &'m [(String, Edn)], name: &str) -> Result<&'m Edn, String> {
    map.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .ok_or_else(|| format!("missing :{name}"))
}

/// A string value; `nil` and `""` are both "no value" (`None`).
fn opt_string(v: &Edn, what: &str) -> Result<Option<String>, String> {
    match v {
        Edn::Nil => Ok(None),
        Edn::Str(s) if s.is_empty() => Ok(None),
        Edn::Str(s) => Ok(Some(s.clone())),
        other => Err(format!(
            "{what} must be a string or nil, not {}",
            other.describe()
        )),
    }
}

pub(super) fn parse(text: &str) -> Result<Vec<Record>, ParseError> {
    let mut events = Events::new();
    for (idx, line) in text.lines().enumerate() {
        let lineno = idx + 1;
        if line.trim().is_empty() {
            continue;
        }
        let err = |m: String| ParseError::at(lineno, m);
        let map = parse_map(line).map_err(err)?;
        let process = match field(&map, "process").map_err(err)? {
            Edn::Int(p) if *p >= 0 => *p as u64,
            other => {
                return Err(err(format!(
                    ":process must be a non-negative integer, not {}",
                    other.describe()
                )))
            }
        };
        let kind = match field(&map, "type").map_err(err)? {
            Edn::Keyword(k) => k.as_str(),
            other => {
                return Err(err(format!(
                    ":type must be a keyword, not {}",
                    other.describe()
                )))
            }
        };
        let f = match field(&map, "f").map_err(err)? {
            Edn::Keyword(k) => k.as_str(),
            other => {
                return Err(err(format!(
                    ":f must be a keyword, not {}",
                    other.describe()
                )))
            }
        };
        let key = match field(&map, "key").map_err(err)? {
            Edn::Str(s) => s.clone(),
            Edn::Int(i) => i.to_string(),
            other => {
                return Err(err(format!(
                    ":key must be a string, not {}",
                    other.describe()
                )))
            }
        };
        let value = match map.iter().find(|(k, _)| k == "value") {
            Some((_, v)) => opt_string(v, ":value").map_err(err)?,
            None => None,
        };
        match kind {
            "invoke" => {
                let op = match f {
                    "get" => Op::Get { key },
                    "put" => match value {
                        Some(value) => Op::Put { key, value },
                        None => Op::Delete { key },
                    },
                    "append" => Op::Append {
                        key,
                        value: value.unwrap_or_default(),
                    },
                    other => {
                        return Err(err(format!(
                            "unknown operation :{other} (expected :get, :put or :append)"
                        )))
                    }
                };
                events.invoke(process, lineno, f, op)?;
            }
            "ok" => {
                let result = match f {
                    "get" => OpResult::Get { value, revision: 0 },
                    // Which of Put/Delete was recorded at the invocation decides
                    // the result type; both carry revision 0.
                    "put" => OpResult::Put { revision: 0 },
                    "append" => OpResult::Append,
                    other => return Err(err(format!("unknown operation :{other}"))),
                };
                events.complete_kv(process, lineno, f, result)?;
            }
            "fail" => events.complete(process, lineno, f, Completion::Drop)?,
            "info" => events.complete(process, lineno, f, Completion::Unknown)?,
            other => {
                return Err(err(format!(
                    "unknown event type :{other} (expected :invoke, :ok, :fail or :info)"
                )))
            }
        }
    }
    Ok(events.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edn_map_parses() {
        let m =
            parse_map(r#"{:process 0, :type :invoke, :f :append, :key "4", :value "x \"0\" y"}"#)
                .expect("valid map");
        assert_eq!(m.len(), 5);
        assert_eq!(m[0], ("process".to_string(), Edn::Int(0)));
        assert_eq!(m[4], ("value".to_string(), Edn::Str("x \"0\" y".into())));
        assert!(parse_map("{:a 1").is_err());
        assert!(parse_map("{:a}").is_err());
        assert!(parse_map("{:a 1} x").is_err());
        assert!(parse_map("{1 1}").is_err());
        assert!(parse_map(r#"{:a "open}"#).is_err());
    }
}
