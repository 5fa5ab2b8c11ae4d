//! The socket as tungstenite sees it: reads come from the TCP read half (after any bytes
//! hyper read past the upgrade request); writes — tungstenite's own pongs and close replies —
//! go into the session's outbound queue, in order with every other frame.
//!
//! Writes always take the whole buffer at once, so each one is a run of whole frames
//! (tungstenite encodes a frame before writing it), which [`Control::raw`] relies on.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::OwnedReadHalf;

use super::outbound::Control;

pub(crate) struct ClientIo {
    /// Bytes read past the upgrade request, if any.
    prefix: Option<Bytes>,
    read: OwnedReadHalf,
    control: Control,
}

impl ClientIo {
    pub(crate) fn new(prefix: Bytes, read: OwnedReadHalf, control: Control) -> ClientIo {
        // Copied: hyper's bytes are a view of its whole connection read buffer (8 KiB or
        // more), which an idle session would otherwise keep alive.
        let prefix = (!prefix.is_empty()).then(|| Bytes::copy_from_slice(&prefix));
        ClientIo { prefix, read, control }
    }
}

impl AsyncRead for ClientIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(prefix) = &mut this.prefix {
            let n = prefix.len().min(buf.remaining());
            buf.put_slice(&prefix[..n]);
            prefix.advance(n);
            if !prefix.has_remaining() {
                this.prefix = None;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for ClientIo {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.control.raw(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The session's writer shuts the socket once its last frame is out.
        Poll::Ready(Ok(()))
    }
}
