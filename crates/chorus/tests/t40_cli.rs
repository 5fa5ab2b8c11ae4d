//! The CLI: `chorus token`, `chorus post`, `chorus tail`, and config errors that stop `chorus
//! dev` at start with a clear message.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Api, Server};
use serde_json::json;

fn chorus() -> Command {
    Command::new(env!("CARGO_BIN_EXE_chorus"))
}

#[tokio::test]
async fn token_post_and_tail() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let out = chorus()
        .args(["token", "--user", "alice", "--role", "mod", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let alice = Api::new(&server, token.clone());
    let (s, v) = alice.call("POST", "/v1/streams", Some(json!({"type": "Chat/room", "name": "Chat/room/1", "readLevel": 35, "writeLevel": 20}))).await;
    assert_eq!(s, 201, "the minted token works: {v}");

    let url = server.url("");
    let post = chorus()
        .args([
            "post",
            "alice/Chat/room/1",
            "hello",
            "--url",
            &url,
            "--token",
            &token,
            "--client-msg-id",
            "c1",
        ])
        .output()
        .unwrap();
    assert!(post.status.success(), "{}", String::from_utf8_lossy(&post.stderr));
    let posted: serde_json::Value = serde_json::from_slice(&post.stdout).unwrap();
    assert_eq!(posted["ordinal"], 2);

    let mut tail = chorus()
        .args(["tail", "alice/Chat/room/1", "--since", "0", "--url", &url, "--token", &token])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let second = lines.next().unwrap().unwrap();
    assert!(first.starts_with("#1 "), "{first}");
    assert!(second.starts_with("#2 ") && second.ends_with("alice: hello"), "{second}");
    let (s, _) = alice
        .call(
            "POST",
            "/v1/streams/alice/Chat%2Froom%2F1/messages",
            Some(json!({"type": "Chat/message", "content": "live"})),
        )
        .await;
    assert_eq!(s, 201);
    let third = lines.next().unwrap().unwrap();
    assert!(third.starts_with("#3 ") && third.ends_with("live"), "{third}");
    tail.kill().unwrap();
    tail.wait().unwrap();

    let bad = chorus()
        .args(["post", "no-slash", "x", "--url", &url, "--token", &token])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).starts_with("error: "));
}

/// A refused token or user id ends `post` and `tail` at once with the server's error (the
/// SDK would keep reconnecting, which a one-shot command cannot mend); a server that is not
/// there is named as such, and `post` says nothing was sent.
#[tokio::test]
async fn refusals_end_post_and_tail_with_the_servers_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let url = server.url("");
    let started = std::time::Instant::now();
    let post = chorus()
        .args([
            "post",
            "alice/Chat/room/1",
            "x",
            "--url",
            &url,
            "--token",
            "garbage",
            "--wait",
            "60",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&post.stderr);
    assert!(!post.status.success());
    assert!(err.contains("(401)") && err.contains("unauthenticated"), "{err}");
    assert!(err.contains("nothing was sent"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "post waited out --wait");

    let tail = chorus()
        .args(["tail", "alice/Chat/room/1", "--url", &url, "--data"])
        .arg(dir.path())
        .args(["--as", "not a user"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&tail.stderr);
    assert!(!tail.status.success());
    assert!(err.contains("(400)") && err.contains("X-Chorus-As-User"), "{err}");

    let nobody = format!("http://127.0.0.1:{}", common::free_port());
    let post = chorus()
        .args(["post", "alice/Chat/room/1", "x", "--url", &nobody, "--wait", "1", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&post.stderr);
    assert!(!post.status.success());
    assert!(err.contains("could not connect") && err.contains("nothing was sent"), "{err}");
}

/// Bad configuration stops `chorus dev` before it serves, naming the problem.
#[test]
fn bad_config_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("chorus.toml");
    std::fs::write(
        &cfg,
        "version = 1\n[raft]\nheartbeat_ms = 200\nelection_min_ms = 300\nelection_max_ms = 900\n",
    )
    .unwrap();
    let out = chorus()
        .args(["dev", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("election_min_ms"), "{err}");

    std::fs::write(&cfg, "version = 1\nshardz = 3\n").unwrap();
    let out = chorus()
        .args(["dev", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--data")
        .arg(dir.path().join("d"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("shardz"));
}
