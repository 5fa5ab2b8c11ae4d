//! A minimal WebSocket client for benches that hold tens of thousands of receive-mostly sessions
//! on one core: a raw `TcpStream` (optionally bound to a source address, so that many loopback
//! addresses multiply the ephemeral port range), the HTTP/1.1 upgrade, and a frame parser over
//! one small read buffer. No per-frame allocation: [`WsConn::next_text`] hands out a slice of the
//! buffer. Client frames are masked (RFC 6455 §5.3); pings are answered with pongs.
//!
//! Not a general client: no TLS, no extensions, no fragmented messages (Chorus sends each JSON
//! object as one text frame), and the `Sec-WebSocket-Accept` hash is not checked.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Initial read buffer per connection; it grows only for a frame larger than this.
const INITIAL_BUFFER: usize = 2048;
/// Upgrade responses larger than this are refused.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

pub struct WsConn {
    stream: TcpStream,
    /// Received bytes are `buf[start..end]`; `buf.len()` is the capacity in use.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// xorshift state for mask keys (the server must not be able to predict them in the
    /// browser threat model; for a bench any changing key does).
    mask_state: u32,
    /// Frames queued by [`WsConn::queue_text`], written by [`WsConn::flush`].
    out: Vec<u8>,
    /// Payload range of the last text message handed out.
    last: (usize, usize),
    /// The server's close frame was read: nothing more will be handed out.
    closed: bool,
}

/// Where a connection comes from: a source address and, optionally, a port picked by the
/// caller.
///
/// Binding to an address with port 0 makes the kernel search its bind table for a free port
/// (`inet_csk_get_port`), which grows with every bound socket: at ~10,000 connections from
/// one address that search takes most of a core. A caller that owns a source address (one
/// client process per 127.0.0.x) hands out ports itself instead, and the bind is one lookup.
#[derive(Copy, Clone, Debug)]
pub struct Source {
    pub ip: IpAddr,
    pub port: Option<u16>,
}

