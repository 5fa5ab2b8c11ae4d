//! A cluster of real `chorus node` processes for tests: ephemeral ports, temp data dirs, real
//! gRPC between them, SIGKILL and restart.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chorus_proto::pb;
use chorus_proto::pb::admin_client::AdminClient;
use serde_json::Value;

use super::{Api, free_port};

pub const JWT_SECRET: &str = "cluster-test-secret-0123456789abcdef";
pub const API_KEY: &str = "chorus_cluster_test_api_key_0123456789";

pub struct Member {
    pub id: u64,
    pub api: String,
    pub peer: String,
    pub data: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub members: Vec<Member>,
    config: PathBuf,
    shards: u16,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts `n` nodes with `shards` shards and the given extra config (TOML) and waits until
    /// every shard has a leader.
    pub fn start(n: usize, shards: u16, extra_config: &str) -> Cluster {
        let mut cluster = Cluster::unstarted(n, shards, extra_config);
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_ready(i);
        }
        cluster
    }

    /// `n` members with ports and data dirs, none started yet.
    pub fn unstarted(n: usize, shards: u16, extra_config: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("chorus.toml");
        std::fs::write(&config, format!("version = 1\n{extra_config}\n")).unwrap();
        let members = (1..=n as u64)
            .map(|id| Member {
                id,
                api: format!("127.0.0.1:{}", free_port()),
                peer: format!("127.0.0.1:{}", free_port()),
                data: dir.path().join(format!("node{id}")),
                child: None,
            })
            .collect();
        Cluster { members, config, shards, _dir: dir }
    }

    /// `--peers` naming every member.
    pub fn all_peers(&self) -> String {
        self.peers_arg()
    }

    fn peers_arg(&self) -> String {
        self.members.iter().map(|m| format!("{}={}", m.id, m.peer)).collect::<Vec<_>>().join(",")
    }

    /// Starts member `i`'s process (again).
    pub fn spawn(&mut self, i: usize) {
        let peers = self.peers_arg();
        self.spawn_with(i, &peers, &[]);
    }

    /// A new member with fresh ports and data dir, not started.
    pub fn add_member(&mut self, id: u64) -> usize {
        let dir = self.members[0].data.parent().unwrap().to_path_buf();
        self.members.push(Member {
            id,
            api: format!("127.0.0.1:{}", free_port()),
            peer: format!("127.0.0.1:{}", free_port()),
            data: dir.join(format!("node{id}")),
            child: None,
        });
        self.members.len() - 1
    }

    /// `--peers` naming the given members (by index).
    pub fn peers_of(&self, members: &[usize]) -> String {
        members
            .iter()
            .map(|i| format!("{}={}", self.members[*i].id, self.members[*i].peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts member `i` with an explicit `--peers` and extra arguments.
    pub fn spawn_with(&mut self, i: usize, peers: &str, extra: &[&str]) {
        let peers = peers.to_owned();
        let m = &mut self.members[i];
        assert!(m.child.is_none(), "node {} already runs", m.id);
        let mut child = Command::new(env!("CARGO_BIN_EXE_chorus"))
            .args(["node", "--id", &m.id.to_string(), "--listen", &m.api])
            .args(["--peer-listen", &m.peer, "--peers", &peers])
            .args(["--shards", &self.shards.to_string()])
            .arg("--data")
            .arg(&m.data)
            .arg("--config")
            .arg(&self.config)
            .args(extra)
            .env("CHORUS_JWT_SECRET", JWT_SECRET)
            .env("CHORUS_API_KEY", API_KEY)
            .env("RUST_LOG", std::env::var("CHORUS_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start chorus node");
        super::wait_for_line(&mut child, "chorus node ");
        m.child = Some(child);
    }

    /// SIGKILL member `i`: no shutdown, no flush.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().expect("kill");
            c.wait().expect("wait");
        }
    }

    /// SIGTERM member `i` and wait for it to exit: `Some(status)`, or `None` if it was still
    /// running `within` later (it is then killed).
    pub fn terminate(
        &mut self,
        i: usize,
        within: std::time::Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut c = self.members[i].child.take()?;
        let sent = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "sending SIGTERM");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Some(status) = c.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Sends `sig` (`"-STOP"`, `"-CONT"`, …) to member `i`.
    #[allow(dead_code)]
    pub fn signal(&self, i: usize, sig: &str) {
        let pid = self.members[i].child.as_ref().expect("member running").id();
        let sent = Command::new("kill").args([sig, &pid.to_string()]).status();
        assert!(sent.is_ok_and(|s| s.success()), "kill {sig} {pid}");
    }

    pub fn is_up(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// Waits until member `i` answers `/readyz` with 200 (every shard has a leader).
    pub fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("http://{}/readyz", self.members[i].api);
        loop {
            if let Ok(200) = super::plain_http_get(&url) {
                return;
            }
            assert!(Instant::now() < deadline, "node {} not ready in time", self.members[i].id);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// An HTTP client of member `i`, acting as `user` with the API key.
    pub fn api(&self, i: usize, user: Option<&str>) -> Api {
        Api::at(format!("http://{}", self.members[i].api), API_KEY.into(), user.map(Into::into))
    }

    pub async fn admin(&self, i: usize) -> AdminClient<tonic::transport::Channel> {
        AdminClient::connect(format!("http://{}", self.members[i].peer)).await.expect("admin")
    }

    pub async fn status(&self, i: usize) -> pb::StatusReply {
        self.admin(i).await.status(pb::StatusRequest {}).await.expect("status").into_inner()
    }

    /// Member `i`'s own copy of a stream's messages (no leader involved).
    pub async fn local_messages(&self, i: usize, publisher: &str, name: &str) -> (u64, Vec<Value>) {
        let reply = self
            .admin(i)
            .await
            .local_messages(pb::LocalMessagesRequest {
                publisher_id: publisher.into(),
                name: name.into(),
            })
            .await
            .expect("local messages")
            .into_inner();
        let messages = reply.messages.iter().map(|m| serde_json::from_slice(m).unwrap()).collect();
        (reply.message_count, messages)
    }

    /// The node that leads `group`, as member `i` sees it (0 when unknown).
    pub async fn leader_of(&self, i: usize, group: u32) -> u64 {
        self.status(i).await.groups.iter().find(|g| g.group == group).map_or(0, |g| g.leader)
    }

    pub fn index_of(&self, id: u64) -> usize {
        self.members.iter().position(|m| m.id == id).expect("member")
    }

    /// Each shard's leader and voter set as the leader reports them (asking every running
    /// member, the highest term winning), with whether it is in a joint change. Shards
    /// without a known leader are missing.
    pub async fn shard_views(&self) -> BTreeMap<u32, ShardView> {
        let mut best: BTreeMap<u32, (u64, ShardView)> = BTreeMap::new();
        for i in 0..self.members.len() {
            if !self.is_up(i) {
                continue;
            }
            let status = self.status(i).await;
            for g in status.groups.iter().filter(|g| g.leader == status.node_id) {
                let view = ShardView {
                    leader: g.leader,
                    voters: g.voters.iter().copied().collect(),
                    joint: g.joint,
                };
                if best.get(&g.group).is_none_or(|(term, _)| *term < g.term) {
                    best.insert(g.group, (g.term, view));
                }
            }
        }
        best.into_iter().map(|(g, (_, view))| (g, view)).collect()
    }

    /// The value of an unlabelled counter or gauge on member `i`'s `/metrics`.
    pub async fn metric(&self, i: usize, name: &str) -> f64 {
        super::metric(&self.members[i].api, name).await
    }
}

/// A shard as its leader reports it.
#[derive(Clone, Debug)]
pub struct ShardView {
    pub leader: u64,
    pub voters: BTreeSet<u64>,
    pub joint: bool,
}

/// Runs `chorus admin --node <node> <args>`; (success, stdout + stderr).
pub async fn admin_cli(node: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_chorus"))
        .args(["admin", "--node", node])
        .args(args)
        .output()
        .await
        .expect("chorus admin");
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut c) = m.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// Posts `content` with clientMsgId `id` to `path` until it is acknowledged, the way a careful
/// client retries: each attempt goes to `target(*cursor)` (`None`: that target is down, try the
/// next), and the cursor moves on after every failure. A refusal other than 5xx or 429 fails
/// the test. Returns the base URL that acknowledged and the ordinal.
pub async fn post_until_acked(
    target: impl Fn(usize) -> Option<String>,
    cursor: &mut usize,
    path: &str,
    id: &str,
    content: &str,
) -> (String, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(Instant::now() < deadline, "post {id} not acknowledged within 30 s");
        let Some(base) = target(*cursor) else {
            *cursor += 1;
            tokio::task::yield_now().await;
            continue;
        };
        let api = Api::at(base.clone(), API_KEY.into(), None);
        let body =
            serde_json::json!({"type": "Chat/message", "content": content, "clientMsgId": id});
        match api.try_call("POST", path, Some(body)).await {
            Ok((200 | 201, v)) => {
                let ordinal = v["message"]["ordinal"].as_u64().or(v["ordinal"].as_u64());
                return (base, ordinal.unwrap_or_else(|| panic!("no ordinal: {v}")));
            }
            Ok((status, v)) => {
                assert!(status >= 500 || status == 429, "post refused for good: {status} {v}");
            }
            Err(_) => {}
        }
        *cursor += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A JWT for `user`, signed with the cluster's secret, valid for an hour.
#[allow(dead_code)]
pub fn user_token(user: &str) -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": exp + 3600}),
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}
