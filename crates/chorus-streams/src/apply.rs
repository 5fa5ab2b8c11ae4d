//! The transitions of the stream state machine.
//!
//! Every message a command posts gets the next ordinal of its stream (`messageCount + 1`), so
//! ordinals are gap-free by construction and equal on every replica.

use chorus_types::{
    ClientMsgId, MessageRecord, Millis, ParticipantRecord, ParticipantState, StreamKey,
    StreamRecord, StreamType, UserId,
};
use serde_json::{Map, Value, json};

use crate::command::{Command, Envelope, FieldChanges, Outcome, ParticipantAction, Rejection};
use crate::state::{DedupeRecord, Overlay, StateRead, Write};

/// How long a `clientMsgId` is remembered: 24 h. It is a constant, not configuration, because
/// it decides replicated outcomes and must be the same on every replica.
pub const DEDUPE_WINDOW_MS: i64 = 24 * 60 * 60 * 1000;

/// Applies committed envelopes in order. Returns one outcome per envelope and the writes to
/// persist (atomically, with the applied index) before the outcomes are released.
pub fn apply_batch<R: StateRead>(
    state: &R,
    envelopes: &[Envelope],
) -> Result<(Vec<Outcome>, Vec<Write>), R::Error> {
    let mut overlay = Overlay::new(state);
    let outcomes = apply_entry(&mut overlay, envelopes)?;
    Ok((outcomes, overlay.into_writes()))
}

/// Applies the envelopes of one Raft entry on top of an overlay shared by the entries of one
/// apply call.
pub fn apply_entry<R: StateRead>(
    overlay: &mut Overlay<'_, R>,
    envelopes: &[Envelope],
) -> Result<Vec<Outcome>, R::Error> {
    envelopes.iter().map(|env| apply_one(overlay, env)).collect()
}

fn rejected(reason: Rejection) -> Outcome {
    Outcome::Rejected { code: reason.code(), reason, stream: None }
}

fn system_type(name: &'static str) -> StreamType {
    StreamType::from_static(name)
}

/// Appends a message to `stream`, bumping its counters.
fn post_message<R: StateRead>(
    ov: &mut Overlay<'_, R>,
    stream: &mut StreamRecord,
    env: &Envelope,
    message_type: StreamType,
    content: String,
    instructions: Option<Value>,
    client_msg_id: Option<ClientMsgId>,
) -> MessageRecord {
    stream.message_count += 1;
    stream.updated_time = env.time;
    let message = MessageRecord {
        publisher_id: stream.publisher_id.clone(),
        stream_name: stream.name.clone(),
        ordinal: stream.message_count,
        message_type,
        by_user_id: env.by.clone(),
        content,
        instructions,
        sent_time: env.time,
        client_msg_id,
    };
    ov.push(Write::Message(message.clone()));
    message
}

