//! The slot mover: an operator who keeps moving slots between data groups while the load
//! and the faults run, as `seedkv cluster move-slots` would.
//!
//! Most moves take the slot of a workload key (so the moves meet reads and writes), some a
//! slot nobody uses; the destination is any other data group. The meta group's leader
//! carries each move out; this operator only asks, from whichever node answers, and
//! counts what was recorded. Once the load ends it waits until no move is left (a move
//! must finish, or abort, once the faults are healed).

use std::time::Duration;

use madsim::rand::{thread_rng, Rng};
use seedkv_core::slot::Slot;
use seedkv_proto::{Client, ClientConfig};
use tokio::time::Instant;

use crate::workload::key_name;

/// What the mover did.
#[derive(Debug, Default)]
pub struct MoverReport {
    /// Moves recorded.
    pub started: usize,
    /// Requests refused or failed (the slot was moving already, a fault cut the call...).
    pub refused: usize,
}

/// Moves slots until `deadline`.
pub async fn run(endpoints: Vec<String>, keys: usize, deadline: Instant) -> MoverReport {
    let mut config = ClientConfig::new(endpoints);
    config.max_attempts = 4;
    let client = Client::new(config);
    let mut report = MoverReport::default();
    while Instant::now() < deadline {
        let pause = thread_rng().gen_range(200..1_200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        client.forget_map();
        let Ok(map) = client.slot_map().await else {
            report.refused += 1;
            continue;
        };
        let key = if thread_rng().gen_bool(0.8) {
            key_name(thread_rng().gen_range(0..keys.max(1)))
        } else {
            format!("unused-{}", thread_rng().gen_range(0..1_000_000u32))
        };
        let slot = Slot::of(key.as_bytes());
        let owner = map.group_of(key.as_bytes());
        let others: Vec<u32> = map.groups().filter(|&group| group != owner).collect();
        if others.is_empty() {
            return report;
        }
        let to = others[thread_rng().gen_range(0..others.len())];
        let n = u32::from(slot.get());
        match client.move_slots(n, n, to).await {
            Ok(started) => report.started += started.len(),
            Err(err) => {
                tracing::debug!(%slot, to, "move refused: {err}");
                report.refused += 1;
            }
        }
    }
    report
}

/// Waits until no move is recorded, up to `bound`; the moves left if any.
pub async fn settle(endpoints: Vec<String>, bound: Duration) -> Result<(), String> {
    let client = Client::new(ClientConfig::new(endpoints));
    let give_up = Instant::now() + bound;
    let mut last = String::from("no node answered");
    while Instant::now() < give_up {
        match client.migrations().await {
            Ok(answer) if answer.migrations.is_empty() => return Ok(()),
            Ok(answer) => {
                last = answer
                    .migrations
                    .iter()
                    .map(|m| format!("{} slot {} {}->{} {}", m.id, m.slot, m.from, m.to, m.step))
                    .collect::<Vec<_>>()
                    .join(", ");
            }
            Err(err) => last = err.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "slot moves still recorded {} s after the load: {last}",
        bound.as_secs()
    ))
}
