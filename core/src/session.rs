//! Client sessions: what makes a resent write apply once (Raft dissertation, §6.3).
//!
//! A write's answer can be lost after the write committed (a time-out, a crashed leader, an
//! entry truncated on one node and committed from another). Without sessions a client cannot
//! resend it: a compare-and-set or batch could apply twice. So every client registers once
//! (its id is drawn from a counter in the replicated state: unique, and the same on every
//! replica; not the log index, since one entry may carry several registrations), and
//! numbers its writes. The replicated state remembers, per client, the answer to every write
//! the client has not yet acknowledged, and answers a resent write with its first answer
//! instead of applying it again.
//!
//! Everything here is decided by the log alone, so every replica keeps the same sessions:
//! - a client tells, with each write, the lowest sequence number it still waits on
//!   (`acked_below`); answers below it are dropped, and a write below it is refused, since
//!   the client has stopped waiting for it ([`SessionCheck::Stale`]);
//! - at most [`MAX_ANSWERS_PER_SESSION`] answers are kept per client (the oldest go first,
//!   raising `acked_below`), at most [`MAX_ANSWERS`] in all and at most [`MAX_SESSIONS`]
//!   sessions (past either, the least recently used session is expired, by log index, never
//!   by a clock); a write of an expired or unknown session is refused
//!   ([`SessionCheck::Expired`]): its outcome can no longer be told.
//!
//! A store that keeps sessions as rows (the state machine on disk) takes every change as a
//! [`SessionEffect`] after applying an entry, and writes it with the entry's other rows;
//! [`Sessions::restore`] rebuilds the sessions from those rows.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::command::Response;
use crate::state::Fnv64;

/// Most sessions the state keeps; registering one more expires the least recently used.
pub const MAX_SESSIONS: usize = 16_384;

/// Most answers kept per session: a client with more writes in flight than this loses
/// exactly-once for the oldest (a resend of it is refused as stale, never applied twice).
pub const MAX_ANSWERS_PER_SESSION: usize = 1_024;

/// Most answers kept over all sessions (each a few dozen bytes in memory and in snapshots).
pub const MAX_ANSWERS: usize = 65_536;

/// Which client sent a write, and where it stands in the client's sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTag {
    /// The client's id, from its registration.
    pub client_id: u64,
    /// This write's number in the client's sequence (from 1; a resend keeps it).
    pub seq: u64,
    /// The lowest sequence number the client still waits on (at most `seq`): the client
    /// has its answers, or has given up, for every write below it.
    pub acked_below: u64,
}

/// What the sessions say of a tagged write about to be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionCheck {
    /// Not seen before: apply it, then [`Sessions::record`] its answer.
    Fresh,
    /// Already applied: this is its answer. Apply nothing.
    Duplicate(Response),
    /// Below the client's acknowledged mark: the client no longer waits on it. Apply nothing.
    Stale { acked_below: u64 },
    /// The client has no session (never registered, or expired). Apply nothing.
    Expired,
}

/// A session's bookkeeping, without its answers: one row per client on disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHeader {
    /// Log index of the last entry that registered or used this session.
    pub last_used: u64,
    /// The client's acknowledged mark: answers below it are gone.
    pub acked_below: u64,
}

/// One change to the sessions, as a store of rows must write it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEffect {
    /// The client's header is now this (the session is created if new).
    Header {
        client_id: u64,
        header: SessionHeader,
    },
    /// The answer to the client's write `seq`.
    Answer {
        client_id: u64,
        seq: u64,
        answer: Response,
    },
    /// The client's answer to `seq` is gone.
    Forget { client_id: u64, seq: u64 },
    /// The session is gone, with its answers to `answers`.
    Expire { client_id: u64, answers: Vec<u64> },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Log index of the last entry that registered or used this session.
    last_used: u64,
    acked_below: u64,
    /// Answers to writes at or above `acked_below`, by sequence number.
    answers: BTreeMap<u64, Response>,
}

impl Session {
    fn header(&self) -> SessionHeader {
        SessionHeader {
            last_used: self.last_used,
            acked_below: self.acked_below,
        }
    }
}

