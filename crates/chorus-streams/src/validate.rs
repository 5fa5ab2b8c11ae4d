//! Limits and checks made before a command is proposed (DESIGN.md §3 "Limits").

use chorus_types::{ApiError, InheritEntry, levels::is_valid_level};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Configurable size limits. Beyond any of them: 413 `too_large`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Stream `content`, in Unicode characters. Default 1000.
    pub content_chars: usize,
    /// Stream `attributes`, serialized JSON bytes. Default 1000.
    pub attributes_bytes: usize,
    /// A message's `content` + serialized `instructions`, bytes. Default 64 KiB.
    pub message_bytes: usize,
    /// `title` and `icon`, in Unicode characters. Default 255.
    pub title_chars: usize,
    /// A participant's `extra`, serialized JSON bytes. Default 1000.
    pub extra_bytes: usize,
    /// Parents in `inheritAccess`. Default 8.
    pub inherit_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            content_chars: 1000,
            attributes_bytes: 1000,
            message_bytes: 64 * 1024,
            title_chars: 255,
            extra_bytes: 1000,
            inherit_entries: 8,
        }
    }
}

/// The rate limit on ephemerals to big rooms (DESIGN.md §1: "ephemerals (typing) to big rooms
/// are rate-limited per stream"). A stream with more than `big_room_participants`
/// participants accepts `big_room_per_second` ephemerals a second on average, bursts of up to
/// `big_room_burst`; beyond that the sender gets 429 `rate_limited` with `retryAfterMs`.
/// Smaller streams are not limited: their ephemerals reach few sessions.
///
/// Enforced by the stream's owner (the shard leader) in memory; ephemerals are never stored,
/// so neither is the budget, and a new leader starts every stream with a full burst.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EphemeralLimits {
    /// `participantCount` above which a stream is big. Default 1000.
    pub big_room_participants: u64,
    /// Sustained ephemerals per second per big stream. Default 20; at least 1.
    pub big_room_per_second: u32,
    /// Ephemerals a big stream accepts at once after a quiet spell. Default 40; at least 1.
    pub big_room_burst: u32,
}

impl Default for EphemeralLimits {
    fn default() -> Self {
        EphemeralLimits { big_room_participants: 1000, big_room_per_second: 20, big_room_burst: 40 }
    }
}

impl EphemeralLimits {
    /// Whether a stream with `participant_count` participants is rate-limited.
    pub fn is_big(&self, participant_count: u64) -> bool {
        participant_count > self.big_room_participants
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.big_room_per_second == 0 || self.big_room_burst == 0 {
            return Err(
                "ephemerals.big_room_per_second and big_room_burst must be at least 1".into()
            );
        }
        Ok(())
    }
}

fn chars_at_most(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.chars().count() > max {
        return Err(ApiError::too_large(format!("{field} is longer than {max} characters")));
    }
    Ok(())
}

/// Deepest nesting of arrays and objects accepted in a client's JSON value (`attributes`,
/// `instructions`, `extra`, an ephemeral's payload); the value itself counts as level 1.
///
/// Stored values sit inside records and Raft entries a few levels deeper, and every reader
/// (serde_json) stops at 128 levels: a value accepted near that limit was stored fine, then
/// could not be read back — its stream's history answered 500 and a node holding it in its
/// log could not start. 32 is far beyond any real document and far below that limit.
pub const MAX_DEPTH: usize = 32;

/// How deeply `v` nests arrays and objects (a scalar is 0, `{}` is 1).
fn depth(v: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(a) => Box::new(a.iter()),
            Value::Object(o) => Box::new(o.values()),
            _ => continue,
        };
        deepest = deepest.max(d + 1);
        stack.extend(children.map(|c| (c, d + 1)));
    }
    deepest
}

fn depth_at_most(field: &str, v: &Value) -> Result<(), ApiError> {
    if depth(v) > MAX_DEPTH {
        return Err(ApiError::invalid(format!(
            "{field} nests arrays and objects more than {MAX_DEPTH} levels deep"
        )));
    }
    Ok(())
}

