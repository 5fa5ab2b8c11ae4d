//! Rendering records into the JSON shapes of DESIGN.md §3.
//!
//! Records keep times as milliseconds and every field; clients see RFC 3339 times and only the
//! stream fields their read level exposes.

use chorus_types::{
    ClientMsgId, MessageRecord, Millis, ParticipantRecord, PublisherId, ReadLevel, StreamName,
    StreamType,
};
use serde::Serialize;
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

/// A message as clients see it, serialized straight from the record: a post's reply and the
/// `message` event are rendered on every post, and going through a `Value` map allocated and
/// copied every field twice.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageWire<'a> {
    by_user_id: &'a str,
    client_msg_id: Option<&'a ClientMsgId>,
    content: &'a str,
    instructions: Option<&'a Value>,
    ordinal: u64,
    publisher_id: &'a PublisherId,
    sent_time: String,
    stream_name: &'a StreamName,
    #[serde(rename = "type")]
    message_type: &'a StreamType,
}

impl<'a> MessageWire<'a> {
    fn of(m: &'a MessageRecord) -> Self {
        MessageWire {
            by_user_id: &m.by_user_id,
            client_msg_id: m.client_msg_id.as_ref(),
            content: &m.content,
            instructions: m.instructions.as_ref(),
            ordinal: m.ordinal,
            publisher_id: &m.publisher_id,
            sent_time: m.sent_time.to_rfc3339(),
            stream_name: &m.stream_name,
            message_type: &m.message_type,
        }
    }
}

pub fn message_json(m: &MessageRecord) -> Value {
    // Serializing plain strings and numbers into a `Value` cannot fail.
    serde_json::to_value(MessageWire::of(m)).unwrap_or(Value::Null)
}

/// [`message_json`] as text.
pub fn message_text(m: &MessageRecord) -> String {
    // Serializing plain strings and numbers into a `String` cannot fail.
    serde_json::to_string(&MessageWire::of(m)).unwrap_or_default()
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
    format!(r#"{{"ev":"message","message":{}}}"#, message_text(m))
}

#[cfg(test)]
mod tests {
    use chorus_types::{ClientMsgId, MessageRecord, Millis, PublisherId, StreamName, StreamType};
    use serde_json::{Value, json};

    use super::*;

    fn record(instructions: Option<Value>, client_msg_id: Option<&str>) -> MessageRecord {
        MessageRecord {
            publisher_id: PublisherId::new("alice").unwrap(),
            stream_name: StreamName::new("Chat/room/1").unwrap(),
            ordinal: 7,
            message_type: StreamType::new("Chat/text").unwrap(),
            by_user_id: "bob".into(),
            content: "hi \"there\"\n".into(),
            instructions,
            sent_time: Millis(1_700_000_000_123),
            client_msg_id: client_msg_id.map(|c| ClientMsgId::new(c).unwrap()),
        }
    }

    /// DESIGN.md §3's message shape, every field present (absent options as null).
    #[test]
    fn message_renders_every_field_as_value_and_as_text() {
        for m in [record(None, None), record(Some(json!({"a": [1, 2]})), Some("c-1"))] {
            let expected = json!({
                "publisherId": "alice",
                "streamName": "Chat/room/1",
                "ordinal": 7,
                "type": "Chat/text",
                "byUserId": "bob",
                "content": "hi \"there\"\n",
                "instructions": m.instructions,
                "sentTime": m.sent_time.to_rfc3339(),
                "clientMsgId": m.client_msg_id,
            });
            assert_eq!(message_json(&m), expected);
            let text: Value = serde_json::from_str(&message_text(&m)).unwrap();
            assert_eq!(text, expected);
            let event: Value = serde_json::from_str(&message_event(&m)).unwrap();
            assert_eq!(event, json!({"ev": "message", "message": expected}));
        }
    }
}
