//! Child processes of a run: started with their output discarded (or logged to a file), killed on
//! drop, so an error or ctrl-c anywhere in a bench leaves no server behind.

use std::path::Path;
use std::process::{Child, Command, Stdio};

pub struct Proc {
    pub child: Option<Child>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> anyhow::Result<Proc> {
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        Ok(Proc { child: Some(child) })
    }

    /// Like [`Proc::spawn`], with stdout and stderr appended to `log` (for post-mortems of a
    /// server that would not start).
    pub fn spawn_logged(cmd: &mut Command, log: &Path) -> anyhow::Result<Proc> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = cmd.stdout(file.try_clone()?).stderr(file).spawn()?;
        Ok(Proc { child: Some(child) })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// CPU time (user + system) the process has used so far, from `/proc/<pid>/stat`.
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(self.pid()?)
    }

    /// Resident set size in KiB (`VmRSS` of `/proc/<pid>/status`).
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib_of(self.pid()?)
    }

    /// SIGKILL: the process gets no chance to flush or hand over.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// CPU time (user + system) of process `pid` so far, in seconds.
pub fn cpu_seconds_of(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Resident set size of process `pid` in KiB.
pub fn rss_kib_of(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A free loopback port.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU used by each process over `over`, after letting it settle, as "a% b% c%" of one core.
pub async fn idle_cpu(procs: &[Proc], over: std::time::Duration) -> String {
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let before: Vec<f64> = procs.iter().map(|p| p.cpu_seconds().unwrap_or(0.0)).collect();
    tokio::time::sleep(over).await;
    let after: Vec<f64> = procs.iter().map(|p| p.cpu_seconds().unwrap_or(0.0)).collect();
    let per: Vec<String> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| format!("{:.1}%", (a - b) / over.as_secs_f64() * 100.0))
        .collect();
    per.join(" ")
}
