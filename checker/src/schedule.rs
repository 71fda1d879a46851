//! Deciding every partition at once, within a budget.
//!
//! A history is linearizable only if every partition is, and it is not as soon as
//! one partition is not. Searching the partitions one after another makes a quick
//! violation wait for every hard partition before it; so the searches run
//! interleaved, round-robin in slices of [`SLICE_STEPS`] steps, and the first
//! partition that fails ends the check. The interleaving is deterministic (no
//! threads), so a verdict inside the simulator replays with its seed.
//!
//! Searches are exponential in the worst case, so each check has a [`Budget`]:
//! a time limit and a bound on the memory the searches hold. When memory runs
//! out, the search holding the most is given up (its partition stays undecided)
//! and the others go on, since one of them may still fail; when time runs out,
//! every undecided partition stays so. A check that leaves a partition undecided
//! and finds no violation has verdict [`Verdict::Unknown`](crate::Verdict).

use std::fmt;
use std::time::{Duration, Instant};

use crate::partition::Partition;
use crate::search::{Progress, Search};

/// Steps one partition's search runs before the next partition's turn: long
/// enough that switching costs nothing, short enough (well under a millisecond)
/// that no partition waits long for its turn.
pub(crate) const SLICE_STEPS: u64 = 4096;

/// The default bound on the memory the searches hold (see [`Budget`]).
pub const DEFAULT_MAX_SEARCH_BYTES: usize = 512 << 20;

/// How much a check may spend before it answers [`Verdict::Unknown`](crate::Verdict).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Wall-clock (monotonic) time for the whole check; `None`: no limit.
    /// Inside the simulator time is virtual and does not pass while the checker
    /// computes, so there only `max_search_bytes` bounds a check.
    pub timeout: Option<Duration>,
    /// Bound on the bytes all searches hold at once (their memos, stacks and
    /// interned values), estimated from sizes so that the bound is deterministic.
    pub max_search_bytes: usize,
}

impl Default for Budget {
    /// No time limit and [`DEFAULT_MAX_SEARCH_BYTES`].
    fn default() -> Self {
        Budget {
            timeout: None,
            max_search_bytes: DEFAULT_MAX_SEARCH_BYTES,
        }
    }
}

/// Which part of a [`Budget`] ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The time limit passed.
    Time(Duration),
    /// The searches held more than this many bytes.
    Memory(usize),
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Time(limit) => write!(f, "time limit of {:.1} s", limit.as_secs_f64()),
            Limit::Memory(bytes) => write!(f, "memory limit of {} MiB", bytes >> 20),
        }
    }
}

/// What the interleaved searches found.
pub(crate) struct Outcome {
    /// Index of the partition that is not linearizable, if one was found.
    pub failing: Option<usize>,
    /// Indices of partitions left undecided (also those given up before a failure
    /// was found), ascending, and the limit that stopped the first of them.
    pub undecided: Vec<usize>,
    pub limit: Option<Limit>,
}

/// Searches every partition, interleaved, until one fails, all pass, or the
/// budget runs out.
pub(crate) fn decide(partitions: &mut [Partition], budget: &Budget) -> Outcome {
    // A timeout too large to add to the clock is no limit.
    let deadline = budget
        .timeout
        .and_then(|t| Instant::now().checked_add(t).map(|at| (at, t)));
    // Active searches in partition order, each with the bytes it held after its
    // last slice; a decided or abandoned one leaves the list.
    let mut active: Vec<Active> = partitions
        .iter()
        .enumerate()
        .map(|(index, part)| Active {
            index,
            search: Search::new(part),
            bytes: 0,
        })
        .collect();
    let mut held_bytes: usize = 0;
    let mut undecided = Vec::new();
    let mut limit = None;
    while !active.is_empty() {
        let mut position = 0;
        while position < active.len() {
            let current = &mut active[position];
            let part = &mut partitions[current.index];
            let progress = current.search.run(part, SLICE_STEPS);
            let bytes = current.search.bytes() + part.ctx.interner.bytes();
            held_bytes = held_bytes - current.bytes + bytes;
            current.bytes = bytes;
            match progress {
                Progress::NotLinearizable => {
                    undecided.sort_unstable();
                    return Outcome {
                        failing: Some(current.index),
                        undecided,
                        limit,
                    };
                }
                Progress::Linearizable => {
                    held_bytes -= active.remove(position).bytes;
                    part.release_search_memory();
                }
                Progress::Running => position += 1,
            }
            // Memory: give up the largest search until the rest fit.
            while held_bytes > budget.max_search_bytes {
                let Some(largest) = (0..active.len()).max_by_key(|&i| active[i].bytes) else {
                    break;
                };
                let given_up = active.remove(largest);
                held_bytes -= given_up.bytes;
                partitions[given_up.index].release_search_memory();
                undecided.push(given_up.index);
                limit.get_or_insert(Limit::Memory(budget.max_search_bytes));
                if largest < position {
                    position -= 1;
                }
            }
            if let Some((at, timeout)) = deadline {
                if !active.is_empty() && Instant::now() >= at {
                    undecided.extend(active.drain(..).map(|a| a.index));
                    limit.get_or_insert(Limit::Time(timeout));
                }
            }
        }
    }
    undecided.sort_unstable();
    Outcome {
        failing: None,
        undecided,
        limit,
    }
}

struct Active {
    index: usize,
    search: Search,
    bytes: usize,
}
