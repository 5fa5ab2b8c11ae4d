//! The checker: the history the clients recorded against every replica's own copy of every
//! stream. Pure (no I/O), so tests can feed it broken logs.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::history::{Event, History, Outcome};

/// One replica's copy of one stream, as `Admin.LocalMessages` answered.
#[derive(Clone, Debug, Default)]
pub struct Copy {
    pub message_count: u64,
    pub messages: Vec<Value>,
}

/// What the API answered for a stream (`GET /v1/streams/…`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Fetched {
    pub message_count: u64,
    pub participant_count: u64,
}

#[derive(Debug, Default)]
pub struct Report {
    pub acked: usize,
    pub unknown: usize,
    pub errors: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub unknown_applied: usize,
    pub listen_sessions: usize,
    pub listened_messages: usize,
    pub resyncs: usize,
    pub violations: Vec<String>,
}

impl Report {
    fn violation(&mut self, v: String) {
        // Enough to diagnose; a broken run could otherwise print millions of lines.
        if self.violations.len() < 200 {
            self.violations.push(v);
        }
    }
}

fn cmid(m: &Value) -> Option<&str> {
    m["clientMsgId"].as_str()
}

/// `copies[node][stream]`, `fetched[stream]`.
pub fn check(history: &History, copies: &[Vec<Copy>], fetched: &[Fetched]) -> Report {
    let mut r = Report::default();
    let streams = fetched.len();
    for (node, per_stream) in copies.iter().enumerate() {
        for (s, copy) in per_stream.iter().enumerate() {
            check_gap_free(&mut r, node, s, copy);
            if copy.messages != copies[0][s].messages {
                let diverge = copy
                    .messages
                    .iter()
                    .zip(&copies[0][s].messages)
                    .position(|(a, b)| a != b)
                    .map_or("length".to_owned(), |i| format!("ordinal {}", i + 1));
                r.violation(format!(
                    "stream {s}: node {} and node 1 differ ({} vs {} messages, first at {diverge})",
                    node + 1,
                    copy.messages.len(),
                    copies[0][s].messages.len()
                ));
            }
        }
    }
    let Some(reference) = copies.first() else {
        r.violation("no replica was read".into());
        return r;
    };
    check_posts(&mut r, history, reference);
    for s in 0..streams {
        check_counts(&mut r, s, &reference[s], fetched[s]);
    }
    check_memberships(&mut r, history, reference);
    check_listeners(&mut r, history, reference);
    r
}

fn check_gap_free(r: &mut Report, node: usize, s: usize, copy: &Copy) {
    for (i, m) in copy.messages.iter().enumerate() {
        if m["ordinal"].as_u64() != Some(i as u64 + 1) {
            r.violation(format!(
                "stream {s} on node {}: position {} holds ordinal {}",
                node + 1,
                i + 1,
                m["ordinal"]
            ));
            return;
        }
    }
    if copy.message_count != copy.messages.len() as u64 {
        r.violation(format!(
            "stream {s} on node {}: messageCount {} but {} messages",
            node + 1,
            copy.message_count,
            copy.messages.len()
        ));
    }
}

fn check_posts(r: &mut Report, history: &History, reference: &[Copy]) {
    // Where each clientMsgId landed: (stream, ordinals).
    let mut found: BTreeMap<&str, Vec<(usize, u64)>> = BTreeMap::new();
    for (s, copy) in reference.iter().enumerate() {
        for m in &copy.messages {
            if let Some(id) = cmid(m) {
                found.entry(id).or_default().push((s, m["ordinal"].as_u64().unwrap_or(0)));
            }
        }
    }
    let mut known = BTreeSet::new();
    // Per (client, stream): acknowledged ordinals in send order.
    let mut order: BTreeMap<(usize, usize), Vec<(usize, u64)>> = BTreeMap::new();
    for p in &history.posts {
        known.insert(p.client_msg_id.as_str());
        let places = found.get(p.client_msg_id.as_str()).map_or(&[][..], Vec::as_slice);
        if places.len() > 1 {
            r.duplicated += places.len() - 1;
            r.violation(format!("{} stored {} times: {places:?}", p.client_msg_id, places.len()));
        }
        if places.iter().any(|(s, _)| *s != p.stream) {
            r.violation(format!("{} found in a stream it was not posted to", p.client_msg_id));
        }
        match &p.outcome {
            Outcome::Ok(ordinal) => {
                r.acked += 1;
                match places.first() {
                    None => {
                        r.lost += 1;
                        r.violation(format!(
                            "acknowledged {} (stream {}, ordinal {ordinal}, acked at {} ms) is lost",
                            p.client_msg_id, p.stream, p.end_ms
                        ));
                    }
                    Some((_, at)) if at != ordinal => r.violation(format!(
                        "{} acknowledged at ordinal {ordinal} but stored at {at}",
                        p.client_msg_id
                    )),
                    Some(_) => {}
                }
                order.entry((p.client, p.stream)).or_default().push((p.seq, *ordinal));
            }
            Outcome::Unknown => {
                r.unknown += 1;
                r.unknown_applied += usize::from(!places.is_empty());
            }
            Outcome::Error(_) => r.errors += 1,
        }
    }
    for ((client, s), mut acks) in order {
        acks.sort();
        for w in acks.windows(2) {
            if w[1].1 <= w[0].1 {
                r.violation(format!(
                    "client {client} stream {s}: post #{} (ordinal {}) before post #{} (ordinal {})",
                    w[0].0, w[0].1, w[1].0, w[1].1
                ));
            }
        }
    }
    for id in found.keys() {
        if !known.contains(id) {
            r.violation(format!("{id} is stored but no client ever sent it"));
        }
    }
}

