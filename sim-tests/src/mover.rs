//! The slot mover: an operator who keeps moving slots between data groups while the load
//! and the faults run, as `seedkv cluster move-slots` would. In half the runs it also adds
//! a data group on every node (`add-group`, with a membership operator of its own, as the
//! bootstrap's groups have) and later rebalances the slots onto it.
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

use crate::nemesis::SharedCluster;
use crate::workload::key_name;
use seedkv_core::GroupId;

/// What the mover did.
#[derive(Debug, Default)]
pub struct MoverReport {
    /// Moves recorded.
    pub started: usize,
    /// Requests refused or failed (the slot was moving already, a fault cut the call...).
    pub refused: usize,
    /// Groups added.
    pub added: Vec<u32>,
    /// Rebalances that recorded moves.
    pub rebalances: usize,
    /// What the added group's membership operator did and found.
    pub operator: crate::operator::OperatorReport,
}

/// Moves slots until `deadline`.
pub async fn run(
    cluster: SharedCluster,
    endpoints: Vec<String>,
    keys: usize,
    deadline: Instant,
) -> MoverReport {
    let mut config = ClientConfig::new(endpoints.clone());
    config.max_attempts = 4;
    let client = Client::new(config);
    let mut report = MoverReport::default();
    let started = Instant::now();
    let run_for = deadline.saturating_duration_since(started);
    // When to add a group and when to rebalance, if this run does.
    let grow = thread_rng().gen_bool(0.5).then(|| {
        let add_at = started + run_for.mul_f64(thread_rng().gen_range(0.1..0.4));
        let rebalance_at = add_at + run_for.mul_f64(thread_rng().gen_range(0.1..0.4));
        (add_at, rebalance_at)
    });
    let mut grown = false;
    // Data groups are numbered from 1; the bootstrap's are the first ones.
    let bootstrap_groups = {
        let c = cluster.lock().unwrap_or_else(|p| p.into_inner());
        u32::try_from(c.plan.groups().len()).unwrap_or(u32::MAX)
    };
    let mut rebalanced = false;
    let mut operator = None;
    while Instant::now() < deadline {
        let pause = thread_rng().gen_range(200..1_200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if let Some((add_at, rebalance_at)) = grow {
            if !grown && Instant::now() >= add_at {
                // On every node, as the bootstrap's groups are: the nemesis may wipe two
                // nodes, which three replicas would not survive. Nodes are numbered from 1
                // in the order of `endpoints`, the preferred leader drawn.
                let mut chosen: Vec<(u64, String)> = endpoints
                    .iter()
                    .enumerate()
                    .map(|(i, addr)| (i as u64 + 1, addr.clone()))
                    .collect();
                let first = thread_rng().gen_range(0..chosen.len());
                chosen.rotate_left(first);
                let ids: Vec<u64> = chosen.iter().map(|(id, _)| *id).collect();
                let weight = thread_rng().gen_range(1..=3);
                let added = match client.add_group(&ids, weight).await {
                    Ok((group, _)) => Some(group),
                    Err(err) => {
                        tracing::debug!("adding a group: {err}");
                        report.refused += 1;
                        // The outcome may be unknown (the answer lost): a group the map
                        // has and the bootstrap did not is the one this call added. Else
                        // (a node out of the meta group for a while): again next turn.
                        client.forget_map();
                        match client.slot_map().await {
                            Ok(map) => map.groups().find(|&g| g > bootstrap_groups),
                            Err(_) => None,
                        }
                    }
                };
                if let Some(group) = added {
                    grown = true;
                    report.added.push(group);
                    let min_voters = chosen.len() / 2 + 1;
                    operator = Some(tokio::spawn(crate::operator::run(
                        cluster.clone(),
                        GroupId(group),
                        chosen,
                        deadline,
                        Duration::from_secs(60),
                        min_voters,
                    )));
                }
                continue;
            }
            if grown && !rebalanced && Instant::now() >= rebalance_at {
                match client.rebalance().await {
                    Ok(moves) => {
                        rebalanced = true;
                        report.rebalances += 1;
                        report.started += moves.len();
                    }
                    // Refused while moves are in progress: again at the next turn.
                    Err(err) => {
                        tracing::debug!("rebalancing: {err}");
                        report.refused += 1;
                    }
                }
                continue;
            }
        }
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
            break;
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
    if let Some(operator) = operator {
        match operator.await {
            Ok(done) => report.operator = done,
            Err(_) => report.operator.failure = Some("the added group's operator stopped".into()),
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
