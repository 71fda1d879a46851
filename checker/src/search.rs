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
//! Backtracking uses an explicit stack, so deep histories cannot overflow the call
//! stack. Operations with unknown outcome return at +infinity: they may be
//! linearized anywhere after their call, or (equivalently) after everything else.

use crate::fxhash::FxSet;
use crate::model::{apply, initial_state, State};
use crate::partition::Partition;

const NIL: usize = usize::MAX;

/// Linked list of call/return entries, in arrays. Node `2n` is the head sentinel.
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

struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

/// Whether the partition's operations are linearizable w.r.t. its model.
pub(crate) fn check_partition(part: &mut Partition) -> bool {
    let n = part.ops.len();
    // Definite operations still to linearize; unknown ones can always go last.
    let mut remaining = part.ops.iter().filter(|op| op.ret.is_some()).count();
    if remaining == 0 {
        return true;
    }
    // Entries: (is_infinite, time, is_return, op). At equal times calls come first
    // (Porcupine's convention: such operations are concurrent).
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

    let mut list = EntryList::new(entries);
    let mut bits = Bits::new(n);
    let mut memo: FxSet<(Box<[u64]>, State)> = FxSet::default();
    let mut state: State = initial_state(part.keys.len());
    // (call node linearized, state before it)
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut entry = list.first();

    loop {
        if entry == NIL {
            // Cannot happen: the list always ends with a return entry while a
            // definite operation is pending. Treat defensively as exhausted.
            return remaining == 0;
        }
        if is_call[entry] {
            let id = op_of[entry];
            if let Some(next_state) = apply(&mut part.ctx, &state, &part.ops[id].step) {
                bits.set(id);
                if memo.insert((bits.0.clone().into_boxed_slice(), next_state.clone())) {
                    let prev_state = std::mem::replace(&mut state, next_state);
                    stack.push((entry, prev_state));
                    list.remove(entry);
                    list.remove(return_node[id]);
                    if part.ops[id].ret.is_some() {
                        remaining -= 1;
                        if remaining == 0 {
                            return true;
                        }
                    }
                    entry = list.first();
                    continue;
                }
                bits.clear(id);
            }
            entry = list.next[entry];
        } else {
            // A return reached before its operation was linearized: backtrack.
            let Some((call, prev_state)) = stack.pop() else {
                return false;
            };
            let id = op_of[call];
            state = prev_state;
            bits.clear(id);
            if part.ops[id].ret.is_some() {
                remaining += 1;
            }
            list.reinsert(return_node[id]);
            list.reinsert(call);
            entry = list.next[call];
        }
    }
}
