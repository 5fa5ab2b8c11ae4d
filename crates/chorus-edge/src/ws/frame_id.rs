//! The `id` of a request frame that could not be parsed, so its error still reaches the
//! request that caused it (`"re": <id>`) instead of `"re": null` and a client-side timeout.
//!
//! A frame can be broken past its `id`: a lone surrogate escape in `content` (which a
//! browser's `JSON.stringify` produces), a number out of range, nesting beyond the parser's
//! limit, a bad escape, trailing bytes. The top-level object is walked just far enough to find
//! the `id` member, skipping other members' values without interpreting them.

use serde_json::Value;

/// The top-level `id` (a number or a string) of `text`, when it can be read and is not
/// ambiguous: `"id"` written more than once anywhere in the frame (a repeated member, a nested
/// key, a value) gives `None`, since which one the client meant is unknowable.
pub(super) fn readable_id(text: &str) -> Option<Value> {
    if text.matches("\"id\"").count() != 1 {
        return None;
    }
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(b, i)?;
        let is_id = &text[i..key_end] == "\"id\"";
        i = skip_ws(b, key_end);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        let end = value_end(b, i)?;
        if is_id {
            let id: Value = serde_json::from_str(text.get(i..end)?).ok()?;
            return (id.is_number() || id.is_string()).then_some(id);
        }
        i = skip_ws(b, end);
        if b.get(i) != Some(&b',') {
            return None;
        }
        i += 1;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// Index just past the string starting at `b[start] == '"'` (escapes skipped, not checked).
fn string_end(b: &[u8], start: usize) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match b.get(i)? {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

/// Index just past the value starting at `b[start]`: a string, a bracketed value (strings
/// inside skipped), or a scalar running to the next `,`, `}`, `]` or whitespace.
fn value_end(b: &[u8], start: usize) -> Option<usize> {
    match b.get(start)? {
        b'"' => string_end(b, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            loop {
                match b.get(i)? {
                    b'"' => {
                        i = string_end(b, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
        }
        _ => {
            let mut i = start;
            while b
                .get(i)
                .is_some_and(|c| !matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
            {
                i += 1;
            }
            (i > start).then_some(i)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_id_is_read_from_frames_broken_past_it() {
        let readable = [
            (r#"{"id": 7, "op": "post", "content": "a\ud800b"}"#, json!(7)),
            (
                r#"{"op": "post", "instructions": {"x": [1, "}"]}, "id": "r1", "n": 1e400}"#,
                json!("r1"),
            ),
            (r#"{"id":12,"op":"post","content":"bad \q escape"}"#, json!(12)),
            (r#"{"id": 3} trailing"#, json!(3)),
            (r#"  {"op": {"a": {"b": []}}, "id": -4.5, "x": }"#, json!(-4.5)),
        ];
        for (text, id) in readable {
            assert_eq!(readable_id(text), Some(id), "{text}");
        }
        let unreadable = [
            r#"{"id": 1, "id": 2}"#,
            r#"{"op": "post", "x": {"id": 1}}"#,
            r#"{"id": [1]}"#,
            r#"{"id": "a\ud800"}"#,
            r#"{"op": "post""#,
            r#"[{"id": 1}]"#,
            r#"{"id": "unterminated"#,
            "",
        ];
        for text in unreadable {
            assert_eq!(readable_id(text), None, "{text}");
        }
    }
}
