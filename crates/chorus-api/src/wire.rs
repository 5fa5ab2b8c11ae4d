//! Rendering records into the JSON shapes of DESIGN.md §3.
//!
//! Records keep times as milliseconds and every field; clients see RFC 3339 times and only the
//! stream fields their read level exposes.

use chorus_types::{MessageRecord, Millis, ParticipantRecord, ReadLevel};
use serde_json::{Map, Value, json};

use crate::StreamView;

fn time(t: Millis) -> Value {
    Value::String(t.to_rfc3339())
}

/// A stream as `view.read_level` exposes it: `see` gives identity, title, icon and times;
/// `content` adds `content`; `fields` adds everything else.
pub fn stream_json(view: &StreamView) -> Value {
    let s = &view.record;
    let level = view.read_level;
    let mut m = Map::new();
    if level < ReadLevel::SEE {
        return Value::Object(m);
    }
    m.insert("publisherId".into(), json!(s.publisher_id));
    m.insert("name".into(), json!(s.name));
    m.insert("type".into(), json!(s.stream_type));
    m.insert("title".into(), json!(s.title));
    m.insert("icon".into(), json!(s.icon));
    m.insert("insertedTime".into(), time(s.inserted_time));
    m.insert("updatedTime".into(), time(s.updated_time));
    m.insert("closedTime".into(), s.closed_time.map(time).unwrap_or(Value::Null));
    if level >= ReadLevel::CONTENT {
        m.insert("content".into(), json!(s.content));
    }
    if level >= ReadLevel::FIELDS {
        m.insert("attributes".into(), s.attributes.clone());
        m.insert("readLevel".into(), json!(s.read_level));
        m.insert("writeLevel".into(), json!(s.write_level));
        m.insert("adminLevel".into(), json!(s.admin_level));
        m.insert("inheritAccess".into(), json!(s.inherit_access));
        m.insert("messageCount".into(), json!(s.message_count));
        m.insert("participantCount".into(), json!(s.participant_count));
    }
    Value::Object(m)
}

pub fn message_json(m: &MessageRecord) -> Value {
    json!({
        "publisherId": m.publisher_id,
        "streamName": m.stream_name,
        "ordinal": m.ordinal,
        "type": m.message_type,
        "byUserId": m.by_user_id,
        "content": m.content,
        "instructions": m.instructions,
        "sentTime": time(m.sent_time),
        "clientMsgId": m.client_msg_id,
    })
}

pub fn participant_json(p: &ParticipantRecord) -> Value {
    json!({
        "userId": p.user_id,
        "state": p.state,
        "subscribed": p.subscribed,
        "posted": p.posted,
        "roles": p.roles,
        "extra": p.extra,
        "updatedTime": time(p.updated_time),
    })
}

/// The `message` event frame, rendered once per committed message.
pub fn message_event(m: &MessageRecord) -> String {
    json!({"ev": "message", "message": message_json(m)}).to_string()
}
