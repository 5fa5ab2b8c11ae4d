//! A `chorus dev` process for end-to-end tests: ephemeral port, temp data dir, real sockets.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod deploy;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub struct Server {
    child: Child,
    pub addr: String,
    pub data: PathBuf,
    pub api_key: String,
    jwt_secret: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Secrets {
    jwt_secret: String,
    api_key: String,
}

impl Server {
    /// Starts `chorus dev` on `data` and waits until it is ready.
    pub fn start(data: &Path) -> Server {
        Server::start_with(data, &[])
    }

    /// Like [`Server::start`], with extra `chorus dev` arguments.
    pub fn start_with(data: &Path, extra: &[&str]) -> Server {
        Server::spawn(data, "127.0.0.1:0", extra, &[("RUST_LOG", "warn")], Stdio::inherit())
    }

    /// Like [`Server::start`], with environment variables and the logs (stderr) in `log`.
    pub fn start_logging(data: &Path, env: &[(&str, &str)], log: std::fs::File) -> Server {
        Server::spawn(data, "127.0.0.1:0", &[], env, Stdio::from(log))
    }

    /// Starts on a fixed port (from [`free_port`]), so clients made before the server
    /// started, or kept across a restart, find it there.
    pub fn start_on(data: &Path, port: u16) -> Server {
        Server::spawn(
            data,
            &format!("127.0.0.1:{port}"),
            &[],
            &[("RUST_LOG", "warn")],
            Stdio::inherit(),
        )
    }

