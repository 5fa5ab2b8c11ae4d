//! WebSocket frames as the server writes them (RFC 6455 §5.2): unmasked, unfragmented.
//!
//! The edge encodes each outbound frame once, header and payload in one buffer, so an event
//! shared by 100,000 sessions is one allocation and every session's write is the same bytes.
//! Reading client frames stays with tungstenite ([`super::client_io`]).

use bytes::{BufMut, Bytes, BytesMut};

const FIN: u8 = 0x80;
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;

/// A text frame carrying `payload`.
pub(crate) fn text(payload: &str) -> Bytes {
    frame(OP_TEXT, &[payload.as_bytes()])
}

/// A close frame with `code` and `reason` (a control frame: at most 125 payload bytes, so the
/// reason is cut at a character boundary if need be).
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    frame(OP_CLOSE, &[&code.to_be_bytes(), &reason.as_bytes()[..end]])
}

/// A close frame without a status code.
pub(crate) fn close_empty() -> Bytes {
    Bytes::from_static(&[FIN | OP_CLOSE, 0])
}

fn frame(opcode: u8, parts: &[&[u8]]) -> Bytes {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = BytesMut::with_capacity(len + 10);
    buf.put_u8(FIN | opcode);
    if len < 126 {
        buf.put_u8(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        buf.put_u8(126);
        buf.put_u16(short);
    } else {
        buf.put_u8(127);
        buf.put_u64(len as u64);
    }
    for part in parts {
        buf.put_slice(part);
    }
    buf.freeze()
}

/// Whether `bytes`, a run of whole unmasked frames, holds a close frame: tungstenite writes
/// its close replies through the session's queue, which must send nothing after one.
pub(crate) fn holds_close(mut bytes: &[u8]) -> bool {
    while let [first, second, rest @ ..] = bytes {
        if first & 0x0f == OP_CLOSE {
            return true;
        }
        let (len, rest) = match second & 0x7f {
            126 if rest.len() >= 2 => {
                (u64::from(u16::from_be_bytes([rest[0], rest[1]])), &rest[2..])
            }
            127 if rest.len() >= 8 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&rest[..8]);
                (u64::from_be_bytes(n), &rest[8..])
            }
            126 | 127 => return false,
            short => (u64::from(short), rest),
        };
        let masked = if second & 0x80 != 0 { 4 } else { 0 };
        let skip = usize::try_from(len).unwrap_or(usize::MAX).saturating_add(masked);
        bytes = rest.get(skip..).unwrap_or(&[]);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_header() {
        let f = text("hi");
        assert_eq!(&f[..], &[0x81, 2, b'h', b'i']);
        let f = text(&"a".repeat(125));
        assert_eq!((f[1], f.len()), (125, 127));
        let f = text(&"a".repeat(126));
        assert_eq!(&f[..4], &[0x81, 126, 0, 126]);
        let f = text(&"a".repeat(65_535));
        assert_eq!(&f[..4], &[0x81, 126, 0xff, 0xff]);
        let f = text(&"a".repeat(65_536));
        assert_eq!(&f[..10], &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]);
        assert_eq!(f.len(), 65_546);
    }

    #[test]
    fn close_frames_carry_code_and_a_short_reason() {
        assert_eq!(&close(1001, "bye")[..], &[0x88, 5, 0x03, 0xe9, b'b', b'y', b'e']);
        let long = close(1009, &"é".repeat(100));
        assert!(long.len() <= 127, "a control frame's payload is at most 125 bytes");
        assert!(std::str::from_utf8(&long[4..]).is_ok(), "cut at a character boundary");
        assert_eq!(&close_empty()[..], &[0x88, 0]);
    }

    #[test]
    fn finds_a_close_among_frames() {
        let mut run = Vec::new();
        run.extend_from_slice(&text(&"x".repeat(300)));
        run.extend_from_slice(&[0x8a, 0]); // pong
        assert!(!holds_close(&run));
        run.extend_from_slice(&close(1000, ""));
        assert!(holds_close(&run));
        assert!(holds_close(&close_empty()));
        assert!(!holds_close(&[]));
        assert!(!holds_close(&[0x81, 127, 0]), "a cut header is not a close");
    }
}
