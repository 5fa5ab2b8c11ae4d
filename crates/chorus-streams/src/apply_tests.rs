//! Engine-style tests: state in, envelopes in, outcomes and state out.

use chorus_types::{
    ClientMsgId, ErrorCode, Millis, ParticipantState, PublisherId, StreamKey, StreamName,
    StreamType, UserId,
};
use serde_json::json;

use crate::command::{Command, Envelope, FieldChanges, Outcome, ParticipantAction};
use crate::mem::MemState;
use crate::template::resolve;
use crate::{DEDUPE_WINDOW_MS, apply_batch};

fn key(name: &str) -> StreamKey {
    StreamKey::new(PublisherId::new("alice").unwrap(), StreamName::new(name).unwrap())
}

fn env(t: i64, by: &str, command: Command) -> Envelope {
    Envelope { time: Millis(t), by: by.into(), command }
}

fn create(name: &str) -> Command {
    let (stream, access_rows) = resolve(
        PublisherId::new("alice").unwrap(),
        StreamName::new(name).unwrap(),
        StreamType::new("Chat/room").unwrap(),
        FieldChanges { read_level: Some(35), write_level: Some(20), ..Default::default() },
        None,
    );
    Command::Create { stream: Box::new(stream), access_rows }
}

fn post(name: &str, text: &str, id: Option<&str>) -> Command {
    Command::Post {
        key: key(name),
        message_type: StreamType::new("Chat/message").unwrap(),
        content: text.into(),
        instructions: None,
        client_msg_id: id.map(|i| ClientMsgId::new(i).unwrap()),
    }
}

fn join(name: &str, user: &str, action: ParticipantAction) -> Command {
    Command::Participate {
        key: key(name),
        user: UserId::new(user).unwrap(),
        action,
        extra: None,
        extra_max: None,
        unseen: false,
    }
}

fn run(state: &mut MemState, envs: &[Envelope]) -> Vec<Outcome> {
    let (outcomes, writes) = apply_batch(state, envs).unwrap();
    state.write(writes);
    outcomes
}

fn ordinal(o: &Outcome) -> (u64, bool) {
    match o {
        Outcome::Posted { message, duplicate } => (message.ordinal, *duplicate),
        other => panic!("not a post: {other:?}"),
    }
}

fn code(o: &Outcome) -> Option<ErrorCode> {
    match o {
        Outcome::Rejected { code, .. } => Some(*code),
        _ => None,
    }
}

/// Ordinals are 1, 2, 3, … including the system messages; messageCount is the last one.
#[test]
fn ordinals_are_gap_free_across_batches() {
    let mut s = MemState::default();
    run(&mut s, &[env(1, "alice", create("r"))]);
    let out =
        run(&mut s, &[env(2, "bob", post("r", "a", None)), env(2, "bob", post("r", "b", None))]);
    assert_eq!(out.iter().map(ordinal).collect::<Vec<_>>(), vec![(2, false), (3, false)]);
    let out = run(&mut s, &[env(3, "bob", post("r", "c", None))]);
    assert_eq!(ordinal(&out[0]), (4, false));
    assert_eq!(s.streams[&key("r")].message_count, 4);
    let ords: Vec<u64> = s.messages.keys().map(|(_, o)| *o).collect();
    assert_eq!(ords, vec![1, 2, 3, 4]);
    assert_eq!(s.messages[&(key("r"), 1)].message_type.as_str(), "Streams/created");
}

/// A retry with the same clientMsgId, in the same batch or a later one, returns the first
/// ordinal and adds nothing; after the window it is a new post.
#[test]
fn client_msg_id_is_idempotent_within_the_window() {
    let mut s = MemState::default();
    run(&mut s, &[env(1, "alice", create("r"))]);
    let out = run(
        &mut s,
        &[env(2, "bob", post("r", "a", Some("m1"))), env(2, "bob", post("r", "a", Some("m1")))],
    );
    assert_eq!(ordinal(&out[0]), (2, false));
    assert_eq!(ordinal(&out[1]), (2, true));
    let out = run(&mut s, &[env(1000, "bob", post("r", "different", Some("m1")))]);
    assert_eq!(ordinal(&out[0]), (2, true));
    assert_eq!(s.streams[&key("r")].message_count, 2);
    let out = run(&mut s, &[env(2 + DEDUPE_WINDOW_MS, "bob", post("r", "a", Some("m1")))]);
    assert_eq!(ordinal(&out[0]), (3, false));
}

