//! Sequential specifications ("models") of the store, in a compact form.
//!
//! The search explores many (linearized set, model state) configurations and
//! remembers every one it has seen, so the state must be small and cheap to hash
//! and compare. This module therefore compiles each [`Record`] into a [`Step`] over
//! small integers: keys become indices into the partition's state vector and values
//! become interned ids (0 = absent). [`apply`] is the one place that says what each
//! operation does to the state and which outputs are allowed, for both models.

use crate::fxhash::FxMap;
use std::fmt;
use std::str::FromStr;

use crate::error::ParseModelError;
use crate::record::{Op, OpResult, Record};

/// Which sequential specification to check against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// seedkv's key-value store: values *and* revisions are checked.
    ///
    /// A get must return the key's current value (absent → `None`) and, when the
    /// state's revision for the key is known, that revision (0 when absent). Writes
    /// take the revision their result reports (a delete leaves the key absent with
    /// revision 0). A write whose outcome is unknown leaves the revision unknown; the
    /// first later read or failed cas that reports a revision for it fixes it.
    Kv,
    /// One compare-and-set register per key, exactly Porcupine's etcd model:
    /// the same value semantics as [`Model::Kv`] but revisions are ignored.
    Register,
}

impl Model {
    pub(crate) fn checks_revisions(self) -> bool {
        matches!(self, Model::Kv)
    }
}

impl FromStr for Model {
    type Err = ParseModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "kv" => Ok(Model::Kv),
            "register" => Ok(Model::Register),
            other => Err(ParseModelError(other.to_string())),
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Model::Kv => "kv",
            Model::Register => "register",
        })
    }
}

/// Interned value id; [`ABSENT`] is the absent key.
pub(crate) type Val = u32;
/// The value id of an absent key.
pub(crate) const ABSENT: Val = 0;
/// Revision not known (an unknown-outcome write happened, or an append).
pub(crate) const REV_UNKNOWN: u64 = u64::MAX;

/// The state of one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Slot {
    pub val: Val,
    pub rev: u64,
}

/// The model state of a partition: one slot per key of the partition.
pub(crate) type State = Box<[Slot]>;

/// The initial state of a partition with `keys` keys: all absent, revision 0.
pub(crate) fn initial_state(keys: usize) -> State {
    vec![
        Slot {
            val: ABSENT,
            rev: 0
        };
        keys
    ]
    .into_boxed_slice()
}

/// Interns value strings of one partition. Id 0 is reserved for "absent".
#[derive(Debug)]
pub(crate) struct Interner {
    ids: FxMap<String, Val>,
    texts: Vec<String>,
    /// Heap bytes of the texts' own allocations (each text is stored twice).
    text_bytes: usize,
}

impl Interner {
    pub fn new() -> Self {
        Interner {
            ids: FxMap::default(),
            texts: vec![String::new()],
            text_bytes: 0,
        }
    }

    pub fn intern(&mut self, s: &str) -> Val {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.texts.len() as Val;
        self.text_bytes += 2 * crate::search::allocation_bytes(s.len());
        self.texts.push(s.to_string());
        self.ids.insert(s.to_string(), id);
        id
    }

    pub fn intern_opt(&mut self, s: Option<&str>) -> Val {
        match s {
            None => ABSENT,
            Some(s) => self.intern(s),
        }
    }

    /// An estimate of the heap bytes the interner holds: appends intern a new
    /// text for every order the search tries, so this grows with the search.
    pub fn bytes(&self) -> usize {
        // A map slot is a String and an id (32 bytes) and a control byte; a vector
        // slot is a String. Growing tables hold the old one with the new (1.5x).
        let tables = (self.ids.capacity() * 33 + self.texts.capacity() * 24) * 3 / 2;
        tables + self.text_bytes
    }

    /// The text of a value; absent reads as "" (what appends build on).
    pub fn text(&self, v: Val) -> &str {
        self.texts.get(v as usize).map(String::as_str).unwrap_or("")
    }
}