    fn spawn(
        data: &Path,
        listen: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        stderr: Stdio,
    ) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["dev", "--listen", listen, "--shards", "8", "--data"])
            .arg(data)
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("start chorus");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines.next().expect("chorus exited before listening").expect("read stdout");
            if let Some(rest) = line.strip_prefix("chorus dev listening on http://") {
                break rest.trim().to_owned();
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let secrets: Secrets = serde_json::from_str(
            &std::fs::read_to_string(data.join("dev-secrets.json")).expect("dev secrets"),
        )
        .expect("parse dev secrets");
        let server = Server {
            child,
            addr,
            data: data.to_path_buf(),
            api_key: secrets.api_key,
            jwt_secret: secrets.jwt_secret,
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/readyz", self.addr);
        loop {
            if let Ok(resp) = plain_http::blocking_get(&url)
                && resp == 200
            {
                return;
            }
            assert!(Instant::now() < deadline, "chorus not ready in time");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn token(&self, user: &str, roles: &[&str]) -> String {
        self.token_for(user, roles, 3600)
    }

    /// A token that expires `secs` seconds from now.
    pub fn token_for(&self, user: &str, roles: &[&str], secs: u64) -> String {
        let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + secs;
        let claims = json!({"sub": user, "roles": roles, "exp": exp});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(self.jwt_secret.as_bytes()),
        )
        .unwrap()
    }

    /// SIGKILL: no shutdown, no flush.
    pub fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("wait");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub mod cluster;

/// The value of an unlabelled counter or gauge on the `/metrics` of the server at `addr`.
pub async fn metric(addr: &str, name: &str) -> f64 {
    let url = format!("http://{addr}/metrics");
    let text = reqwest::get(&url).await.expect("metrics").text().await.expect("metrics body");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from {url}"))
}
pub mod edge;

/// Reads `child`'s stdout until a line starts with `prefix` (the process is serving), then
/// drains the rest in the background so the child never blocks on a full pipe.
pub fn wait_for_line(child: &mut Child, prefix: &str) {
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    loop {
        let line = lines.next().expect("exited before serving").expect("read stdout");
        if line.starts_with(prefix) {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
}

/// Status code of a plain GET, for readiness polling.
pub fn plain_http_get(url: &str) -> std::io::Result<u16> {
    plain_http::blocking_get(url)
}

/// A loopback port nothing listens on right now, for a child process to bind.
///
/// Not one the OS hands out for port 0: that comes from the ephemeral range, from which every
/// outgoing connection of the tests running in parallel also takes its local port, so one of
/// them could take it before the child binds (`Address already in use`, seen under CI load).
/// Ports below the ephemeral range (32768 on Linux) are never taken that way; which one is
/// spread by process id and a counter, and checked free.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let seed = std::process::id().wrapping_mul(7_919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(LOW + seed.wrapping_add(n.wrapping_mul(97)) % SPAN).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A TCP proxy in front of a server that a test can take down and bring back: down, it cuts
/// every open connection and refuses new ones. It stands in for a network loss without
/// stopping the server.
pub struct Proxy {
    pub addr: String,
    up: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = std::sync::Arc::new(tokio::sync::watch::Sender::new(true));
        let upstream = upstream.to_owned();
        let state = up.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                if !*state.borrow() {
                    continue;
                }
                let mut down = state.subscribe();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = down.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Proxy { addr, up, task }
    }

    pub fn set_up(&self, up: bool) {
        self.up.send_replace(up);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.set_up(false);
        self.task.abort();
    }
}

mod plain_http {
    /// A tiny blocking GET for readiness polling, without pulling a blocking HTTP client.
    pub fn blocking_get(url: &str) -> std::io::Result<u16> {
        use std::io::{Read, Write};
        let rest = url.strip_prefix("http://").unwrap_or(url);
        let (host, path) =
            rest.split_once('/').map(|(h, p)| (h, format!("/{p}"))).unwrap_or((rest, "/".into()));
        let mut s = std::net::TcpStream::connect(host)?;
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let code = buf.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok(code)
    }
}

/// `Chat/room/1` → `Chat%2Froom%2F1`.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP client with a bearer token.
pub struct Api {
    pub base: String,
    pub token: String,
    pub as_user: Option<String>,
    client: ::reqwest::Client,
}

impl Api {
    pub fn new(server: &Server, token: String) -> Api {
        Api::at(server.url(""), token, None)
    }

    pub fn at(base: String, token: String, as_user: Option<String>) -> Api {
        let client = ::reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Api { base, token, as_user, client }
    }

    /// Like [`Api::call`], but a transport failure is an `Err` instead of a panic.
    pub async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<(u16, Value), String> {
        let method = ::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req =
            self.client.request(method, format!("{}{}", self.base, path)).bearer_auth(&self.token);
        if let Some(u) = &self.as_user {
            req = req.header("X-Chorus-As-User", u);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let text = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::String(text))))
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = ::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req =
            self.client.request(method, format!("{}{}", self.base, path)).bearer_auth(&self.token);
        if let Some(u) = &self.as_user {
            req = req.header("X-Chorus-As-User", u);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    pub async fn raw(&self, method: &str, path: &str, body: &str) -> (u16, Value) {
        let method = ::reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .client
            .request(method, format!("{}{}", self.base, path))
            .bearer_auth(&self.token)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
            .await
            .expect("http request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub async fn ws_connect(server: &Server, token: &str) -> Ws {
    ws_connect_addr(&server.addr, token).await
}

/// A WebSocket session with the node at `addr` (`host:port`).
pub async fn ws_connect_addr(addr: &str, token: &str) -> Ws {
    let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
    req.headers_mut().insert("Authorization", format!("Bearer {token}").parse().unwrap());
    tokio_tungstenite::connect_async(req).await.expect("ws connect").0
}

pub async fn ws_send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("ws send");
}

/// The next JSON text frame, or panic after 10 s.
pub async fn ws_next(ws: &mut Ws) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("no frame within 10 s")
            .expect("socket closed")
            .expect("ws error");
        if let Message::Text(t) = frame {
            return serde_json::from_str(&t).expect("json frame");
        }
    }
}

/// The reply to request `id`, skipping events.
pub async fn ws_reply(ws: &mut Ws, id: u64) -> Value {
    loop {
        let v = ws_next(ws).await;
        if v.get("re") == Some(&json!(id)) {
            return v;
        }
    }
}
