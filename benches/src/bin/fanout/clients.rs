//! The parent's handle on its client processes (this binary re-executed as `fanout client`):
//! spawning them spread over source addresses, and one command/answer round over all of them.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::client::Mode;
use crate::report::StepReport;

struct ClientProc {
    child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

/// How sessions are laid out over client processes.
pub struct Plan {
    pub mode: Mode,
    pub sessions: usize,
    /// Sessions per client process (each needs one fd per session).
    pub per_process: usize,
    /// Client process `i` connects to `targets[i]` (round robin when there are more
    /// processes than targets), and binds source address 127.0.0.`2 + i`.
    pub targets: Vec<SocketAddr>,
    pub users: usize,
    pub connect_concurrency: usize,
}

pub struct Clients {
    procs: Vec<ClientProc>,
    /// Sessions open after connecting, and those that could not be opened.
    pub connected: usize,
    pub failed: usize,
    /// Listens the server asked to retry (`retryAfterMs`) while sessions opened.
    pub listen_retries: u64,
}

impl Clients {
    /// Starts the client processes and waits until each has opened all its sessions.
    pub async fn start(plan: &Plan, within: Duration) -> anyhow::Result<Clients> {
        let exe = std::env::current_exe()?;
        let processes = plan.sessions.div_ceil(plan.per_process.max(1));
        let mut procs = Vec::new();
        let mut first = 0;
        for p in 0..processes {
            let count = plan.per_process.min(plan.sessions - first);
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(p)?));
            let target = plan.targets[p % plan.targets.len()];
            let mode = match plan.mode {
                Mode::Ws => "ws",
                Mode::Nats => "nats",
            };
            let mut child = Command::new(&exe)
                .args(["client", "--mode", mode, "--targets", &target.to_string()])
                .args(["--source", &source.to_string(), "--connections", &count.to_string()])
                .args(["--first-user", &first.to_string(), "--users", &plan.users.to_string()])
                .args(["--connect-concurrency", &plan.connect_concurrency.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("starting a client process")?;
            let stdin = child.stdin.take().context("client stdin")?;
            let stdout = BufReader::new(child.stdout.take().context("client stdout")?).lines();
            procs.push(ClientProc { child, stdin, stdout });
            first += count;
        }
        let mut clients = Clients { procs, connected: 0, failed: 0, listen_retries: 0 };
        for proc in &mut clients.procs {
            let line = tokio::time::timeout(within, proc.stdout.next_line())
                .await
                .context("client processes did not connect in time")??
                .context("a client process exited while connecting")?;
            let mut words = line.split_whitespace().skip(1);
            let ok: usize = words.next().context("connected <ok>")?.parse()?;
            let failed: usize = words.next().context("connected <failed>")?.parse()?;
            let retried: u64 = words.next().context("connected <retried>")?.parse()?;
            clients.connected += ok;
            clients.failed += failed;
            clients.listen_retries += retried;
        }
        Ok(clients)
    }

    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().filter_map(|p| p.child.id()).collect()
    }

    /// Sends `command` to every client and returns each one's answer line.
    async fn round(&mut self, command: &str) -> anyhow::Result<Vec<String>> {
        for proc in &mut self.procs {
            proc.stdin.write_all(format!("{command}\n").as_bytes()).await?;
            proc.stdin.flush().await?;
        }
        let mut answers = Vec::new();
        for proc in &mut self.procs {
            let line = tokio::time::timeout(Duration::from_secs(60), proc.stdout.next_line())
                .await
                .context("a client process did not answer")??
                .context("a client process exited")?;
            answers.push(line);
        }
        Ok(answers)
    }

    pub async fn reset(&mut self) -> anyhow::Result<()> {
        for answer in self.round("reset").await? {
            if answer != "ok" {
                bail!("client answered {answer:?} to reset");
            }
        }
        Ok(())
    }

    /// Bench messages received by all clients since the last reset.
    pub async fn delivered(&mut self) -> anyhow::Result<u64> {
        let mut total = 0;
        for answer in self.round("progress").await? {
            total += answer.strip_prefix("progress ").context("progress answer")?.parse::<u64>()?;
        }
        Ok(total)
    }

    /// The step's merged report; `expected_last` is the last ordinal (sequence) published.
    pub async fn report(&mut self, expected_last: u64) -> anyhow::Result<StepReport> {
        let mut merged = StepReport::default();
        for answer in self.round(&format!("report {expected_last}")).await? {
            let json = answer.strip_prefix("report ").context("report answer")?;
            merged.merge(&serde_json::from_str(json)?);
        }
        Ok(merged)
    }

    /// Asks every client to exit and waits for them (they are killed on drop otherwise).
    pub async fn quit(mut self) {
        for proc in &mut self.procs {
            let _ = proc.stdin.write_all(b"quit\n").await;
        }
        for proc in &mut self.procs {
            if tokio::time::timeout(Duration::from_secs(5), proc.child.wait()).await.is_err() {
                let _ = proc.child.kill().await;
            }
        }
    }
}