fn apply_one<R: StateRead>(ov: &mut Overlay<'_, R>, env: &Envelope) -> Result<Outcome, R::Error> {
    match &env.command {
        Command::Create { stream, access_rows } => {
            let key = stream.key();
            if ov.stream(&key)?.is_some() {
                return Ok(rejected(Rejection::AlreadyExists));
            }
            let mut s = (**stream).clone();
            s.message_count = 0;
            s.participant_count = 0;
            s.inserted_time = env.time;
            s.updated_time = env.time;
            s.closed_time = None;
            let instructions = json!({
                "type": s.stream_type, "title": s.title, "icon": s.icon, "content": s.content,
                "attributes": s.attributes, "readLevel": s.read_level, "writeLevel": s.write_level,
                "adminLevel": s.admin_level, "inheritAccess": s.inherit_access,
            });
            post_message(
                ov,
                &mut s,
                env,
                system_type("Streams/created"),
                String::new(),
                Some(instructions),
                None,
            );
            if !access_rows.is_empty() {
                ov.push(Write::Access { key, rows: access_rows.clone() });
            }
            ov.push(Write::Stream(s.clone()));
            Ok(Outcome::Stream(Box::new(s)))
        }
        Command::Update { key, changes, if_message_count } => {
            let Some(mut s) = ov.stream(key)? else { return Ok(rejected(Rejection::NotFound)) };
            if s.is_closed() {
                return Ok(rejected(Rejection::Closed));
            }
            if let Some(expected) = if_message_count
                && *expected != s.message_count
            {
                return Ok(Outcome::Rejected {
                    code: Rejection::MessageCountMismatch.code(),
                    reason: Rejection::MessageCountMismatch,
                    stream: Some(Box::new(s)),
                });
            }
            let changed = apply_changes(&mut s, changes);
            if !changed.is_empty() {
                let instructions = json!({ "changes": Value::Object(changed) });
                post_message(
                    ov,
                    &mut s,
                    env,
                    system_type("Streams/changed"),
                    String::new(),
                    Some(instructions),
                    None,
                );
                ov.push(Write::Stream(s.clone()));
            }
            Ok(Outcome::Stream(Box::new(s)))
        }
        Command::Close { key } => {
            let Some(mut s) = ov.stream(key)? else { return Ok(rejected(Rejection::NotFound)) };
            if s.is_closed() {
                // Closing twice changes nothing and posts nothing.
                return Ok(Outcome::Stream(Box::new(s)));
            }
            s.closed_time = Some(env.time);
            let instructions = json!({ "closedTime": env.time.to_rfc3339() });
            post_message(
                ov,
                &mut s,
                env,
                system_type("Streams/closed"),
                String::new(),
                Some(instructions),
                None,
            );
            ov.push(Write::Stream(s.clone()));
            Ok(Outcome::Stream(Box::new(s)))
        }
        Command::Post { key, message_type, content, instructions, client_msg_id } => {
            let Some(mut s) = ov.stream(key)? else { return Ok(rejected(Rejection::NotFound)) };
            if let Some(id) = client_msg_id
                && let Some(seen) = ov.dedupe(key, &env.by, id)?
                && env.time.0.saturating_sub(seen.time.0) < DEDUPE_WINDOW_MS
                && let Some(first) = ov.message(key, seen.ordinal)?
            {
                return Ok(Outcome::Posted { message: Box::new(first), duplicate: true });
            }
            if s.is_closed() {
                return Ok(rejected(Rejection::Closed));
            }
            let message = post_message(
                ov,
                &mut s,
                env,
                message_type.clone(),
                content.clone(),
                instructions.clone(),
                client_msg_id.clone(),
            );
            if let Some(id) = client_msg_id {
                let record = DedupeRecord { ordinal: message.ordinal, time: env.time };
                ov.push(Write::Dedupe {
                    key: key.clone(),
                    by: env.by.clone(),
                    id: id.clone(),
                    record,
                });
            }
            mark_posted(ov, key, &env.by, env.time)?;
            ov.push(Write::Stream(s));
            Ok(Outcome::Posted { message: Box::new(message), duplicate: false })
        }
        Command::Participate { key, user, action, extra, extra_max, unseen } => {
            let Some(s) = ov.stream(key)? else { return Ok(rejected(Rejection::NotFound)) };
            let joins = matches!(action, ParticipantAction::Join | ParticipantAction::Subscribe);
            if joins && s.is_closed() {
                return Ok(rejected(Rejection::Closed));
            }
            if *unseen && !changes_membership(ov, key, user, *action)? {
                return Ok(rejected(Rejection::NotFound));
            }
            participate(ov, s, env, user, *action, extra.as_ref(), *extra_max)
        }
        Command::SetAccess { key, rows } => {
            if !key.name.is_type_rule() && ov.stream(key)?.is_none() {
                return Ok(rejected(Rejection::NotFound));
            }
            ov.push(Write::Access { key: key.clone(), rows: rows.clone() });
            Ok(Outcome::Access(rows.clone()))
        }
        Command::JoinBatch { key, users } => {
            let Some(s) = ov.stream(key)? else { return Ok(rejected(Rejection::NotFound)) };
            if s.is_closed() {
                return Ok(rejected(Rejection::Closed));
            }
            join_batch(ov, s, env, users)
        }
    }
}