fn check_counts(r: &mut Report, s: usize, copy: &Copy, fetched: Fetched) {
    let n = copy.messages.len() as u64;
    if fetched.message_count != n {
        r.violation(format!(
            "stream {s}: API messageCount {} but the log has {n}",
            fetched.message_count
        ));
    }
    // Replaying joins and leaves gives who participates at the end.
    let mut participating = BTreeSet::new();
    for m in &copy.messages {
        let user = m["byUserId"].as_str().unwrap_or("");
        match m["type"].as_str() {
            Some("Streams/joined") if !participating.insert(user) => {
                r.violation(format!("stream {s}: {user} joined twice without leaving"));
            }
            Some("Streams/left") if !participating.remove(user) => {
                r.violation(format!("stream {s}: {user} left without having joined"));
            }
            _ => {}
        }
    }
    if fetched.participant_count != participating.len() as u64 {
        r.violation(format!(
            "stream {s}: API participantCount {} but the log says {}",
            fetched.participant_count,
            participating.len()
        ));
    }
}

fn check_listeners(r: &mut Report, history: &History, reference: &[Copy]) {
    for (k, session) in history.sessions.iter().enumerate() {
        r.listen_sessions += 1;
        let log = &reference[session.stream].messages;
        let mut next = session.since + 1;
        for ev in &session.events {
            match ev {
                Event::Message { ordinal, client_msg_id, kind } => {
                    r.listened_messages += 1;
                    if *ordinal != next {
                        r.violation(format!(
                            "listen session {k} (listener {}, {}, stream {}, since {}): \
                             expected ordinal {next}, got {ordinal}",
                            session.listener, session.via, session.stream, session.since
                        ));
                        break;
                    }
                    let stored = log.get(*ordinal as usize - 1);
                    let same = stored.is_some_and(|m| {
                        cmid(m) == client_msg_id.as_deref() && m["type"].as_str() == Some(kind)
                    });
                    if !same {
                        r.violation(format!(
                            "listen session {k}: ordinal {ordinal} delivered as {kind} {client_msg_id:?} \
                             but the log holds {:?}",
                            stored.map(|m| (&m["type"], &m["clientMsgId"]))
                        ));
                        break;
                    }
                    next += 1;
                }
                Event::Resync { from } => {
                    r.resyncs += 1;
                    if *from > next {
                        r.violation(format!(
                            "listen session {k}: resync from {from} skips past {next}"
                        ));
                    }
                }
            }
        }
    }
}

/// Replays who participates in stream `s` at the end of its log.
fn participants(copy: &Copy) -> BTreeSet<&str> {
    let mut out = BTreeSet::new();
    for m in &copy.messages {
        let user = m["byUserId"].as_str().unwrap_or("");
        match m["type"].as_str() {
            Some("Streams/joined") => {
                out.insert(user);
            }
            Some("Streams/left") => {
                out.remove(user);
            }
            _ => {}
        }
    }
    out
}

/// One member task joins and leaves sequentially, so when every one of its operations on a
/// (user, stream) was acknowledged, the last one decides whether the user participates.
/// (Pairs with an unknown outcome are skipped: a request stuck in a paused node may land
/// after later ones, which is allowed.)
fn check_memberships(r: &mut Report, history: &History, reference: &[Copy]) {
    let mut last: BTreeMap<(&str, usize), Option<bool>> = BTreeMap::new();
    for m in &history.memberships {
        let entry = last.entry((m.user.as_str(), m.stream)).or_insert(Some(m.join));
        *entry = match (&*entry, &m.outcome) {
            (Some(_), Outcome::Ok(_)) => Some(m.join),
            _ => None,
        };
    }
    for ((user, s), join) in last {
        let Some(join) = join else { continue };
        let Some(copy) = reference.get(s) else { continue };
        if participants(copy).contains(user) != join {
            r.violation(format!(
                "stream {s}: {user}'s last acknowledged {} is not reflected in the log",
                if join { "join" } else { "leave" }
            ));
        }
    }
}

#[cfg(test)]
#[path = "check_tests.rs"]
mod tests;