#[test]
fn create_twice_is_already_exists_and_missing_is_not_found() {
    let mut s = MemState::default();
    run(&mut s, &[env(1, "alice", create("r"))]);
    let out = run(&mut s, &[env(2, "alice", create("r")), env(2, "bob", post("nope", "x", None))]);
    assert_eq!(code(&out[0]), Some(ErrorCode::AlreadyExists));
    assert_eq!(code(&out[1]), Some(ErrorCode::NotFound));
    assert_eq!(s.streams[&key("r")].message_count, 1);
}

/// Join, subscribe, leave keep participantCount exact and post one message per change;
/// repeats are idempotent and post nothing.
#[test]
fn participants_count_exactly() {
    let mut s = MemState::default();
    run(&mut s, &[env(1, "alice", create("r"))]);
    run(
        &mut s,
        &[
            env(2, "bob", join("r", "bob", ParticipantAction::Join)),
            env(2, "bob", join("r", "bob", ParticipantAction::Join)),
            env(2, "carol", join("r", "carol", ParticipantAction::Subscribe)),
        ],
    );
    let st = &s.streams[&key("r")];
    assert_eq!(st.participant_count, 2);
    let types: Vec<&str> = s.messages.values().map(|m| m.message_type.as_str()).collect();
    assert_eq!(
        types,
        vec!["Streams/created", "Streams/joined", "Streams/joined", "Streams/subscribed"]
    );
    let out = run(
        &mut s,
        &[
            env(3, "bob", join("r", "bob", ParticipantAction::Leave)),
            env(3, "bob", join("r", "bob", ParticipantAction::Leave)),
            env(3, "dave", join("r", "dave", ParticipantAction::Leave)),
            env(3, "carol", join("r", "carol", ParticipantAction::Unsubscribe)),
        ],
    );
    assert!(out.iter().all(|o| matches!(o, Outcome::Participant(_))));
    assert_eq!(s.streams[&key("r")].participant_count, 1);
    assert_eq!(s.streams[&key("r")].message_count, 6);
    let bob = &s.participants[&(key("r"), UserId::new("bob").unwrap())];
    assert_eq!(bob.state, ParticipantState::Left);
    assert!(!s.participants.contains_key(&(key("r"), UserId::new("dave").unwrap())));
}

fn join_batch(name: &str, users: &[&str]) -> Command {
    Command::JoinBatch {
        key: key(name),
        users: users.iter().map(|u| UserId::new(*u).unwrap()).collect(),
    }
}

fn batch_joined(o: &Outcome) -> (u64, u64) {
    match o {
        Outcome::BatchJoined { joined, participant_count } => (*joined, *participant_count),
        other => panic!("not a batch join: {other:?}"),
    }
}

/// A batch join counts each newly joined user once (repeats in the batch, users already
/// participating and earlier leavers rejoining), keeps the record of a returning user, and
/// posts one `Streams/joined` listing exactly the users it joined; a batch that joins nobody
/// writes and posts nothing.
#[test]
fn join_batch_counts_exactly_and_posts_once() {
    let mut s = MemState::default();
    run(
        &mut s,
        &[
            env(1, "alice", create("r")),
            env(1, "bob", join("r", "bob", ParticipantAction::Subscribe)),
            env(1, "carol", join("r", "carol", ParticipantAction::Join)),
            env(2, "carol", join("r", "carol", ParticipantAction::Leave)),
        ],
    );
    assert_eq!(s.streams[&key("r")].participant_count, 1);
    let before = s.streams[&key("r")].message_count;
    let out =
        run(&mut s, &[env(3, "", join_batch("r", &["bob", "carol", "dave", "dave", "erin"]))]);
    assert_eq!(batch_joined(&out[0]), (3, 4), "carol, dave, erin are new; bob already in");
    let st = &s.streams[&key("r")];
    assert_eq!((st.participant_count, st.message_count), (4, before + 1));
    let joined = &s.messages[&(key("r"), before + 1)];
    assert_eq!(joined.message_type.as_str(), "Streams/joined");
    assert_eq!(joined.by_user_id, "");
    assert_eq!(
        joined.instructions,
        Some(json!({"userIds": ["carol", "dave", "erin"], "prevState": null}))
    );
    let bob = &s.participants[&(key("r"), UserId::new("bob").unwrap())];
    assert!(bob.subscribed, "an existing participant is left as it was");
    let carol = &s.participants[&(key("r"), UserId::new("carol").unwrap())];
    assert_eq!((carol.state, carol.updated_time), (ParticipantState::Participating, Millis(3)));

    let snapshot = s.clone();
    let out = run(&mut s, &[env(4, "", join_batch("r", &["dave", "erin"]))]);
    assert_eq!(batch_joined(&out[0]), (0, 4));
    assert_eq!(s, snapshot, "a batch that joins nobody changes nothing");
}

