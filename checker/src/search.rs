//! The linearizability search for one partition (Wing & Gong, with Lowe's memo).
//!
//! This is the algorithm Porcupine uses. Calls and returns are laid out in time
//! order in a doubly linked list. Walking the list, the search tries to linearize
//! each pending call right now (apply it to the model state); a return entry reached
//! before its operation was linearized is a dead end, so the search backtracks by
//! undoing the most recent linearization and trying the next candidate. A memo of
//! every (set of linearized operations, model state) pair already reached prunes
//! repeated work, which is what keeps the search polynomial in practice.
//!
//! The search is a value ([`Search`]) that runs in bounded slices
//! ([`Search::run`]): the scheduler in `lib.rs` interleaves every partition's
//! search, so the first partition that fails ends the check wherever it stands in
//! the history, and it can stop a search that outgrows its time or memory budget.
//! Backtracking uses an explicit stack, so deep histories cannot overflow the call
//! stack. Operations with unknown outcome return at +infinity: they may be
//! linearized anywhere after their call, or (equivalently) after everything else.

use crate::fxhash::FxSet;
use crate::model::{apply, initial_state, Slot, State};
use crate::partition::Partition;

const NIL: usize = usize::MAX;

/// Bytes one heap allocation of `bytes` really takes: the allocator's header and
/// its 16-byte rounding.
pub(crate) fn allocation_bytes(bytes: usize) -> usize {
    bytes.div_ceil(16) * 16 + 16
}

/// Linked list of call/return entries, in arrays. Node `entries` is the head
/// sentinel.
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    head: usize,
}

impl EntryList {
    fn new(entries: usize) -> Self {
        let head = entries;
        let mut next = vec![NIL; entries + 1];
        let mut prev = vec![NIL; entries + 1];
        // head -> 0 -> 1 -> ... -> entries-1
        next[head] = if entries > 0 { 0 } else { NIL };
        for i in 0..entries {
            prev[i] = if i == 0 { head } else { i - 1 };
            next[i] = if i + 1 < entries { i + 1 } else { NIL };
        }
        EntryList { next, prev, head }
    }

    fn first(&self) -> usize {
        self.next[self.head]
    }

    fn remove(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = n;
        if n != NIL {
            self.prev[n] = p;
        }
    }

    /// Undoes `remove(e)`; removals must be undone in reverse order.
    fn reinsert(&mut self, e: usize) {
        let (p, n) = (self.prev[e], self.next[e]);
        self.next[p] = e;
        if n != NIL {
            self.prev[n] = e;
        }
    }
}

/// Where a search stands after a slice of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Progress {
    /// Every definite operation was linearized.
    Linearizable,
    /// Every configuration was explored without success.
    NotLinearizable,
    /// The slice's steps ran out; call [`Search::run`] again to go on.
    Running,
}

/// The resumable search over one partition.
pub(crate) struct Search {
    /// Per list node: the operation it belongs to, and whether it is its call.
    op_of: Vec<usize>,
    is_call: Vec<bool>,
    /// Per operation: its return node.
    return_node: Vec<usize>,
    /// Per operation: whether its outcome is known (it must be linearized).
    definite: Vec<bool>,
    list: EntryList,
    /// Memo keys are `[linearized-set bits.., state words..]`; `key` is the
    /// current configuration's key, kept up to date in place.
    key: Vec<u64>,
    bit_words: usize,
    memo: FxSet<Box<[u64]>>,
    state: State,
    /// (call node linearized, state before it)
    stack: Vec<(usize, State)>,
    entry: usize,
    /// Definite operations still to linearize; unknown ones can always go last.
    remaining: usize,
    done: Option<Progress>,
}

