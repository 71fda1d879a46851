//! A deliberately naive reference checker, to test the real one against.
//!
//! It does not split the history by key, keeps no memo and no linked list: it
//! enumerates every total order of *all* operations that respects real time
//! (`a` must precede `b` when `a` returned strictly before `b` was called) and
//! replays it on the model. Exponential, so limited to a handful of operations; it
//! exists for tests and fuzzing, where agreement between the two checkers is
//! evidence that the partitioning and the search are right.

use crate::error::CheckError;
use crate::model::{apply, initial_state, Ctx, Slot};
use crate::partition::{whole, PartOp};
use crate::record::Record;
use crate::{Model, Verdict};

/// Largest number of records [`check_brute_force`] accepts.
pub const BRUTE_FORCE_MAX_OPS: usize = 10;

/// Decides linearizability by trying every real-time-respecting order of the
/// operations. For tests and fuzzing only; errors if given more than
/// [`BRUTE_FORCE_MAX_OPS`] records.
pub fn check_brute_force(records: &[Record], model: Model) -> Result<Verdict, CheckError> {
    if records.len() > BRUTE_FORCE_MAX_OPS {
        return Err(CheckError::TooManyOperations {
            count: records.len(),
            max: BRUTE_FORCE_MAX_OPS,
        });
    }
    let mut part = whole(records, model)?;
    let ops = &part.ops;
    let n = ops.len();
    // preds[b]: bitmask of operations that must come before b.
    let mut preds = vec![0u32; n];
    for (b, op_b) in ops.iter().enumerate() {
        for (a, op_a) in ops.iter().enumerate() {
            if let Some(ret) = op_a.ret {
                if a != b && ret < op_b.call {
                    preds[b] |= 1 << a;
                }
            }
        }
    }
    let state = initial_state(part.keys.len());
    let found = search(&mut part.ctx, ops, &preds, 0, &state);
    Ok(if found {
        Verdict::Linearizable
    } else {
        Verdict::NotLinearizable
    })
}

fn search(ctx: &mut Ctx, ops: &[PartOp], preds: &[u32], placed: u32, state: &[Slot]) -> bool {
    let n = ops.len();
    if placed.count_ones() as usize == n {
        return true;
    }
    for (i, op) in ops.iter().enumerate() {
        let bit = 1u32 << i;
        if placed & bit != 0 || preds[i] & !placed != 0 {
            continue;
        }
        if let Some(next) = apply(ctx, state, &op.step) {
            if search(ctx, ops, preds, placed | bit, &next) {
                return true;
            }
        }
    }
    false
}