#[test]
fn join_batch_needs_an_open_stream() {
    let mut s = MemState::default();
    let out = run(&mut s, &[env(1, "", join_batch("nope", &["bob"]))]);
    assert_eq!(code(&out[0]), Some(ErrorCode::NotFound));
    run(&mut s, &[env(1, "alice", create("r")), env(2, "alice", Command::Close { key: key("r") })]);
    let out = run(&mut s, &[env(3, "", join_batch("r", &["bob"]))]);
    assert_eq!(code(&out[0]), Some(ErrorCode::Conflict));
    assert_eq!(s.streams[&key("r")].participant_count, 0);
}

#[test]
fn posting_marks_participant_posted() {
    let mut s = MemState::default();
    run(
        &mut s,
        &[env(1, "alice", create("r")), env(1, "bob", join("r", "bob", ParticipantAction::Join))],
    );
    run(&mut s, &[env(2, "bob", post("r", "hi", None))]);
    assert!(s.participants[&(key("r"), UserId::new("bob").unwrap())].posted);
}

/// Update posts Streams/changed with only the changed fields; ifMessageCount guards it.
#[test]
fn update_and_precondition() {
    let mut s = MemState::default();
    run(&mut s, &[env(1, "alice", create("r"))]);
    let changes =
        FieldChanges { title: Some("T".into()), read_level: Some(35), ..Default::default() };
    let out = run(
        &mut s,
        &[env(
            2,
            "alice",
            Command::Update { key: key("r"), changes: changes.clone(), if_message_count: Some(1) },
        )],
    );
    assert!(matches!(&out[0], Outcome::Stream(st) if st.title == "T" && st.message_count == 2));
    let m = &s.messages[&(key("r"), 2)];
    assert_eq!(m.message_type.as_str(), "Streams/changed");
    assert_eq!(m.instructions, Some(json!({"changes": {"title": "T"}})));
    let out = run(
        &mut s,
        &[env(3, "alice", Command::Update { key: key("r"), changes, if_message_count: Some(1) })],
    );
    match &out[0] {
        Outcome::Rejected { code, stream, .. } => {
            assert_eq!(*code, ErrorCode::Conflict);
            assert_eq!(stream.as_ref().map(|s| s.message_count), Some(2));
        }
        other => panic!("{other:?}"),
    }
}

/// Close keeps history, posts Streams/closed, then refuses posts, joins and updates.
#[test]
fn closed_streams_refuse_changes() {
    let mut s = MemState::default();
    run(&mut s, &[env(1, "alice", create("r")), env(1, "bob", post("r", "a", Some("x")))]);
    let out = run(&mut s, &[env(5, "alice", Command::Close { key: key("r") })]);
    assert!(matches!(&out[0], Outcome::Stream(st) if st.closed_time == Some(Millis(5))));
    let out = run(
        &mut s,
        &[
            env(6, "bob", post("r", "b", None)),
            env(6, "bob", join("r", "bob", ParticipantAction::Join)),
            env(
                6,
                "alice",
                Command::Update {
                    key: key("r"),
                    changes: FieldChanges::default(),
                    if_message_count: None,
                },
            ),
            env(6, "bob", post("r", "a", Some("x"))),
        ],
    );
    assert_eq!(code(&out[0]), Some(ErrorCode::Conflict));
    assert_eq!(code(&out[1]), Some(ErrorCode::Conflict));
    assert_eq!(code(&out[2]), Some(ErrorCode::Conflict));
    assert_eq!(ordinal(&out[3]), (2, true), "a retry of an acknowledged post still answers");
    assert_eq!(s.streams[&key("r")].message_count, 3);
    assert_eq!(s.messages[&(key("r"), 3)].message_type.as_str(), "Streams/closed");
}