/// Every client session of one state machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sessions {
    /// The id the next registration gets (ids start at 1 and are never reused).
    next_client_id: u64,
    by_client: BTreeMap<u64, Session>,
    /// (last_used, client_id) of every session: the least recently used comes first.
    by_use: BTreeSet<(u64, u64)>,
    /// Answers held over all sessions.
    answers: usize,
    /// Changes not yet taken by [`Sessions::take_effects`].
    #[serde(skip)]
    effects: Vec<SessionEffect>,
}

impl Sessions {
    /// Opens a session in the entry at log index `index` and returns its client id. Expires
    /// the least recently used session if there are more than [`MAX_SESSIONS`].
    pub fn register(&mut self, index: u64) -> u64 {
        assert!(index > 0, "log indexes start at 1");
        let client_id = self.next_client_id.max(1);
        self.next_client_id = client_id + 1;
        let fresh = self.by_client.insert(
            client_id,
            Session {
                last_used: index,
                acked_below: 1,
                answers: BTreeMap::new(),
            },
        );
        assert!(fresh.is_none(), "client id {client_id} given twice");
        self.by_use.insert((index, client_id));
        self.effects.push(SessionEffect::Header {
            client_id,
            header: SessionHeader {
                last_used: index,
                acked_below: 1,
            },
        });
        while self.by_client.len() > MAX_SESSIONS {
            self.expire_least_recently_used(client_id);
        }
        self.check_invariants();
        client_id
    }

    /// Expires the least recently used session other than `keep` (the one being used now:
    /// sessions used in the same entry tie, and the tie must not fall on it).
    fn expire_least_recently_used(&mut self, keep: u64) {
        let victim = self
            .by_use
            .iter()
            .copied()
            .find(|&(_, client_id)| client_id != keep);
        if let Some(entry) = victim {
            self.by_use.remove(&entry);
            let oldest = entry.1;
            let answers = match self.by_client.remove(&oldest) {
                Some(session) => {
                    self.answers -= session.answers.len();
                    session.answers.into_keys().collect()
                }
                None => Vec::new(),
            };
            self.effects.push(SessionEffect::Expire {
                client_id: oldest,
                answers,
            });
        }
    }

    /// Decides what to do with the write `tag`, in the entry at log index `index`, and
    /// takes in the client's acknowledged mark.
    pub fn check(&mut self, tag: &SessionTag, index: u64) -> SessionCheck {
        let Some(session) = self.by_client.get_mut(&tag.client_id) else {
            return SessionCheck::Expired;
        };
        self.by_use.remove(&(session.last_used, tag.client_id));
        session.last_used = session.last_used.max(index);
        self.by_use.insert((session.last_used, tag.client_id));
        if tag.acked_below > session.acked_below {
            session.acked_below = tag.acked_below;
            let kept = session.answers.split_off(&tag.acked_below);
            let dropped = std::mem::replace(&mut session.answers, kept);
            self.answers -= dropped.len();
            for seq in dropped.into_keys() {
                self.effects.push(SessionEffect::Forget {
                    client_id: tag.client_id,
                    seq,
                });
            }
        }
        self.effects.push(SessionEffect::Header {
            client_id: tag.client_id,
            header: session.header(),
        });
        if tag.seq < session.acked_below {
            return SessionCheck::Stale {
                acked_below: session.acked_below,
            };
        }
        match session.answers.get(&tag.seq) {
            Some(answer) => SessionCheck::Duplicate(answer.clone()),
            None => SessionCheck::Fresh,
        }
    }

    /// Remembers the answer to a [`SessionCheck::Fresh`] write.
    pub fn record(&mut self, tag: &SessionTag, answer: Response) {
        let Some(session) = self.by_client.get_mut(&tag.client_id) else {
            debug_assert!(false, "record without a session");
            return;
        };
        debug_assert!(tag.seq >= session.acked_below);
        if session.answers.insert(tag.seq, answer.clone()).is_none() {
            self.answers += 1;
        }
        self.effects.push(SessionEffect::Answer {
            client_id: tag.client_id,
            seq: tag.seq,
            answer,
        });
        let mut forgot = false;
        while session.answers.len() > MAX_ANSWERS_PER_SESSION {
            let Some((oldest, _)) = session.answers.pop_first() else {
                break;
            };
            self.answers -= 1;
            session.acked_below = session.acked_below.max(oldest + 1);
            self.effects.push(SessionEffect::Forget {
                client_id: tag.client_id,
                seq: oldest,
            });
            forgot = true;
        }
        if forgot {
            self.effects.push(SessionEffect::Header {
                client_id: tag.client_id,
                header: session.header(),
            });
        }
        // Never the session just used, even when others were used in the same entry.
        while self.answers > MAX_ANSWERS && self.by_client.len() > 1 {
            self.expire_least_recently_used(tag.client_id);
        }
        self.check_invariants();
    }

