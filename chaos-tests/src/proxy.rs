//! A TCP proxy for one directed peer link (node i dialling node j). Every byte of that link
//! passes through it, so the runner can cut it (close open connections, refuse new ones),
//! stall one direction (a one-way partition), or delay bytes (a slow link).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// What happens to bytes travelling one way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    Pass,
    /// Not read any more until healed: the sender's bytes pile up unacknowledged, as TCP
    /// behaves when packets one way are lost (it retransmits them once the path is back).
    /// Dropping bytes instead would corrupt the stream, which TCP never lets happen.
    Stall,
    Delay(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkState {
    /// Closed: open connections are reset and new ones refused.
    pub cut: bool,
    /// Dialler → listener (requests of i to j).
    pub forward: Flow,
    /// Listener → dialler (j's answers to i).
    pub backward: Flow,
}

impl LinkState {
    pub const HEALTHY: LinkState =
        LinkState { cut: false, forward: Flow::Pass, backward: Flow::Pass };
}

pub struct Proxy {
    pub addr: String,
    state: Arc<Mutex<LinkState>>,
    /// Bumped on every change, so pumps re-read the state and cut connections notice at once.
    changed: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on an ephemeral loopback port and forwards to `target`.
    pub async fn start(target: String) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let state = Arc::new(Mutex::new(LinkState::HEALTHY));
        let (changed, _) = watch::channel(0u64);
        let task = tokio::spawn(accept_loop(listener, target, state.clone(), changed.clone()));
        Ok(Proxy { addr, state, changed, task })
    }

    pub fn set(&self, new: LinkState) {
        if let Ok(mut s) = self.state.lock() {
            *s = new;
        }
        self.changed.send_modify(|g| *g += 1);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read_state(state: &Mutex<LinkState>) -> LinkState {
    state.lock().map(|s| *s).unwrap_or(LinkState::HEALTHY)
}

async fn accept_loop(
    listener: TcpListener,
    target: String,
    state: Arc<Mutex<LinkState>>,
    changed: watch::Sender<u64>,
) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else { continue };
        if read_state(&state).cut {
            // Refused: dropping the accepted socket closes it before any byte passes.
            continue;
        }
        let target = target.clone();
        let state = state.clone();
        let changed = changed.subscribe();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(&target).await else { return };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            connection(inbound, outbound, state, changed).await;
        });
    }
}

/// Pumps both directions until either side closes or the link is cut.
async fn connection(
    inbound: TcpStream,
    outbound: TcpStream,
    state: Arc<Mutex<LinkState>>,
    mut changed: watch::Receiver<u64>,
) {
    let (in_r, in_w) = inbound.into_split();
    let (out_r, out_w) = outbound.into_split();
    let fwd = pump(in_r, out_w, state.clone(), changed.clone(), true);
    let back = pump(out_r, in_w, state.clone(), changed.clone(), false);
    let cut = async {
        loop {
            if read_state(&state).cut {
                return;
            }
            if changed.changed().await.is_err() {
                // The proxy is gone: nothing will cut us any more.
                std::future::pending::<()>().await;
            }
        }
    };
    // Whichever ends first drops every half, which closes both sockets.
    tokio::select! {
        _ = fwd => {}
        _ = back => {}
        _ = cut => {}
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    state: Arc<Mutex<LinkState>>,
    mut changed: watch::Receiver<u64>,
    forward: bool,
) {
    // A writer task applies delays in order: each chunk leaves at its read time + delay.
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        let flow = |s: LinkState| if forward { s.forward } else { s.backward };
        loop {
            while flow(read_state(&state)) == Flow::Stall {
                if changed.changed().await.is_err() {
                    return;
                }
            }
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = match flow(read_state(&state)) {
                Flow::Delay(d) => Instant::now() + d,
                Flow::Pass | Flow::Stall => Instant::now(),
            };
            if tx.send((due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = writer => {}
        _ = reader => {}
    }
}