/// The same log applied twice, in different batchings, gives identical state.
#[test]
fn same_log_same_state() {
    let mut log = vec![env(1, "alice", create("a")), env(1, "alice", create("b"))];
    for i in 0..50 {
        let name = if i % 3 == 0 { "a" } else { "b" };
        log.push(env(10 + i, "bob", post(name, &format!("m{i}"), Some(&format!("id{}", i % 7)))));
        if i % 10 == 0 {
            log.push(env(10 + i, "bob", join(name, "bob", ParticipantAction::Subscribe)));
        }
        if i % 17 == 0 {
            log.push(env(10 + i, "carol", join(name, "carol", ParticipantAction::Leave)));
        }
        if i % 13 == 0 {
            log.push(env(10 + i, "", join_batch(name, &["carol", "dave", &format!("u{i}")])));
        }
    }
    let mut one = MemState::default();
    run(&mut one, &log);
    let mut two = MemState::default();
    for chunk in log.chunks(3) {
        run(&mut two, chunk);
    }
    assert_eq!(one, two);
    assert_eq!(format!("{one:?}"), format!("{two:?}"));
}

/// Each join's `extra` fits alone, but merged they would not: the join that would overflow is
/// refused (413) and changes nothing; one that adds nothing new, or carries no `extra`, passes.
#[test]
fn merged_extra_stays_within_its_limit() {
    let mut s = MemState::default();
    run(&mut s, &[env(1, "alice", create("r"))]);
    let with = |k: &str, bytes: usize| Command::Participate {
        key: key("r"),
        user: UserId::new("bob").unwrap(),
        action: ParticipantAction::Join,
        extra: Some(json!({ k: "x".repeat(bytes) })),
        extra_max: Some(1000),
        unseen: false,
    };
    let out = run(&mut s, &[env(2, "bob", with("a", 600))]);
    assert_eq!(code(&out[0]), None);
    let out = run(&mut s, &[env(3, "bob", with("b", 600))]);
    assert_eq!(code(&out[0]), Some(ErrorCode::TooLarge));
    let stored = &s.participants[&(key("r"), UserId::new("bob").unwrap())];
    assert_eq!(stored.extra.as_object().map(|m| m.len()), Some(1));
    let out = run(&mut s, &[env(4, "bob", with("a", 600))]);
    assert_eq!(code(&out[0]), None);
    let out = run(&mut s, &[env(5, "bob", join("r", "bob", ParticipantAction::Leave))]);
    assert_eq!(code(&out[0]), None);
}

/// A leave from someone who cannot see the stream goes ahead when it changes their record and
/// is `not_found` otherwise, so it tells nobody else that the stream exists.
#[test]
fn unseen_leave_only_for_participants() {
    let mut s = MemState::default();
    run(&mut s, &[env(1, "alice", create("r"))]);
    run(&mut s, &[env(2, "bob", join("r", "bob", ParticipantAction::Subscribe))]);
    assert_eq!(s.streams[&key("r")].participant_count, 1);
    let unseen = |user: &str, action| match join("r", user, action) {
        Command::Participate { key, user, action, .. } => {
            Command::Participate { key, user, action, extra: None, extra_max: None, unseen: true }
        }
        other => other,
    };
    let out = run(&mut s, &[env(3, "carol", unseen("carol", ParticipantAction::Leave))]);
    assert_eq!(code(&out[0]), Some(ErrorCode::NotFound));
    let out = run(&mut s, &[env(4, "bob", unseen("bob", ParticipantAction::Leave))]);
    assert_eq!(code(&out[0]), None);
    assert_eq!(s.streams[&key("r")].participant_count, 0);
    let out = run(&mut s, &[env(5, "bob", unseen("bob", ParticipantAction::Leave))]);
    assert_eq!(code(&out[0]), Some(ErrorCode::NotFound), "nothing left to change");
}
