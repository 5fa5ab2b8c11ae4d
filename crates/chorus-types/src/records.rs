//! The records of the replicated state: streams, messages, participants and access rows.
//!
//! They are stored as JSON in RocksDB and carried in Raft entries. Their JSON is *not* the wire
//! shape: times here are [`Millis`] and every field is present; the edge renders the wire shape
//! (RFC 3339 times, fields filtered by read level).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::ApiError;
use crate::ids::{ClientMsgId, PublisherId, StreamKey, StreamName, StreamType, UserId};
use crate::levels::is_valid_level;
use crate::time::Millis;

/// A stream's fields and counters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamRecord {
    pub publisher_id: PublisherId,
    pub name: StreamName,
    #[serde(rename = "type")]
    pub stream_type: StreamType,
    pub title: String,
    pub icon: String,
    pub content: String,
    /// Always a JSON object.
    pub attributes: Value,
    pub read_level: i32,
    pub write_level: i32,
    pub admin_level: i32,
    pub inherit_access: Vec<InheritEntry>,
    /// The last ordinal: messages are `1..=message_count`.
    pub message_count: u64,
    /// Participants in state `participating`.
    pub participant_count: u64,
    pub inserted_time: Millis,
    pub updated_time: Millis,
    pub closed_time: Option<Millis>,
}

impl StreamRecord {
    pub fn key(&self) -> StreamKey {
        StreamKey::new(self.publisher_id.clone(), self.name.clone())
    }

    pub fn is_closed(&self) -> bool {
        self.closed_time.is_some()
    }
}

/// One parent stream in `inheritAccess`, with optional caps `[read, write, admin]` on what is
/// inherited from it.
///
/// Wire form: `{"publisherId", "name", "caps"?}`. The Qbix tuple forms `[publisherId, name]`
/// and `[publisherId, name, [r, w, a]]` are accepted on input too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InheritEntry {
    pub publisher_id: PublisherId,
    pub name: StreamName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<[i32; 3]>,
}

impl InheritEntry {
    pub fn key(&self) -> StreamKey {
        StreamKey::new(self.publisher_id.clone(), self.name.clone())
    }
}

impl<'de> Deserialize<'de> for InheritEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Obj {
            publisher_id: PublisherId,
            name: StreamName,
            #[serde(default)]
            caps: Option<[i32; 3]>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Obj(Obj),
            Pair(PublisherId, StreamName),
            Triple(PublisherId, StreamName, [i32; 3]),
        }
        let form = Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "inheritAccess entries are {\"publisherId\", \"name\", \"caps\"?} \
                 or [publisherId, name, [read, write, admin]?]",
            )
        })?;
        Ok(match form {
            Form::Obj(o) => {
                InheritEntry { publisher_id: o.publisher_id, name: o.name, caps: o.caps }
            }
            Form::Pair(p, n) => InheritEntry { publisher_id: p, name: n, caps: None },
            Form::Triple(p, n, c) => InheritEntry { publisher_id: p, name: n, caps: Some(c) },
        })
    }
}

/// One message of a stream's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageRecord {
    pub publisher_id: PublisherId,
    pub stream_name: StreamName,
    pub ordinal: u64,
    #[serde(rename = "type")]
    pub message_type: StreamType,
    /// The poster; `""` when the app itself posted.
    pub by_user_id: String,
    pub content: String,
    pub instructions: Option<Value>,
    pub sent_time: Millis,
    pub client_msg_id: Option<ClientMsgId>,
}

impl MessageRecord {
    pub fn stream_key(&self) -> StreamKey {
        StreamKey::new(self.publisher_id.clone(), self.stream_name.clone())
    }
}

/// Where a user stands with a stream.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantState {
    Invited,
    Participating,
    Left,
}

impl ParticipantState {
    pub fn as_str(self) -> &'static str {
        match self {
            ParticipantState::Invited => "invited",
            ParticipantState::Participating => "participating",
            ParticipantState::Left => "left",
        }
    }

    /// One byte used in storage index keys; stable on disk.
    pub fn tag(self) -> u8 {
        match self {
            ParticipantState::Invited => b'i',
            ParticipantState::Participating => b'p',
            ParticipantState::Left => b'l',
        }
    }
}

/// A user's participation in a stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParticipantRecord {
    pub user_id: UserId,
    pub state: ParticipantState,
    pub subscribed: bool,
    pub posted: bool,
    pub roles: Vec<String>,
    /// Always a JSON object.
    pub extra: Value,
    pub inserted_time: Millis,
    pub updated_time: Millis,
}

