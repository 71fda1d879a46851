//! Wire requests to core commands, in one place: the `Kv` service and the fuzzers use the
//! same conversions, so what is fuzzed is what is served.

use seedkv_core::command::{Command, ScanRange, WriteOp};
use seedkv_core::session::SessionTag;
use seedkv_core::Limits;

use crate::pb;

/// `command` within its session, if the request named one.
fn tagged(session: Option<pb::Session>, command: Command) -> Command {
    match session {
        Some(session) => Command::Tagged {
            session: SessionTag {
                client_id: session.client_id,
                seq: session.seq,
                acked_below: session.acked_below,
            },
            command: Box::new(command),
        },
        None => command,
    }
}

/// A `Put` as a command.
pub fn put(request: pb::PutRequest) -> Command {
    tagged(
        request.session,
        Command::Single(WriteOp::Put {
            key: request.key,
            value: request.value,
        }),
    )
}

/// A `Delete` as a command.
pub fn delete(request: pb::DeleteRequest) -> Command {
    tagged(
        request.session,
        Command::Single(WriteOp::Delete { key: request.key }),
    )
}

/// A `Cas` as a command.
pub fn cas(request: pb::CasRequest) -> Command {
    tagged(
        request.session,
        Command::Single(WriteOp::Cas {
            key: request.key,
            expect: request.expect,
            new: request.new_value,
        }),
    )
}

/// A `Batch` as a command; an operation with no `op` set is refused.
pub fn batch(request: pb::BatchRequest) -> Result<Command, String> {
    let ops = request
        .ops
        .into_iter()
        .enumerate()
        .map(|(index, op)| match op.op {
            Some(pb::write_op::Op::Put(put)) => Ok(WriteOp::Put {
                key: put.key,
                value: put.value,
            }),
            Some(pb::write_op::Op::Delete(del)) => Ok(WriteOp::Delete { key: del.key }),
            Some(pb::write_op::Op::Cas(cas)) => Ok(WriteOp::Cas {
                key: cas.key,
                expect: cas.expect,
                new: cas.new_value,
            }),
            None => Err(format!("batch operation {index} has no op set")),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(tagged(request.session, Command::Batch(ops)))
}

/// A `Scan`'s range and effective row limit (0 asks for the server's maximum).
pub fn scan(request: &pb::ScanRequest, limits: &Limits) -> (ScanRange, usize) {
    let range = ScanRange {
        prefix: request.prefix.clone(),
        from: request.from.clone(),
        to: request.to.clone(),
    };
    let limit = match request.limit {
        0 => limits.max_scan_limit,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    (range, limit)
}

/// A migration record as the Admin service reports it.
pub fn migration(migration: &seedkv_core::migration::Migration) -> pb::Migration {
    use seedkv_core::migration::Step;
    let (step, epoch) = match migration.step {
        Step::Planned => ("planned", 0),
        Step::Copied => ("copied", 0),
        Step::Committed { epoch } => ("committed", epoch),
        Step::Aborted => ("aborted", 0),
    };
    pb::Migration {
        id: migration.id,
        slot: u32::from(migration.slot.get()),
        from: migration.from.0,
        to: migration.to.0,
        step: step.to_string(),
        epoch,
    }
}