/// Opens a TCP connection to `addr` (from `source` when given).
pub async fn tcp_connect(source: Option<Source>, addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    if let Some(source) = source {
        // A port still in TIME_WAIT from an earlier run may be bound again.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(source.ip, source.port.unwrap_or(0)))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

impl WsConn {
    /// Connects and upgrades `ws://addr{path_and_query}`.
    pub async fn connect(
        source: Option<Source>,
        addr: SocketAddr,
        path_and_query: &str,
    ) -> io::Result<WsConn> {
        let mut stream = tcp_connect(source, addr).await?;
        let request = format!(
            "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut conn = WsConn {
            stream,
            buf: vec![0; INITIAL_BUFFER],
            start: 0,
            end: 0,
            mask_state: addr.port() as u32 ^ 0x9E37_79B9,
            out: Vec::new(),
            last: (0, 0),
            closed: false,
        };
        let head_len = loop {
            if let Some(i) = find(&conn.buf[..conn.end], b"\r\n\r\n") {
                break i + 4;
            }
            if conn.end >= MAX_RESPONSE_HEAD {
                return Err(invalid("upgrade response head too large"));
            }
            conn.fill().await?;
        };
        let head = &conn.buf[..head_len];
        if !head.starts_with(b"HTTP/1.1 101") {
            let status_line = head.split(|b| *b == b'\r').next().unwrap_or_default();
            return Err(invalid(&format!(
                "upgrade refused: {}",
                String::from_utf8_lossy(status_line)
            )));
        }
        conn.start = head_len;
        Ok(conn)
    }

    /// Sends one text frame (masked, as every client frame must be).
    pub async fn send_text(&mut self, payload: &[u8]) -> io::Result<()> {
        self.queue_text(payload);
        self.flush().await
    }

    /// Queues one text frame; [`WsConn::flush`] writes every queued frame in one write, as a
    /// client library buffering its writes does.
    pub fn queue_text(&mut self, payload: &[u8]) {
        self.queue_frame(OP_TEXT, payload);
    }

    /// Writes the queued frames (pongs included).
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let written = self.stream.write_all(&self.out).await;
        self.out.clear();
        written
    }

    /// The next text (or binary) message's payload; `None` once the server closed the
    /// connection. Pings are answered and pongs skipped on the way.
    pub async fn next_text(&mut self) -> io::Result<Option<&[u8]>> {
        loop {
            match self.buffered()? {
                Buffered::Text => break,
                Buffered::Closed => return Ok(None),
                Buffered::NeedMore => {
                    // A pong queued meanwhile goes out before waiting for the server.
                    self.flush().await?;
                    if self.fill().await? == 0 {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(Some(self.last_text()))
    }

    /// The next text message already received, without reading from the socket: `None` when
    /// no complete one is buffered (or the server closed). Pongs to pings are queued.
    pub fn buffered_text(&mut self) -> io::Result<Option<&[u8]>> {
        match self.buffered()? {
            Buffered::Text => Ok(Some(self.last_text())),
            Buffered::Closed | Buffered::NeedMore => Ok(None),
        }
    }

    fn last_text(&self) -> &[u8] {
        &self.buf[self.last.0..self.last.1]
    }

    /// Consumes buffered frames up to the next text message, answering pings on the way.
    fn buffered(&mut self) -> io::Result<Buffered> {
        if self.closed {
            return Ok(Buffered::Closed);
        }
        loop {
            match self.parse_frame()? {
                Some(Frame { opcode: OP_TEXT | OP_BINARY, payload }) => {
                    self.last = payload;
                    return Ok(Buffered::Text);
                }
                Some(Frame { opcode: OP_PING, payload }) => {
                    // Control payloads are at most 125 bytes.
                    let mut copy = [0u8; 125];
                    let len = payload.1 - payload.0;
                    copy[..len].copy_from_slice(&self.buf[payload.0..payload.1]);
                    self.queue_frame(OP_PONG, &copy[..len]);
                }
                Some(Frame { opcode: OP_PONG, .. }) => {}
                Some(Frame { opcode: OP_CLOSE, .. }) => {
                    self.closed = true;
                    return Ok(Buffered::Closed);
                }
                Some(Frame { opcode, .. }) => {
                    return Err(invalid(&format!("unsupported frame opcode {opcode}")));
                }
                None => return Ok(Buffered::NeedMore),
            }
        }
    }

    /// Parses one complete frame at `start`, consuming it; `None` when more bytes are needed.
    fn parse_frame(&mut self) -> io::Result<Option<Frame>> {
        let data = &self.buf[self.start..self.end];
        if data.len() < 2 {
            return Ok(None);
        }
        let fin = data[0] & 0x80 != 0;
        let opcode = data[0] & 0x0F;
        let masked = data[1] & 0x80 != 0;
        let (len, mut header) = match data[1] & 0x7F {
            126 => {
                if data.len() < 4 {
                    return Ok(None);
                }
                (u64::from(u16::from_be_bytes([data[2], data[3]])), 4)
            }
            127 => {
                if data.len() < 10 {
                    return Ok(None);
                }
                let mut be = [0u8; 8];
                be.copy_from_slice(&data[2..10]);
                (u64::from_be_bytes(be), 10)
            }
            short => (u64::from(short), 2),
        };
        if masked {
            header += 4;
        }
        let len = usize::try_from(len).map_err(|_| invalid("frame too large"))?;
        if data.len() < header + len {
            // Make room for the whole frame: compact first, grow if that is not enough.
            let needed = header + len;
            if self.buf.len() - self.start < needed {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
                if self.buf.len() < needed {
                    self.buf.resize(needed, 0);
                }
            }
            return Ok(None);
        }
        if !fin || opcode == OP_CONTINUATION {
            return Err(invalid("fragmented messages are not supported"));
        }
        let payload = (self.start + header, self.start + header + len);
        if masked {
            let key_at = self.start + header - 4;
            let key = [
                self.buf[key_at],
                self.buf[key_at + 1],
                self.buf[key_at + 2],
                self.buf[key_at + 3],
            ];
            for (i, b) in self.buf[payload.0..payload.1].iter_mut().enumerate() {
                *b ^= key[i % 4];
            }
        }
        self.start = payload.1;
        Ok(Some(Frame { opcode, payload }))
    }

    /// Reads more bytes after `end`; returns how many (0 at end of stream).
    async fn fill(&mut self) -> io::Result<usize> {
        fill(&mut self.stream, &mut self.buf, &mut self.start, &mut self.end).await
    }

    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        let frame = &mut self.out;
        frame.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let key = self.next_mask().to_be_bytes();
        let frame = &mut self.out;
        frame.extend_from_slice(&key);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    }

    fn next_mask(&mut self) -> u32 {
        let mut x = self.mask_state;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.mask_state = x;
        x
    }
}

/// What the buffer holds next.
enum Buffered {
    /// A text message, its payload range kept in `WsConn::last`.
    Text,
    Closed,
    NeedMore,
}

struct Frame {
    opcode: u8,
    /// Payload range in `buf`, valid until the next read.
    payload: (usize, usize),
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Position of `needle` in `haystack`.
/// Reads more bytes into `buf[end..]`, where `buf[start..end]` is unread: first moves the
/// unread bytes to the front (or grows the buffer when they fill it). Returns how many were
/// read (0 at end of stream).
pub async fn fill(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    start: &mut usize,
    end: &mut usize,
) -> io::Result<usize> {
    if *start == *end {
        *start = 0;
        *end = 0;
    } else if *end == buf.len() {
        buf.copy_within(*start..*end, 0);
        *end -= *start;
        *start = 0;
        if *end == buf.len() {
            let grown = buf.len() * 2;
            buf.resize(grown, 0);
        }
    }
    let n = stream.read(&mut buf[*end..]).await?;
    *end += n;
    Ok(n)
}

pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// The unsigned decimal number right after the first `key` in `text` (e.g. `"ordinal":`).
pub fn number_after(text: &[u8], key: &[u8]) -> Option<u64> {
    number_after_found(text, memchr::memmem::find(text, key)?, key.len())
}

/// [`number_after`] with a searcher built once (building one costs as much as a short search).
pub fn number_after_with(text: &[u8], key: &memchr::memmem::Finder<'_>) -> Option<u64> {
    number_after_found(text, key.find(text)?, key.needle().len())
}

fn number_after_found(text: &[u8], key_at: usize, key_len: usize) -> Option<u64> {
    let digits = text[key_at + key_len..].iter().take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for d in digits {
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_after_their_key() {
        let frame =
            br#"{"ev":"message","message":{"ordinal":42,"content":"t=1700000000123456 s=7"}}"#;
        assert_eq!(number_after(frame, b"\"ordinal\":"), Some(42));
        assert_eq!(number_after(frame, b"\"content\":\"t="), Some(1_700_000_000_123_456));
        assert_eq!(number_after(frame, b" s="), Some(7));
        assert_eq!(number_after(frame, b"\"missing\":"), None);
    }
}
