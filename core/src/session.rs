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

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Session {
    /// Log index of the last entry that registered or used this session.
    last_used: u64,
    acked_below: u64,
    /// Answers to writes at or above `acked_below`, by sequence number.
    answers: BTreeMap<u64, Response>,
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
        while self.by_client.len() > MAX_SESSIONS {
            self.expire_least_recently_used();
        }
        self.check_invariants();
        client_id
    }

    fn expire_least_recently_used(&mut self) {
        if let Some((_, oldest)) = self.by_use.pop_first() {
            if let Some(session) = self.by_client.remove(&oldest) {
                self.answers -= session.answers.len();
            }
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
            let before = session.answers.len();
            session.answers = session.answers.split_off(&tag.acked_below);
            self.answers -= before - session.answers.len();
        }
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
        if session.answers.insert(tag.seq, answer).is_none() {
            self.answers += 1;
        }
        while session.answers.len() > MAX_ANSWERS_PER_SESSION {
            let Some((oldest, _)) = session.answers.pop_first() else {
                break;
            };
            self.answers -= 1;
            session.acked_below = session.acked_below.max(oldest + 1);
        }
        // This session was just used: the least recently used is another one.
        while self.answers > MAX_ANSWERS && self.by_client.len() > 1 {
            self.expire_least_recently_used();
        }
        self.check_invariants();
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
}
