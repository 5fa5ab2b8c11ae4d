//! Validated identifiers. Each constructor enforces the name rules of DESIGN.md §3, so a value
//! of these types is known to be well formed wherever it travels.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::ApiError;

fn is_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '@' | ':' | '-')
}

/// `publisherId` / `userId`: 1–64 chars of `[A-Za-z0-9_.@:-]`.
fn check_user_like(what: &str, s: &str) -> Result<(), ApiError> {
    if s.is_empty() || s.len() > 64 || !s.chars().all(is_id_char) {
        return Err(ApiError::invalid(format!(
            "{what} must be 1-64 characters of [A-Za-z0-9_.@:-]"
        )));
    }
    Ok(())
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn new(s: impl Into<String>) -> Result<Self, ApiError> {
                let s = s.into();
                let check: fn(&str) -> Result<(), ApiError> = $check;
                check(&s)?;
                Ok($name(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::new(s).map_err(|e| serde::de::Error::custom(e.message))
            }
        }
    };
}

string_id!(
    /// A user id from the app's token (`sub`). 1–64 chars of `[A-Za-z0-9_.@:-]`.
    UserId,
    |s| check_user_like("userId", s)
);

string_id!(
    /// The publisher of a stream: a user id, or `""` for app-wide streams (templates and rules
    /// that apply to every publisher).
    PublisherId,
    |s| if s.is_empty() { Ok(()) } else { check_user_like("publisherId", s) }
);

string_id!(
    /// A stream name: 1–255 bytes of UTF-8 without control characters; may contain `/`.
    /// A trailing `/` marks a template, a trailing `*` an access-rule pseudo-stream.
    StreamName,
    |s| {
        if s.is_empty() || s.len() > 255 || s.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "name must be 1-255 bytes of UTF-8 without control characters",
            ));
        }
        Ok(())
    }
);

string_id!(
    /// A stream or message type: segments of `[A-Za-z0-9_.-]+` joined by `/`, at most 63 bytes.
    StreamType,
    |s| {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.split('/').all(|seg| {
                !seg.is_empty()
                    && seg.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            });
        if ok {
            Ok(())
        } else {
            Err(ApiError::invalid(
                "type must be segments of [A-Za-z0-9_.-] joined by '/', at most 63 bytes",
            ))
        }
    }
);

string_id!(
    /// A client-chosen idempotency key for a post: 1–128 printable characters.
    ClientMsgId,
    |s| {
        if s.is_empty() || s.len() > 128 || s.chars().any(char::is_control) {
            return Err(ApiError::invalid(
                "clientMsgId must be 1-128 bytes without control characters",
            ));
        }
        Ok(())
    }
);

impl StreamType {
    /// A type known at compile time to be valid (the standard `Streams/…` message types).
    /// Validity is checked by a unit test over every constant used.
    pub fn from_static(s: &'static str) -> Self {
        debug_assert!(StreamType::new(s).is_ok(), "invalid constant type {s}");
        StreamType(s.to_owned())
    }
}

impl PublisherId {
    /// The app-wide publisher `""`, written `~` in URLs.
    pub fn app() -> Self {
        PublisherId(String::new())
    }

    pub fn is_app(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<UserId> for PublisherId {
    fn from(u: UserId) -> Self {
        PublisherId(u.0)
    }
}

impl StreamName {
    /// A template stream (`Chat/room/`) supplies defaults for new streams of its type.
    pub fn is_template(&self) -> bool {
        self.0.ends_with('/')
    }

    /// An access-rule pseudo-stream (`Chat/room*`): its rows apply to every stream of the type.
    pub fn is_type_rule(&self) -> bool {
        self.0.ends_with('*')
    }

    /// The template name for a type: `<type>/`.
    pub fn template_for(ty: &StreamType) -> Self {
        StreamName(format!("{}/", ty.as_str()))
    }

    /// The access-rule pseudo-stream name for a type: `<type>*`.
    pub fn type_rule_for(ty: &StreamType) -> Self {
        StreamName(format!("{}*", ty.as_str()))
    }
}

/// The identity of a stream: `(publisherId, name)`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StreamKey {
    pub publisher_id: PublisherId,
    pub name: StreamName,
}

impl StreamKey {
    pub fn new(publisher_id: PublisherId, name: StreamName) -> Self {
        StreamKey { publisher_id, name }
    }
}

impl fmt::Display for StreamKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.publisher_id, self.name)
    }
}

/// One of the `S` Raft shard groups of the cluster.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ShardId(pub u16);

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A storage node of the cluster; also its openraft node id.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("a.b@c:d-e_f").is_ok());
        assert!(UserId::new("").is_err());
        assert!(UserId::new("a b").is_err());
        assert!(UserId::new("x".repeat(65)).is_err());
        assert!(PublisherId::new("").is_ok());
    }

    #[test]
    fn types_and_names() {
        assert!(StreamType::new("Chat/room").is_ok());
        assert!(StreamType::new("Chat//room").is_err());
        assert!(StreamType::new("Chat/room/").is_err());
        assert!(StreamType::new("x".repeat(64)).is_err());
        assert!(StreamName::new("Chat/room/42").is_ok());
        assert!(StreamName::new("a\nb").is_err());
        assert!(StreamName::new("x".repeat(256)).is_err());
        assert!(StreamName::new("Chat/room/").map(|n| n.is_template()).unwrap_or(false));
    }
}