fn json_object_at_most(field: &str, v: &Value, max: usize) -> Result<(), ApiError> {
    if !v.is_object() {
        return Err(ApiError::invalid(format!("{field} must be a JSON object")));
    }
    depth_at_most(field, v)?;
    let len = serde_json::to_vec(v).map(|b| b.len()).unwrap_or(usize::MAX);
    if len > max {
        return Err(ApiError::too_large(format!("{field} is larger than {max} bytes serialized")));
    }
    Ok(())
}

fn level(field: &str, v: i32) -> Result<(), ApiError> {
    if !is_valid_level(v) || v < 0 {
        return Err(ApiError::invalid(format!("{field} must be 0 to 40")));
    }
    Ok(())
}

/// The stream fields a create or update may set.
#[derive(Clone, Copy, Debug, Default)]
pub struct FieldsRef<'a> {
    pub title: Option<&'a str>,
    pub icon: Option<&'a str>,
    pub content: Option<&'a str>,
    pub attributes: Option<&'a Value>,
    pub read_level: Option<i32>,
    pub write_level: Option<i32>,
    pub admin_level: Option<i32>,
    pub inherit_access: Option<&'a [InheritEntry]>,
}

impl Limits {
    pub fn check_fields(&self, f: FieldsRef<'_>) -> Result<(), ApiError> {
        if let Some(t) = f.title {
            chars_at_most("title", t, self.title_chars)?;
        }
        if let Some(i) = f.icon {
            chars_at_most("icon", i, self.title_chars)?;
        }
        if let Some(c) = f.content {
            chars_at_most("content", c, self.content_chars)?;
        }
        if let Some(a) = f.attributes {
            json_object_at_most("attributes", a, self.attributes_bytes)?;
        }
        for (name, v) in [
            ("readLevel", f.read_level),
            ("writeLevel", f.write_level),
            ("adminLevel", f.admin_level),
        ] {
            if let Some(v) = v {
                level(name, v)?;
            }
        }
        if let Some(parents) = f.inherit_access {
            if parents.len() > self.inherit_entries {
                return Err(ApiError::too_large(format!(
                    "inheritAccess lists more than {} streams",
                    self.inherit_entries
                )));
            }
            for (i, p) in parents.iter().enumerate() {
                if let Some(caps) = p.caps {
                    for c in caps {
                        level("inheritAccess caps", c)?;
                    }
                }
                // A parent is a stream: a rule pseudo-stream is not one (its rows already apply
                // to every stream of its type), and a parent named twice is a client's mistake.
                if p.name.is_type_rule() {
                    return Err(ApiError::invalid(format!(
                        "inheritAccess[{i}]: {} is an access rule, not a stream",
                        p.name.as_str()
                    )));
                }
                if parents[..i].iter().any(|q| q.publisher_id == p.publisher_id && q.name == p.name)
                {
                    return Err(ApiError::invalid(format!(
                        "inheritAccess[{i}]: the same parent is named earlier"
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn check_message(
        &self,
        content: &str,
        instructions: Option<&Value>,
    ) -> Result<(), ApiError> {
        // Serialized size, as on the wire and on disk (escapes count).
        let mut size = json_escaped_len(content);
        if let Some(i) = instructions {
            if !i.is_object() {
                return Err(ApiError::invalid("instructions must be a JSON object"));
            }
            depth_at_most("instructions", i)?;
            size += serde_json::to_vec(i).map(|b| b.len()).unwrap_or(usize::MAX);
        }
        if size > self.message_bytes {
            return Err(ApiError::too_large(format!(
                "message content and instructions exceed {} bytes",
                self.message_bytes
            )));
        }
        Ok(())
    }

    pub fn check_extra(&self, extra: Option<&Value>) -> Result<(), ApiError> {
        match extra {
            Some(e) => json_object_at_most("extra", e, self.extra_bytes),
            None => Ok(()),
        }
    }

    pub fn check_payload(&self, payload: &Value) -> Result<(), ApiError> {
        depth_at_most("payload", payload)?;
        let len = serde_json::to_vec(payload).map(|b| b.len()).unwrap_or(usize::MAX);
        if len > self.message_bytes {
            return Err(ApiError::too_large(format!(
                "ephemeral payload exceeds {} bytes",
                self.message_bytes
            )));
        }
        Ok(())
    }
}

/// The length of `s` as serde_json writes it inside a string, quotes excluded: counted rather
/// than written, since every post is measured (writing its content out cost ~0.7 % of a
/// node's CPU).
fn json_escaped_len(s: &str) -> usize {
    // Most text has nothing to escape; this count is the fast (vectorised) path for it.
    let escaped = s.bytes().filter(|&b| b < 0x20 || b == b'"' || b == b'\\').count();
    if escaped == 0 {
        return s.len();
    }
    s.bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
            0x00..=0x1f => 6,
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escaped_length_is_what_serde_json_writes() {
        let mut all_controls = String::new();
        for b in 0u8..0x20 {
            all_controls.push(char::from(b));
        }
        for s in
            ["", "plain", "quote \" and \\ slash /", "é ü 日本 🎉", "\u{7f}", all_controls.as_str()]
        {
            let written = serde_json::to_string(s).unwrap().len() - 2;
            assert_eq!(super::json_escaped_len(s), written, "{s:?}");
        }
    }

    use chorus_types::ErrorCode;
    use serde_json::json;

    use super::*;

    #[test]
    fn values_nested_deeper_than_the_limit_are_refused() {
        let nested = |levels: usize| {
            let mut v = json!({});
            for _ in 1..levels {
                v = json!({"a": v});
            }
            v
        };
        let l = Limits { message_bytes: 1 << 20, attributes_bytes: 1 << 20, ..Limits::default() };
        let code = |r: Result<(), ApiError>| r.err().map(|e| e.code);
        assert_eq!(depth(&json!(1)), 0);
        assert_eq!(depth(&json!({"a": [1, {"b": []}]})), 4);
        assert_eq!(depth(&nested(MAX_DEPTH)), MAX_DEPTH);
        assert_eq!(code(l.check_message("", Some(&nested(MAX_DEPTH)))), None);
        for too_deep in [nested(MAX_DEPTH + 1), nested(121)] {
            assert_eq!(
                code(l.check_message("", Some(&too_deep))),
                Some(ErrorCode::InvalidArgument)
            );
            let f = FieldsRef { attributes: Some(&too_deep), ..Default::default() };
            assert_eq!(code(l.check_fields(f)), Some(ErrorCode::InvalidArgument));
            assert_eq!(code(l.check_extra(Some(&too_deep))), Some(ErrorCode::InvalidArgument));
            assert_eq!(code(l.check_payload(&too_deep)), Some(ErrorCode::InvalidArgument));
        }
        // Arrays count as objects do.
        let mut arrays = json!([]);
        for _ in 0..MAX_DEPTH {
            arrays = json!([arrays]);
        }
        assert_eq!(code(l.check_payload(&arrays)), Some(ErrorCode::InvalidArgument));
    }

    #[test]
    fn limits() {
        let l = Limits::default();
        let long = "é".repeat(1001);
        let ok = "é".repeat(1000);
        let code = |r: Result<(), ApiError>| r.err().map(|e| e.code);
        assert_eq!(
            code(l.check_fields(FieldsRef { content: Some(&ok), ..Default::default() })),
            None
        );
        assert_eq!(
            code(l.check_fields(FieldsRef { content: Some(&long), ..Default::default() })),
            Some(ErrorCode::TooLarge)
        );
        let big = json!({"a": "x".repeat(1000)});
        assert_eq!(
            code(l.check_fields(FieldsRef { attributes: Some(&big), ..Default::default() })),
            Some(ErrorCode::TooLarge)
        );
        let not_obj = json!([1]);
        assert_eq!(
            code(l.check_fields(FieldsRef { attributes: Some(&not_obj), ..Default::default() })),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(
            code(l.check_fields(FieldsRef { read_level: Some(41), ..Default::default() })),
            Some(ErrorCode::InvalidArgument)
        );
        assert_eq!(code(l.check_message(&"x".repeat(65536), None)), None);
        assert_eq!(code(l.check_message(&"x".repeat(65537), None)), Some(ErrorCode::TooLarge));
        assert_eq!(code(l.check_message("x", Some(&json!(3)))), Some(ErrorCode::InvalidArgument));
    }
}