/// Whom an access row is for.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AccessSubject {
    Everyone,
    User(UserId),
    Role(String),
}

/// An access row: levels granted to everyone, a role, or a user; `-1` leaves a level unset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccessRow {
    pub subject: AccessSubject,
    pub read_level: i32,
    pub write_level: i32,
    pub admin_level: i32,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessRowWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    of_user_id: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    of_role: Option<String>,
    #[serde(default = "unset")]
    read_level: i32,
    #[serde(default = "unset")]
    write_level: i32,
    #[serde(default = "unset")]
    admin_level: i32,
}

fn unset() -> i32 {
    -1
}

/// Roles come from the app's tokens: 1–64 bytes, no control characters.
pub fn validate_role(role: &str) -> Result<(), ApiError> {
    if role.is_empty() || role.len() > 64 || role.chars().any(char::is_control) {
        return Err(ApiError::invalid("a role must be 1-64 bytes without control characters"));
    }
    Ok(())
}

impl Serialize for AccessRow {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let (of_user_id, of_role) = match &self.subject {
            AccessSubject::Everyone => (None, None),
            AccessSubject::User(u) => (Some(u.clone()), None),
            AccessSubject::Role(r) => (None, Some(r.clone())),
        };
        AccessRowWire {
            of_user_id,
            of_role,
            read_level: self.read_level,
            write_level: self.write_level,
            admin_level: self.admin_level,
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for AccessRow {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let w: AccessRowWire = crate::object_only::object_only(d)?;
        let subject = match (w.of_user_id, w.of_role) {
            (Some(_), Some(_)) => {
                return Err(D::Error::custom("an access row has ofUserId or ofRole, not both"));
            }
            (Some(u), None) => AccessSubject::User(u),
            (None, Some(r)) => {
                validate_role(&r).map_err(|e| D::Error::custom(e.message))?;
                AccessSubject::Role(r)
            }
            (None, None) => AccessSubject::Everyone,
        };
        // "Values < 0 mean unset" (Qbix ignores them): any negative level is stored as -1.
        let unset_if_negative = |v: i32| v.max(-1);
        let (read_level, write_level, admin_level) = (
            unset_if_negative(w.read_level),
            unset_if_negative(w.write_level),
            unset_if_negative(w.admin_level),
        );
        for (name, v) in
            [("readLevel", read_level), ("writeLevel", write_level), ("adminLevel", admin_level)]
        {
            if !is_valid_level(v) {
                return Err(D::Error::custom(format!(
                    "{name} must be at most 40 (a negative value means unset)"
                )));
            }
        }
        Ok(AccessRow { subject, read_level, write_level, admin_level })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherit_entry_forms() {
        let a: InheritEntry = serde_json::from_str(r#"["alice","Chat/room/1"]"#).unwrap();
        let b: InheritEntry =
            serde_json::from_str(r#"{"publisherId":"alice","name":"Chat/room/1"}"#).unwrap();
        assert_eq!(a, b);
        let c: InheritEntry = serde_json::from_str(r#"["alice","x",[10,10,0]]"#).unwrap();
        assert_eq!(c.caps, Some([10, 10, 0]));
        assert!(serde_json::from_str::<InheritEntry>(r#"{"publisherId":"a","nam":"x"}"#).is_err());
    }

    #[test]
    fn access_row_wire() {
        let r: AccessRow = serde_json::from_str(r#"{"ofRole":"mod","writeLevel":30}"#).unwrap();
        assert_eq!(r.subject, AccessSubject::Role("mod".into()));
        assert_eq!((r.read_level, r.write_level, r.admin_level), (-1, 30, -1));
        assert!(serde_json::from_str::<AccessRow>(r#"{"ofRole":"a","ofUserId":"b"}"#).is_err());
        assert!(serde_json::from_str::<AccessRow>(r#"{"readLevel":41}"#).is_err());
        let negative: AccessRow =
            serde_json::from_str(r#"{"readLevel":-5,"adminLevel":-40}"#).unwrap();
        assert_eq!((negative.read_level, negative.admin_level), (-1, -1), "< 0 means unset");
        assert!(serde_json::from_str::<AccessRow>(r#"{"bogus":1}"#).is_err());
        let back = serde_json::to_value(&r).unwrap();
        assert_eq!(back["ofRole"], "mod");
        assert!(back.get("ofUserId").is_none());
    }
}
