//! The checker catches what it exists to catch: fed a log with an acknowledged post missing,
//! duplicated, reordered, a gap, a diverging replica or a listener that skipped, it reports it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};

use super::*;
use crate::history::{ListenSession, Post, Via};

fn msg(ordinal: u64, id: Option<&str>) -> Value {
    let kind = if ordinal == 1 { "Streams/created" } else { "Chat/message" };
    json!({"ordinal": ordinal, "type": kind, "clientMsgId": id, "byUserId": ""})
}

fn copy(ids: &[&str]) -> Copy {
    let mut messages = vec![msg(1, None)];
    for (k, id) in ids.iter().enumerate() {
        messages.push(msg(k as u64 + 2, Some(id)));
    }
    Copy { message_count: messages.len() as u64, messages }
}

fn acked(seq: usize, ordinal: u64) -> Post {
    Post {
        client: 0,
        seq,
        stream: 0,
        client_msg_id: format!("c0-{seq}"),
        via_edge: false,
        outcome: Outcome::Ok(ordinal),
        end_ms: 0,
    }
}

fn history() -> History {
    History { posts: vec![acked(0, 2), acked(1, 3)], ..History::default() }
}

fn run(h: &History, copies: &[Copy]) -> Report {
    let per_node: Vec<Vec<Copy>> = copies.iter().map(|c| vec![c.clone()]).collect();
    let n = copies[0].messages.len() as u64;
    check(h, &per_node, &[Fetched { message_count: n, participant_count: 0 }])
}

#[test]
fn a_correct_history_passes() {
    let c = copy(&["c0-0", "c0-1"]);
    let r = run(&history(), &[c.clone(), c.clone(), c]);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert_eq!((r.acked, r.lost, r.duplicated), (2, 0, 0));
}

#[test]
fn a_lost_acknowledged_post_is_a_violation() {
    let c = copy(&["c0-0"]);
    let r = run(&history(), &[c.clone(), c.clone(), c]);
    assert_eq!(r.lost, 1);
    assert!(r.violations.iter().any(|v| v.contains("c0-1") && v.contains("lost")));
}

#[test]
fn a_duplicate_is_a_violation() {
    let c = copy(&["c0-0", "c0-1", "c0-1"]);
    let r = run(&history(), &[c.clone(), c.clone(), c]);
    assert_eq!(r.duplicated, 1);
}

#[test]
fn a_reordered_sequential_client_is_a_violation() {
    let c = copy(&["c0-1", "c0-0"]);
    let h = History { posts: vec![acked(0, 3), acked(1, 2)], ..History::default() };
    let r = run(&h, &[c.clone(), c.clone(), c]);
    assert!(r.violations.iter().any(|v| v.contains("before post")), "{:?}", r.violations);
}

#[test]
fn a_gap_and_a_diverging_replica_are_violations() {
    let good = copy(&["c0-0", "c0-1"]);
    let mut gap = good.clone();
    gap.messages[2]["ordinal"] = json!(4);
    let r = run(&history(), &[good.clone(), good, gap]);
    assert!(r.violations.iter().any(|v| v.contains("holds ordinal 4")), "{:?}", r.violations);
    assert!(r.violations.iter().any(|v| v.contains("differ")), "{:?}", r.violations);
}

#[test]
fn wrong_counts_are_violations() {
    let c = copy(&["c0-0", "c0-1"]);
    let per_node = vec![vec![c.clone()], vec![c.clone()], vec![c]];
    let r = check(&history(), &per_node, &[Fetched { message_count: 2, participant_count: 1 }]);
    assert!(r.violations.iter().any(|v| v.contains("messageCount")));
    assert!(r.violations.iter().any(|v| v.contains("participantCount")));
}

#[test]
fn a_listener_that_skips_an_ordinal_is_a_violation() {
    let c = copy(&["c0-0", "c0-1"]);
    let mut h = history();
    let ev = |o: u64, id: &str| Event::Message {
        ordinal: o,
        client_msg_id: Some(id.into()),
        kind: "Chat/message".into(),
    };
    h.sessions.push(ListenSession {
        listener: 0,
        via: Via::Edge(0),
        stream: 0,
        since: 1,
        events: vec![ev(3, "c0-1")],
    });
    let r = run(&h, &[c.clone(), c.clone(), c]);
    assert!(r.violations.iter().any(|v| v.contains("expected ordinal 2")), "{:?}", r.violations);
}