/// What the client learnt about a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Unknown,
    Succeeded(u64),
    Failed(u64),
}

/// One write inside a batch: `expect: Some(e)` is a cas comparing with `e`;
/// a delete writes [`ABSENT`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BatchItem {
    pub key: u32,
    pub expect: Option<Val>,
    pub value: Val,
}

/// A compiled operation (input and output together) over partition-local keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// A read with a known answer.
    Get {
        key: u32,
        value: Val,
        rev: u64,
    },
    /// Put (or delete: `value == ABSENT`); `rev` is REV_UNKNOWN if the outcome is.
    Write {
        key: u32,
        value: Val,
        rev: u64,
    },
    Cas {
        key: u32,
        expect: Val,
        new: Val,
        outcome: Outcome,
    },
    Batch {
        items: Vec<BatchItem>,
        outcome: Outcome,
    },
    Append {
        key: u32,
        suffix: String,
    },
    /// Several reads at one point, each with a known answer.
    MultiGet {
        reads: Vec<(u32, Val, u64)>,
    },
    /// A delete whose answer said whether the key was there.
    Delete {
        key: u32,
        existed: bool,
    },
}

/// Per-partition context the steps need.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub revisions: bool,
    pub interner: Interner,
}

fn write_slot(slot: &mut Slot, value: Val, rev: u64, revisions: bool) {
    slot.val = value;
    if revisions {
        slot.rev = if value == ABSENT { 0 } else { rev };
    }
}

/// Whether `reported` is consistent with the slot's revision; an unknown revision
/// is fixed to the reported one.
fn revision_matches(slot: &mut Slot, reported: u64, revisions: bool) -> bool {
    if !revisions {
        return true;
    }
    if slot.rev == REV_UNKNOWN {
        slot.rev = reported;
        true
    } else {
        slot.rev == reported
    }
}

/// Applies `step` to `state`: `None` if the model forbids the step's output in this
/// state, otherwise the next state.
pub(crate) fn apply(ctx: &mut Ctx, state: &[Slot], step: &Step) -> Option<State> {
    let revisions = ctx.revisions;
    let mut next: State = state.into();
    match step {
        Step::Get { key, value, rev } => {
            let slot = next.get_mut(*key as usize)?;
            if slot.val != *value || !revision_matches(slot, *rev, revisions) {
                return None;
            }
        }
        Step::Write { key, value, rev } => {
            let slot = next.get_mut(*key as usize)?;
            write_slot(slot, *value, *rev, revisions);
        }
        Step::MultiGet { reads } => {
            for (key, value, rev) in reads {
                let slot = next.get_mut(*key as usize)?;
                if slot.val != *value || !revision_matches(slot, *rev, revisions) {
                    return None;
                }
            }
        }
        Step::Delete { key, existed } => {
            let slot = next.get_mut(*key as usize)?;
            if (slot.val != ABSENT) != *existed {
                return None;
            }
            write_slot(slot, ABSENT, 0, revisions);
        }
        Step::Cas {
            key,
            expect,
            new,
            outcome,
        } => {
            let slot = next.get_mut(*key as usize)?;
            let holds = slot.val == *expect;
            match *outcome {
                Outcome::Unknown => {
                    if holds {
                        write_slot(slot, *new, REV_UNKNOWN, revisions);
                    }
                }
                Outcome::Succeeded(rev) => {
                    if !holds {
                        return None;
                    }
                    write_slot(slot, *new, rev, revisions);
                }
                Outcome::Failed(rev) => {
                    if holds || !revision_matches(slot, rev, revisions) {
                        return None;
                    }
                }
            }
        }
        Step::Batch { items, outcome } => {
            let mut holds = true;
            for item in items {
                if let Some(expect) = item.expect {
                    if state.get(item.key as usize)?.val != expect {
                        holds = false;
                    }
                }
            }
            let rev = match *outcome {
                Outcome::Unknown if !holds => return Some(next),
                Outcome::Unknown => REV_UNKNOWN,
                Outcome::Succeeded(rev) if holds => rev,
                Outcome::Failed(_) if !holds => return Some(next),
                Outcome::Succeeded(_) | Outcome::Failed(_) => return None,
            };
            for item in items {
                let slot = next.get_mut(item.key as usize)?;
                write_slot(slot, item.value, rev, revisions);
            }
        }
        Step::Append { key, suffix } => {
            let slot = next.get_mut(*key as usize)?;
            if !suffix.is_empty() {
                let mut text =
                    String::with_capacity(ctx.interner.text(slot.val).len() + suffix.len());
                text.push_str(ctx.interner.text(slot.val));
                text.push_str(suffix);
                let value = ctx.interner.intern(&text);
                write_slot(slot, value, REV_UNKNOWN, revisions);
            } else if revisions && slot.val != ABSENT {
                slot.rev = REV_UNKNOWN;
            }
        }
    }
    Some(next)
}

