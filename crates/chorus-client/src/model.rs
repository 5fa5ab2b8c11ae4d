//! The wire shapes the SDK reads and writes (DESIGN.md §3 "JSON shapes").
//!
//! Every field a caller may not see by its read level is optional, and every shape keeps the
//! fields it does not know in `extra`: the server may add response fields at any time, and a
//! value cached by this version must round-trip them for the next.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The identity of a stream: `(publisherId, name)`. The app publisher is `""`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamId {
    pub publisher_id: String,
    pub name: String,
}

impl StreamId {
    pub fn new(publisher_id: impl Into<String>, name: impl Into<String>) -> StreamId {
        StreamId { publisher_id: publisher_id.into(), name: name.into() }
    }

    /// Parses the CLI form `publisherId/name` (`alice/Chat/room/1`); `~` is the app publisher.
    /// `None` when there is no `/` or nothing after it.
    pub fn parse_path(path: &str) -> Option<StreamId> {
        let (publisher, name) = path.split_once('/')?;
        if name.is_empty() {
            return None;
        }
        let publisher = if publisher == "~" { "" } else { publisher };
        Some(StreamId::new(publisher, name))
    }

    /// The key of this stream in the local store. Publisher ids never contain NUL (DESIGN.md
    /// §3 names), so the separator is unambiguous.
    pub(crate) fn store_key(&self) -> String {
        format!("{}\u{0}{}", self.publisher_id, self.name)
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let publisher = if self.publisher_id.is_empty() { "~" } else { &self.publisher_id };
        write!(f, "{publisher}/{}", self.name)
    }
}

/// A stored message, as the server sends it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub publisher_id: String,
    pub stream_name: String,
    /// 1, 2, 3, … per stream, without gaps.
    pub ordinal: u64,
    #[serde(rename = "type")]
    pub message_type: String,
    #[serde(default)]
    pub by_user_id: String,
    #[serde(default)]
    pub content: String,
    #[serde(default)]
    pub instructions: Option<Value>,
    /// RFC 3339 UTC.
    #[serde(default)]
    pub sent_time: Option<String>,
    #[serde(default)]
    pub client_msg_id: Option<String>,
    /// Fields a newer server added.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Message {
    pub fn stream(&self) -> StreamId {
        StreamId::new(&self.publisher_id, &self.stream_name)
    }
}

/// A stream's fields; those hidden by the caller's read level are `None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Stream {
    pub publisher_id: String,
    pub name: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub stream_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_level: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write_level: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_level: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participant_count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_time: Option<String>,
    /// `inheritAccess`, `insertedTime`, `updatedTime` and anything newer.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Stream {
    pub fn id(&self) -> StreamId {
        StreamId::new(&self.publisher_id, &self.name)
    }
}

/// Field changes for `update` (HTTP `PATCH`). Only the fields that are `Some` are sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamUpdate {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icon: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attributes: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_level: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write_level: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_level: Option<i32>,
}

impl StreamUpdate {
    /// Writes the changed fields into `stream`: the optimistic local value.
    pub fn apply_to(&self, stream: &mut Stream) {
        let overwrite = |target: &mut Option<String>, value: &Option<String>| {
            if let Some(value) = value {
                *target = Some(value.clone());
            }
        };
        overwrite(&mut stream.title, &self.title);
        overwrite(&mut stream.icon, &self.icon);
        overwrite(&mut stream.content, &self.content);
        if let Some(attributes) = &self.attributes {
            stream.attributes = Some(attributes.clone());
        }
        stream.read_level = self.read_level.or(stream.read_level);
        stream.write_level = self.write_level.or(stream.write_level);
        stream.admin_level = self.admin_level.or(stream.admin_level);
    }
}

/// What to post: `type` and `content`, plus optional `instructions` and `clientMsgId`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NewMessage {
    #[serde(rename = "type")]
    pub message_type: String,
    pub content: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instructions: Option<Value>,
    /// The idempotency key; a fresh ULID when `None`. Give one only to tie a post to an id
    /// the app already has (a retry from outside the SDK).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

impl NewMessage {
    pub fn new(message_type: impl Into<String>, content: impl Into<String>) -> NewMessage {
        NewMessage {
            message_type: message_type.into(),
            content: content.into(),
            instructions: None,
            client_msg_id: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn stream_paths() {
        assert_eq!(
            StreamId::parse_path("alice/Chat/room/1"),
            Some(StreamId::new("alice", "Chat/room/1"))
        );
        assert_eq!(StreamId::parse_path("~/x"), Some(StreamId::new("", "x")));
        assert_eq!(StreamId::parse_path("alice"), None);
        assert_eq!(StreamId::parse_path("alice/"), None);
        assert_eq!(StreamId::new("", "x").to_string(), "~/x");
    }

    #[test]
    fn message_keeps_unknown_fields() {
        let wire = json!({"publisherId": "a", "streamName": "r", "ordinal": 3, "type": "Chat/message",
            "byUserId": "b", "content": "hi", "instructions": null, "sentTime": "t", "clientMsgId": null,
            "newField": 1});
        let message: Message = serde_json::from_value(wire.clone()).unwrap();
        assert_eq!(message.ordinal, 3);
        assert_eq!(serde_json::to_value(&message).unwrap(), wire);
    }

    #[test]
    fn update_applies_only_set_fields() {
        let mut stream: Stream = serde_json::from_value(
            json!({"publisherId": "a", "name": "r", "title": "T", "icon": "i"}),
        )
        .unwrap();
        let update = StreamUpdate { title: Some("New".into()), ..StreamUpdate::default() };
        update.apply_to(&mut stream);
        assert_eq!((stream.title.as_deref(), stream.icon.as_deref()), (Some("New"), Some("i")));
        assert_eq!(serde_json::to_value(&update).unwrap(), json!({"title": "New"}));
    }
}