    /// The changes made since the last call, in order.
    pub fn take_effects(&mut self) -> Vec<SessionEffect> {
        std::mem::take(&mut self.effects)
    }

    /// The id the next registration gets.
    pub fn next_client_id(&self) -> u64 {
        self.next_client_id
    }

    /// Rebuilds sessions from their rows: `next_client_id`, every client's header and every
    /// answer kept. Refuses rows no sequence of changes could have written.
    pub fn restore(
        next_client_id: u64,
        headers: impl IntoIterator<Item = (u64, SessionHeader)>,
        answers: impl IntoIterator<Item = (u64, u64, Response)>,
    ) -> Result<Sessions, String> {
        let mut sessions = Sessions {
            next_client_id,
            ..Sessions::default()
        };
        for (client_id, header) in headers {
            if client_id == 0 || client_id >= next_client_id.max(1) {
                return Err(format!(
                    "session {client_id} was never registered (next id {next_client_id})"
                ));
            }
            sessions.by_client.insert(
                client_id,
                Session {
                    last_used: header.last_used,
                    acked_below: header.acked_below,
                    answers: BTreeMap::new(),
                },
            );
            sessions.by_use.insert((header.last_used, client_id));
            if sessions.by_client.len() > MAX_SESSIONS {
                return Err(format!("more than {MAX_SESSIONS} sessions"));
            }
        }
        for (client_id, seq, answer) in answers {
            let Some(session) = sessions.by_client.get_mut(&client_id) else {
                return Err(format!(
                    "an answer of session {client_id}, which has no header"
                ));
            };
            if seq < session.acked_below {
                return Err(format!(
                    "session {client_id} keeps answer {seq} below its mark {}",
                    session.acked_below
                ));
            }
            session.answers.insert(seq, answer);
            sessions.answers += 1;
            if session.answers.len() > MAX_ANSWERS_PER_SESSION
                || sessions.answers > MAX_ANSWERS.max(MAX_ANSWERS_PER_SESSION)
            {
                return Err("more session answers than the bounds allow".into());
            }
        }
        sessions.check_invariants();
        Ok(sessions)
    }

    /// Number of sessions held.
    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// Mixes every session into `hash` (replicas compare digests).
    pub fn digest_into(&self, hash: &mut Fnv64) {
        hash.write(&self.next_client_id.to_le_bytes());
        for (client, session) in &self.by_client {
            hash.write(&client.to_le_bytes());
            hash.write(&session.last_used.to_le_bytes());
            hash.write(&session.acked_below.to_le_bytes());
            for (seq, answer) in &session.answers {
                hash.write(&seq.to_le_bytes());
                hash.write(format!("{answer:?}").as_bytes());
            }
        }
    }

    fn check_invariants(&self) {
        debug_assert_eq!(self.by_client.len(), self.by_use.len());
        debug_assert!(self.by_client.len() <= MAX_SESSIONS);
        debug_assert!(self.answers <= MAX_ANSWERS.max(MAX_ANSWERS_PER_SESSION));
    }

    #[cfg(test)]
    fn digest(&self) -> u64 {
        let mut hash = Fnv64::default();
        self.digest_into(&mut hash);
        hash.finish()
    }