/// Compiles a validated record. `Ok(None)`: the record constrains nothing (a read
/// with unknown outcome) and is dropped. `key_of` maps a key to its local index.
pub(crate) fn compile(
    record: &Record,
    key_of: &impl Fn(&str) -> Option<u32>,
    interner: &mut Interner,
) -> Result<Option<Step>, String> {
    let key_idx = |key: &str| key_of(key).ok_or_else(|| format!("key {key:?} not in partition"));
    let mismatch = |r: &OpResult| {
        format!(
            "result of type {:?} does not answer an op of type {:?}",
            r.kind(),
            record.op.kind()
        )
    };
    let step = match (&record.op, &record.result) {
        (Op::Get { .. }, None) => return Ok(None),
        (Op::Get { key }, Some(OpResult::Get { value, revision })) => Step::Get {
            key: key_idx(key)?,
            value: interner.intern_opt(value.as_deref()),
            rev: *revision,
        },
        (Op::Put { key, value }, result) => Step::Write {
            key: key_idx(key)?,
            value: interner.intern(value),
            rev: match result {
                None => REV_UNKNOWN,
                Some(OpResult::Put { revision }) => *revision,
                Some(r) => return Err(mismatch(r)),
            },
        },
        (Op::Delete { key }, result) => match result {
            Some(OpResult::Delete {
                existed: Some(existed),
                ..
            }) => Step::Delete {
                key: key_idx(key)?,
                existed: *existed,
            },
            None | Some(OpResult::Delete { existed: None, .. }) => Step::Write {
                key: key_idx(key)?,
                value: ABSENT,
                rev: 0,
            },
            Some(r) => return Err(mismatch(r)),
        },
        (Op::MultiGet { .. }, None) => return Ok(None),
        (Op::MultiGet { keys }, Some(OpResult::MultiGet { values })) => {
            let mut reads = Vec::with_capacity(keys.len());
            for (key, read) in keys.iter().zip(values) {
                reads.push((
                    key_idx(key)?,
                    interner.intern_opt(read.value.as_deref()),
                    read.revision,
                ));
            }
            Step::MultiGet { reads }
        }
        (Op::Cas { key, expect, new }, result) => Step::Cas {
            key: key_idx(key)?,
            expect: interner.intern_opt(expect.as_deref()),
            new: interner.intern_opt(new.as_deref()),
            outcome: match result {
                None => Outcome::Unknown,
                Some(OpResult::Cas {
                    succeeded: true,
                    revision,
                }) => Outcome::Succeeded(*revision),
                Some(OpResult::Cas {
                    succeeded: false,
                    revision,
                }) => Outcome::Failed(*revision),
                Some(r) => return Err(mismatch(r)),
            },
        },
        (Op::Batch { ops }, result) => {
            let mut items = Vec::with_capacity(ops.len());
            for op in ops {
                items.push(match op {
                    Op::Put { key, value } => BatchItem {
                        key: key_idx(key)?,
                        expect: None,
                        value: interner.intern(value),
                    },
                    Op::Delete { key } => BatchItem {
                        key: key_idx(key)?,
                        expect: None,
                        value: ABSENT,
                    },
                    Op::Cas { key, expect, new } => BatchItem {
                        key: key_idx(key)?,
                        expect: Some(interner.intern_opt(expect.as_deref())),
                        value: interner.intern_opt(new.as_deref()),
                    },
                    other => {
                        return Err(format!(
                            "a batch may contain only put, delete and cas, not {}",
                            other.kind()
                        ))
                    }
                });
            }
            Step::Batch {
                items,
                outcome: match result {
                    None => Outcome::Unknown,
                    Some(OpResult::Batch {
                        succeeded: true,
                        revision,
                    }) => Outcome::Succeeded(*revision),
                    Some(OpResult::Batch {
                        succeeded: false,
                        revision,
                    }) => Outcome::Failed(*revision),
                    Some(r) => return Err(mismatch(r)),
                },
            }
        }
        (Op::Append { key, value }, result) => {
            if let Some(r) = result {
                if !matches!(r, OpResult::Append) {
                    return Err(mismatch(r));
                }
            }
            Step::Append {
                key: key_idx(key)?,
                suffix: value.clone(),
            }
        }
        (Op::Get { .. } | Op::MultiGet { .. }, Some(r)) => return Err(mismatch(r)),
    };
    Ok(Some(step))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(revisions: bool) -> Ctx {
        Ctx {
            revisions,
            interner: Interner::new(),
        }
    }

    #[test]
    fn model_from_str() {
        assert_eq!("kv".parse::<Model>(), Ok(Model::Kv));
        assert_eq!("register".parse::<Model>(), Ok(Model::Register));
        let err = "KV".parse::<Model>().expect_err("case matters");
        assert!(err.to_string().contains("expected \"kv\" or \"register\""));
    }

    #[test]
    fn cas_failure_fixes_unknown_revision() {
        let mut c = ctx(true);
        let one = c.interner.intern("1");
        let two = c.interner.intern("2");
        let s0 = initial_state(1);
        let s1 = apply(
            &mut c,
            &s0,
            &Step::Write {
                key: 0,
                value: one,
                rev: REV_UNKNOWN,
            },
        )
        .expect("write always applies");
        let fail = Step::Cas {
            key: 0,
            expect: two,
            new: one,
            outcome: Outcome::Failed(9),
        };
        let s2 = apply(&mut c, &s1, &fail).expect("comparison fails");
        assert_eq!(s2[0], Slot { val: one, rev: 9 });
        let read_other = Step::Get {
            key: 0,
            value: one,
            rev: 8,
        };
        assert!(apply(&mut c, &s2, &read_other).is_none());
        // Register model ignores revisions.
        let mut r = ctx(false);
        let one_r = r.interner.intern("1");
        let s = apply(
            &mut r,
            &initial_state(1),
            &Step::Write {
                key: 0,
                value: one_r,
                rev: 5,
            },
        )
        .expect("write");
        assert!(apply(
            &mut r,
            &s,
            &Step::Get {
                key: 0,
                value: one_r,
                rev: 77
            }
        )
        .is_some());
    }

    #[test]
    fn append_builds_on_absent_as_empty() {
        let mut c = ctx(true);
        let s = apply(
            &mut c,
            &initial_state(1),
            &Step::Append {
                key: 0,
                suffix: "ab".into(),
            },
        )
        .expect("append");
        let s = apply(
            &mut c,
            &s,
            &Step::Append {
                key: 0,
                suffix: "c".into(),
            },
        )
        .expect("append");
        let abc = c.interner.intern("abc");
        assert_eq!(s[0].val, abc);
    }
}