impl Search {
    pub(crate) fn new(part: &Partition) -> Self {
        let n = part.ops.len();
        let definite: Vec<bool> = part.ops.iter().map(|op| op.ret.is_some()).collect();
        let remaining = definite.iter().filter(|&&d| d).count();
        // Entries: (is_infinite, time, is_return, op). At equal times calls come
        // first (Porcupine's convention: such operations are concurrent).
        let mut order: Vec<(bool, u64, bool, usize)> = Vec::with_capacity(2 * n);
        for (id, op) in part.ops.iter().enumerate() {
            order.push((false, op.call, false, id));
            match op.ret {
                Some(t) => order.push((false, t, true, id)),
                None => order.push((true, 0, true, id)),
            }
        }
        order.sort_unstable();
        let entries = order.len();
        let mut op_of = vec![0usize; entries];
        let mut is_call = vec![false; entries];
        let mut return_node = vec![NIL; n];
        for (node, &(_, _, is_ret, id)) in order.iter().enumerate() {
            op_of[node] = id;
            is_call[node] = !is_ret;
            if is_ret {
                return_node[id] = node;
            }
        }
        let list = EntryList::new(entries);
        let state = initial_state(part.keys.len());
        let bit_words = n.div_ceil(64);
        let mut search = Search {
            op_of,
            is_call,
            return_node,
            definite,
            entry: list.first(),
            list,
            key: vec![0; bit_words + 2 * state.len()],
            bit_words,
            memo: FxSet::default(),
            state,
            stack: Vec::new(),
            remaining,
            done: (remaining == 0).then_some(Progress::Linearizable),
        };
        encode(&mut search.key[bit_words..], &search.state);
        search
    }

    /// An estimate of the bytes the search holds beyond the partition itself:
    /// the memo (its table, at capacity, and one allocation per key) and the
    /// backtracking stack. Deterministic (computed from sizes, not measured), so
    /// a memory budget stops a seed at the same point every run.
    pub(crate) fn bytes(&self) -> usize {
        // A table slot: the boxed slice's pointer and length, and a control byte.
        // While the table grows, the old one is held with the new one (1.5x).
        let table = self.memo.capacity() * 17 * 3 / 2;
        let keys = self.memo.len() * allocation_bytes(self.key.len() * 8);
        let state = allocation_bytes(self.state.len() * 16);
        let stack = self.stack.capacity() * 24 + self.stack.len() * state;
        table + keys + stack + state
    }

    fn toggle_bit(&mut self, id: usize) {
        self.key[id / 64] ^= 1 << (id % 64);
    }

    /// Runs at most `max_steps` steps (each a constant amount of work: one model
    /// application and memo probe, or one backtrack).
    pub(crate) fn run(&mut self, part: &mut Partition, max_steps: u64) -> Progress {
        if let Some(done) = self.done {
            return done;
        }
        for _ in 0..max_steps {
            if let Some(done) = self.step(part) {
                self.done = Some(done);
                // The verdict is all that is left to keep.
                self.memo = FxSet::default();
                self.stack = Vec::new();
                return done;
            }
        }
        Progress::Running
    }

    fn step(&mut self, part: &mut Partition) -> Option<Progress> {
        let entry = self.entry;
        if entry == NIL {
            // Cannot happen: the list always ends with a return entry while a
            // definite operation is pending. Treat defensively as exhausted.
            return Some(if self.remaining == 0 {
                Progress::Linearizable
            } else {
                Progress::NotLinearizable
            });
        }
        if self.is_call[entry] {
            let id = self.op_of[entry];
            if let Some(next_state) = apply(&mut part.ctx, &self.state, &part.ops[id].step) {
                self.toggle_bit(id);
                encode(&mut self.key[self.bit_words..], &next_state);
                if !self.memo.contains(self.key.as_slice()) {
                    self.memo.insert(self.key.clone().into_boxed_slice());
                    let prev_state = std::mem::replace(&mut self.state, next_state);
                    self.stack.push((entry, prev_state));
                    self.list.remove(entry);
                    self.list.remove(self.return_node[id]);
                    if self.definite[id] {
                        self.remaining -= 1;
                        if self.remaining == 0 {
                            return Some(Progress::Linearizable);
                        }
                    }
                    self.entry = self.list.first();
                    return None;
                }
                self.toggle_bit(id);
                encode(&mut self.key[self.bit_words..], &self.state);
            }
            self.entry = self.list.next[entry];
        } else {
            // A return reached before its operation was linearized: backtrack.
            let Some((call, prev_state)) = self.stack.pop() else {
                return Some(Progress::NotLinearizable);
            };
            let id = self.op_of[call];
            encode(&mut self.key[self.bit_words..], &prev_state);
            self.state = prev_state;
            self.toggle_bit(id);
            if self.definite[id] {
                self.remaining += 1;
            }
            self.list.reinsert(self.return_node[id]);
            self.list.reinsert(call);
            self.entry = self.list.next[call];
        }
        None
    }
}

/// Writes a model state into the state words of a memo key (two words a slot).
fn encode(words: &mut [u64], state: &[Slot]) {
    debug_assert_eq!(words.len(), 2 * state.len());
    for (pair, slot) in words.chunks_exact_mut(2).zip(state) {
        pair[0] = u64::from(slot.val);
        pair[1] = slot.rev;
    }
}