/// Sets the changed fields; returns `{field: newValue}` for those that really changed.
fn apply_changes(s: &mut StreamRecord, c: &FieldChanges) -> Map<String, Value> {
    let mut changed = Map::new();
    macro_rules! set {
        ($field:ident, $wire:literal) => {
            if let Some(v) = &c.$field
                && *v != s.$field
            {
                s.$field = v.clone();
                changed.insert($wire.into(), json!(v));
            }
        };
    }
    set!(title, "title");
    set!(icon, "icon");
    set!(content, "content");
    set!(attributes, "attributes");
    set!(read_level, "readLevel");
    set!(write_level, "writeLevel");
    set!(admin_level, "adminLevel");
    set!(inherit_access, "inheritAccess");
    changed
}

/// A participant who posts gets `posted = true` (once).
fn mark_posted<R: StateRead>(
    ov: &mut Overlay<'_, R>,
    key: &StreamKey,
    by: &str,
    time: Millis,
) -> Result<(), R::Error> {
    let Ok(user) = UserId::new(by) else { return Ok(()) };
    if let Some(mut p) = ov.participant(key, &user)?
        && !p.posted
    {
        let prev = Some(p.state);
        p.posted = true;
        p.updated_time = time;
        ov.push(Write::Participant { key: key.clone(), prev, record: p });
    }
    Ok(())
}

/// Whether a leave or unsubscribe would change the user's record (they participate, or are
/// subscribed).
fn changes_membership<R: StateRead>(
    ov: &mut Overlay<'_, R>,
    key: &StreamKey,
    user: &UserId,
    action: ParticipantAction,
) -> Result<bool, R::Error> {
    let Some(p) = ov.participant(key, user)? else { return Ok(false) };
    Ok(match action {
        ParticipantAction::Leave => p.state == ParticipantState::Participating,
        ParticipantAction::Unsubscribe => p.subscribed,
        ParticipantAction::Join | ParticipantAction::Subscribe => false,
    })
}

fn merge_extra(into: &mut Value, extra: Option<&Value>) {
    if let (Value::Object(target), Some(Value::Object(add))) = (into, extra) {
        for (k, v) in add {
            target.insert(k.clone(), v.clone());
        }
    }
}

/// A user with no participant record, as a record (state `left`, nothing set).
fn not_a_participant(user: &UserId, time: Millis) -> ParticipantRecord {
    ParticipantRecord {
        user_id: user.clone(),
        state: ParticipantState::Left,
        subscribed: false,
        posted: false,
        roles: Vec::new(),
        extra: Value::Object(Map::new()),
        inserted_time: time,
        updated_time: time,
    }
}