    /// Answers counted one by one (the running count must agree).
    #[cfg(test)]
    fn answers_counted(&self) -> usize {
        self.by_client.values().map(|s| s.answers.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(client_id: u64, seq: u64, acked_below: u64) -> SessionTag {
        SessionTag {
            client_id,
            seq,
            acked_below,
        }
    }

    #[test]
    fn a_resent_write_gets_its_first_answer() {
        let mut sessions = Sessions::default();
        let client = sessions.register(3);
        assert_eq!(client, 1);
        // Two registrations in one entry get distinct ids.
        assert_eq!(sessions.register(3), 2);
        let write = tag(client, 1, 1);
        assert_eq!(sessions.check(&write, 4), SessionCheck::Fresh);
        sessions.record(&write, Response::Put { revision: 4 });
        assert_eq!(
            sessions.check(&write, 9),
            SessionCheck::Duplicate(Response::Put { revision: 4 })
        );
        // Out of order within the window is fine.
        assert_eq!(sessions.check(&tag(client, 3, 1), 10), SessionCheck::Fresh);
        assert_eq!(sessions.check(&tag(client, 2, 1), 11), SessionCheck::Fresh);
    }

    #[test]
    fn writes_below_the_acknowledged_mark_are_refused() {
        let mut sessions = Sessions::default();
        let client = sessions.register(1);
        let first = tag(client, 1, 1);
        assert_eq!(sessions.check(&first, 2), SessionCheck::Fresh);
        sessions.record(&first, Response::Put { revision: 2 });
        assert_eq!(sessions.check(&tag(client, 2, 2), 3), SessionCheck::Fresh);
        assert_eq!(
            sessions.check(&first, 4),
            SessionCheck::Stale { acked_below: 2 }
        );
        // An older mark does not lower it.
        assert_eq!(
            sessions.check(&tag(client, 1, 1), 5),
            SessionCheck::Stale { acked_below: 2 }
        );
    }

    #[test]
    fn unknown_and_expired_sessions_are_refused() {
        let mut sessions = Sessions::default();
        assert_eq!(sessions.check(&tag(7, 1, 1), 8), SessionCheck::Expired);
        let count = MAX_SESSIONS as u64 + 1;
        for index in 1..=count {
            assert_eq!(sessions.register(index), index);
        }
        assert_eq!(sessions.len(), MAX_SESSIONS);
        // Session 1 was the least recently used.
        assert_eq!(
            sessions.check(&tag(1, 1, 1), count + 1),
            SessionCheck::Expired
        );
        assert_eq!(
            sessions.check(&tag(2, 1, 1), count + 2),
            SessionCheck::Fresh
        );
        // Session 2 was just used: registering another expires session 3, not 2.
        assert_eq!(sessions.register(count + 3), count + 1);
        assert_eq!(
            sessions.check(&tag(3, 1, 1), count + 4),
            SessionCheck::Expired
        );
        assert_eq!(
            sessions.check(&tag(2, 2, 1), count + 5),
            SessionCheck::Fresh
        );
    }

    #[test]
    fn answers_over_all_sessions_are_bounded() {
        let mut sessions = Sessions::default();
        let per_client = MAX_ANSWERS_PER_SESSION as u64;
        let clients = (MAX_ANSWERS as u64 / per_client) + 1;
        let mut index = 0;
        for _ in 0..clients {
            index += 1;
            let client = sessions.register(index);
            for seq in 1..=per_client {
                index += 1;
                let write = tag(client, seq, 1);
                assert_eq!(sessions.check(&write, index), SessionCheck::Fresh);
                sessions.record(&write, Response::Put { revision: index });
            }
        }
        // The first client was the least recently used when the total passed the bound.
        assert_eq!(sessions.len() as u64, clients - 1);
        assert_eq!(sessions.answers, sessions.answers_counted());
        assert!(sessions.answers <= MAX_ANSWERS);
        assert_eq!(
            sessions.check(&tag(1, 1, 1), index + 1),
            SessionCheck::Expired
        );
        assert!(matches!(
            sessions.check(&tag(clients, 1, 1), index + 2),
            SessionCheck::Duplicate(_)
        ));
    }

    /// Replays effects onto rows the way a disk store does, and restores from them.
    fn restore_from_effects(sessions: &mut Sessions, rows: &mut Rows) -> Sessions {
        for effect in sessions.take_effects() {
            match effect {
                SessionEffect::Header { client_id, header } => {
                    rows.0.insert(client_id, header);
                }
                SessionEffect::Answer {
                    client_id,
                    seq,
                    answer,
                } => {
                    rows.1.insert((client_id, seq), answer);
                }
                SessionEffect::Forget { client_id, seq } => {
                    rows.1.remove(&(client_id, seq));
                }
                SessionEffect::Expire { client_id, answers } => {
                    rows.0.remove(&client_id);
                    for seq in answers {
                        rows.1.remove(&(client_id, seq));
                    }
                }
            }
        }
        Sessions::restore(
            sessions.next_client_id(),
            rows.0.clone(),
            rows.1.iter().map(|((c, s), a)| (*c, *s, a.clone())),
        )
        .expect("rows written from effects restore")
    }

    type Rows = (BTreeMap<u64, SessionHeader>, BTreeMap<(u64, u64), Response>);

    #[test]
    fn effects_rebuild_the_same_sessions() {
        let mut sessions = Sessions::default();
        let mut rows = Rows::default();
        let mut index = 0;
        for round in 0..MAX_SESSIONS as u64 + 40 {
            index += 1;
            let client = sessions.register(index);
            for seq in 1..=(round % 5) {
                index += 1;
                let write = tag(client, seq, seq.saturating_sub(2).max(1));
                if sessions.check(&write, index) == SessionCheck::Fresh {
                    sessions.record(&write, Response::Put { revision: index });
                }
            }
            if round % 997 == 0 {
                let restored = restore_from_effects(&mut sessions, &mut rows);
                assert_eq!(restored.digest(), sessions.digest());
            }
        }
        let client = sessions.register(index + 1);
        for seq in 1..=MAX_ANSWERS_PER_SESSION as u64 + 3 {
            let write = tag(client, seq, 1);
            assert_eq!(sessions.check(&write, index + 1 + seq), SessionCheck::Fresh);
            sessions.record(&write, Response::Put { revision: seq });
        }
        let restored = restore_from_effects(&mut sessions, &mut rows);
        assert_eq!(restored.digest(), sessions.digest());
        assert_eq!(restored.len(), sessions.len());
        assert!(Sessions::restore(1, [(5, SessionHeader::default())], []).is_err());
    }

    #[test]
    fn answers_per_session_are_bounded() {
        let mut sessions = Sessions::default();
        let client = sessions.register(1);
        let count = MAX_ANSWERS_PER_SESSION as u64 + 5;
        for seq in 1..=count {
            let write = tag(client, seq, 1);
            assert_eq!(sessions.check(&write, seq + 1), SessionCheck::Fresh);
            sessions.record(&write, Response::Put { revision: seq + 1 });
        }
        assert_eq!(sessions.answers, MAX_ANSWERS_PER_SESSION);
        assert_eq!(sessions.answers, sessions.answers_counted());
        assert_eq!(
            sessions.check(&tag(client, 5, 1), count + 2),
            SessionCheck::Stale { acked_below: 6 }
        );
        assert_eq!(
            sessions.check(&tag(client, 6, 1), count + 3),
            SessionCheck::Duplicate(Response::Put { revision: 7 })
        );
    }

    #[test]
    fn the_session_just_used_is_never_the_one_expired() {
        let mut sessions = Sessions::default();
        let clients = MAX_ANSWERS / MAX_ANSWERS_PER_SESSION + 1;
        let ids: Vec<u64> = (0..clients).map(|_| sessions.register(1)).collect();
        // Every session answers in the same entry (index 2), the smallest id last: it ties
        // with all the others when the total passes the bound.
        for &client_id in ids.iter().rev() {
            for seq in 1..=MAX_ANSWERS_PER_SESSION as u64 {
                let tag = SessionTag {
                    client_id,
                    seq,
                    acked_below: 1,
                };
                assert_eq!(sessions.check(&tag, 2), SessionCheck::Fresh);
                sessions.record(&tag, Response::Put { revision: 2 });
            }
        }
        let last = SessionTag {
            client_id: ids[0],
            seq: MAX_ANSWERS_PER_SESSION as u64,
            acked_below: 1,
        };
        assert_eq!(
            sessions.check(&last, 3),
            SessionCheck::Duplicate(Response::Put { revision: 2 }),
            "the answer just recorded is kept"
        );
        assert_eq!(sessions.len(), clients - 1);
    }
}
