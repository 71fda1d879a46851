//! Jepsen etcd logs: one compare-and-set register.
//!
//! These are the reference histories Porcupine (and Alex Horn's checker before it)
//! is tested on; reading them lets our tests assert the known verdicts. The mapping
//! follows Porcupine's own parser for these files:
//!
//! * `:invoke :read nil` / `:ok :read v` → `Get` (`nil` = absent);
//! * `:invoke :write v` / `:ok :write v` → `Put`;
//! * `:invoke :cas [a b]` / `:ok` → `Cas` succeeded; `:fail` → `Cas` whose
//!   comparison failed;
//! * `:fail :read` (e.g. `:timed-out`) and `:fail :write` → the operation did
//!   not happen; it is dropped;
//! * `:info` and invocations never completed → unknown outcome.
//!
//! Lines that are not `jepsen.util - <process> :<type> ...` op lines are noise.

use super::{Completion, Events};
use crate::error::ParseError;
use crate::record::{Op, OpResult};

/// The key under which the single register of a Jepsen etcd log is recorded.
pub const JEPSEN_KEY: &str = "register";

/// The tokens after `jepsen.util` if the line is an op line:
/// `- <process> :<type> ...`.
fn op_tokens(line: &str) -> Option<Vec<&str>> {
    let pos = line.find("jepsen.util")?;
    let tokens: Vec<&str> = line[pos + "jepsen.util".len()..]
        .split_whitespace()
        .collect();
    if tokens.len() >= 3
        && tokens[0] == "-"
        && tokens[1].parse::<u64>().is_ok()
        && tokens[2].starts_with(':')
    {
        Some(tokens)
    } else {
        None
    }
}

pub(super) fn is_op_line(line: &str) -> bool {
    op_tokens(line).is_some()
}

fn cas_args(value: &str, lineno: usize) -> Result<(String, String), ParseError> {
    let inner = value
        .strip_prefix('[')
        .and_then(|v| v.strip_suffix(']'))
        .ok_or_else(|| {
            ParseError::at(
                lineno,
                format!("cas argument {value:?} is not [expected new]"),
            )
        })?;
    let parts: Vec<&str> = inner.split_whitespace().collect();
    match parts.as_slice() {
        [a, b] => Ok((a.to_string(), b.to_string())),
        _ => Err(ParseError::at(
            lineno,
            format!("cas argument {value:?} must have exactly two elements"),
        )),
    }
}

pub(super) fn parse(text: &str) -> Result<Vec<crate::record::Record>, ParseError> {
    let mut events = Events::new();
    for (idx, line) in text.lines().enumerate() {
        let lineno = idx + 1;
        let Some(tokens) = op_tokens(line) else {
            continue;
        };
        let process: u64 = tokens[1]
            .parse()
            .map_err(|_| ParseError::at(lineno, "bad process number"))?;
        let kind = tokens[2];
        let f = tokens
            .get(3)
            .copied()
            .ok_or_else(|| ParseError::at(lineno, format!("{kind} without an operation")))?;
        let f = f
            .strip_prefix(':')
            .ok_or_else(|| ParseError::at(lineno, format!("operation {f:?} is not a keyword")))?;
        let value = tokens[4..].join(" ");
        let key = JEPSEN_KEY.to_string();
        let need_value = || {
            if value.is_empty() {
                Err(ParseError::at(lineno, format!(":{f} without a value")))
            } else {
                Ok(value.clone())
            }
        };
        match kind {
            ":invoke" => {
                let op = match f {
                    "read" => Op::Get { key },
                    "write" => Op::Put {
                        key,
                        value: need_value()?,
                    },
                    "cas" => {
                        let (expect, new) = cas_args(&need_value()?, lineno)?;
                        Op::Cas {
                            key,
                            expect: Some(expect),
                            new: Some(new),
                        }
                    }
                    other => {
                        return Err(ParseError::at(
                            lineno,
                            format!("unknown operation :{other} (expected :read, :write or :cas)"),
                        ))
                    }
                };
                events.invoke(process, lineno, f, op)?;
            }
            ":ok" => {
                let result = match f {
                    "read" => {
                        let v = need_value()?;
                        OpResult::Get {
                            value: if v == "nil" { None } else { Some(v) },
                            revision: 0,
                        }
                    }
                    "write" => OpResult::Put { revision: 0 },
                    "cas" => OpResult::Cas {
                        succeeded: true,
                        revision: 0,
                    },
                    other => {
                        return Err(ParseError::at(
                            lineno,
                            format!("unknown operation :{other}"),
                        ))
                    }
                };
                events.complete(process, lineno, f, Completion::Done(result))?;
            }
            ":fail" => {
                let completion = match f {
                    "read" | "write" => Completion::Drop,
                    "cas" => Completion::Done(OpResult::Cas {
                        succeeded: false,
                        revision: 0,
                    }),
                    other => {
                        return Err(ParseError::at(
                            lineno,
                            format!("unknown operation :{other}"),
                        ))
                    }
                };
                events.complete(process, lineno, f, completion)?;
            }
            ":info" => events.complete(process, lineno, f, Completion::Unknown)?,
            other => {
                return Err(ParseError::at(
                    lineno,
                    format!("unknown event type {other} (expected :invoke, :ok, :fail or :info)"),
                ))
            }
        }
    }
    Ok(events.finish())
}