fn participate<R: StateRead>(
    ov: &mut Overlay<'_, R>,
    mut s: StreamRecord,
    env: &Envelope,
    user: &UserId,
    action: ParticipantAction,
    extra: Option<&Value>,
    extra_max: Option<u32>,
) -> Result<Outcome, R::Error> {
    let key = s.key();
    let existing = ov.participant(&key, user)?;
    let leaving = matches!(action, ParticipantAction::Leave | ParticipantAction::Unsubscribe);
    if existing.is_none() && leaving {
        // Never a participant: nothing to leave, nothing is stored (not even `extra`).
        return Ok(Outcome::Participant(Box::new(not_a_participant(user, env.time))));
    }
    let prev = existing.as_ref().map(|p| p.state);
    let mut p = existing.unwrap_or_else(|| not_a_participant(user, env.time));
    let before = p.clone();
    let participating = p.state == ParticipantState::Participating;
    let mut posts: Vec<(&str, Value)> = Vec::new();
    merge_extra(&mut p.extra, extra);
    // Each request's `extra` is checked alone before proposing; the merged value is checked
    // here, or repeated joins adding keys would grow it (and every `Streams/joined` and
    // `Streams/left` that repeats it) without bound.
    if let (Some(max), Some(_)) = (extra_max, extra)
        && p.extra != before.extra
        && serde_json::to_vec(&p.extra).map_or(usize::MAX, |b| b.len()) > max as usize
    {
        return Ok(rejected(Rejection::ExtraTooLarge));
    }
    match action {
        ParticipantAction::Join | ParticipantAction::Subscribe => {
            if !participating {
                p.state = ParticipantState::Participating;
                s.participant_count += 1;
                let prev_state = prev.map(|st| st.as_str());
                posts.push(("Streams/joined", json!({"prevState": prev_state, "extra": p.extra})));
            }
            if action == ParticipantAction::Subscribe && !p.subscribed {
                p.subscribed = true;
                posts.push(("Streams/subscribed", json!({})));
            }
        }
        ParticipantAction::Leave => {
            if participating {
                p.state = ParticipantState::Left;
                p.subscribed = false;
                s.participant_count = s.participant_count.saturating_sub(1);
                posts.push((
                    "Streams/left",
                    json!({"prevState": "participating", "extra": p.extra}),
                ));
            }
        }
        ParticipantAction::Unsubscribe => {
            if p.subscribed {
                p.subscribed = false;
                posts.push(("Streams/unsubscribed", json!({})));
            }
        }
    }
    if p == before {
        // Idempotent: nothing changed, nothing is written or posted.
        return Ok(Outcome::Participant(Box::new(p)));
    }
    p.updated_time = env.time;
    for (ty, instructions) in posts {
        post_message(ov, &mut s, env, system_type(ty), String::new(), Some(instructions), None);
    }
    ov.push(Write::Participant { key, prev, record: p.clone() });
    ov.push(Write::Stream(s));
    Ok(Outcome::Participant(Box::new(p)))
}

/// Joins every user of the batch who is not participating yet, as [`participate`] joins one
/// (state `participating`; `subscribed`, `posted`, `roles` and `extra` of an earlier record
/// kept), and posts one `Streams/joined` for the whole batch:
/// `{"userIds": [the users it joined, in request order], "prevState": null}` by the app.
///
/// Qbix posts a `Streams/joined` per join. For a batch that would be up to 1000 messages per
/// entry, 300,000 to fill a big room, each fanned out to every listener; one message per batch
/// keeps the log an exact record of who joined (a client replaying history still learns every
/// member) at a 1000th of the cost. `prevState` is `null` because the users' previous states
/// differ; readers that need them have the participant records.
fn join_batch<R: StateRead>(
    ov: &mut Overlay<'_, R>,
    mut s: StreamRecord,
    env: &Envelope,
    users: &[UserId],
) -> Result<Outcome, R::Error> {
    let key = s.key();
    let mut joined: Vec<&UserId> = Vec::new();
    for user in users {
        // A user named twice in the batch finds the overlay's record of the first mention
        // (participating) and is skipped: counted once.
        let existing = ov.participant(&key, user)?;
        let prev = existing.as_ref().map(|p| p.state);
        if prev == Some(ParticipantState::Participating) {
            continue;
        }
        let mut p = existing.unwrap_or_else(|| not_a_participant(user, env.time));
        p.state = ParticipantState::Participating;
        p.updated_time = env.time;
        s.participant_count += 1;
        ov.push(Write::Participant { key: key.clone(), prev, record: p });
        joined.push(user);
    }
    if !joined.is_empty() {
        let instructions = json!({ "userIds": joined, "prevState": null });
        post_message(
            ov,
            &mut s,
            env,
            system_type("Streams/joined"),
            String::new(),
            Some(instructions),
            None,
        );
        ov.push(Write::Stream(s.clone()));
    }
    Ok(Outcome::BatchJoined { joined: joined.len() as u64, participant_count: s.participant_count })
}
