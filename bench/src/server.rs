//! The server under test: `hookline serve` as a child process, so its CPU time
//! and memory can be read on their own from /proc. Any `hookline` binary will
//! do: a baseline build and a new one are measured the same way.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context as _, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// Linux reports CPU time in /proc in clock ticks of USER_HZ, which is 100 on
/// every architecture Linux supports today.
const TICKS_PER_SECOND: f64 = 100.0;

/// What a restarted server needs to find the same data.
pub struct RunDir {
    /// The `hookline` binary, so a restart runs the same build.
    server_bin: PathBuf,
    /// Holds the temp SQLite file, if the bench made one; deleted on drop.
    _dir: Option<tempfile::TempDir>,
    database_url: String,
    secret_key: String,
    admin_token: String,
}

pub struct ServerUnderTest {
    child: Child,
    pub base: String,
    pub admin_token: String,
    run: RunDir,
}

/// 32 random bytes in base64: the form `hookline serve` takes for `--secret-key`.
fn random_key() -> String {
    STANDARD.encode(rand::random::<[u8; 32]>())
}

/// The binary given with --server-bin, or else the `hookline` in this
/// executable's directory: `cargo build` puts both in the same target dir.
fn server_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = given {
        anyhow::ensure!(path.is_file(), "--server-bin {}: no such file", path.display());
        return Ok(path.to_owned());
    }
    let beside = std::env::current_exe()
        .context("finding this executable's directory")?
        .with_file_name(format!("hookline{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        beside.is_file(),
        "no hookline binary at {}, beside this executable: build it first (`cargo build --release` for a \
         release run, `cargo build` for a debug one), or name one with --server-bin PATH",
        beside.display()
    );
    Ok(beside)
}

impl ServerUnderTest {
    /// Starts `server_bin` (or the `hookline` beside this executable) on
    /// `database_url`, or on a fresh temp SQLite file.
    pub async fn start(
        server_bin: Option<&Path>,
        database_url: Option<&str>,
        role: &str,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        let server_bin = server_binary(server_bin)?;
        let (dir, database_url) = match database_url {
            Some(url) => (None, url.to_owned()),
            None => {
                let dir = tempfile::tempdir()?;
                let url = format!("sqlite://{}", dir.path().join("bench.db").display());
                (Some(dir), url)
            }
        };
        let run = RunDir {
            server_bin,
            _dir: dir,
            database_url,
            secret_key: random_key(),
            admin_token: format!("bench-{}", random_key()),
        };
        Self::restart(run, role, extra).await
    }

    /// Starts a server on the data of a previous one.
    pub async fn restart(run: RunDir, role: &str, extra: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new(&run.server_bin)
            .args(["serve", "--listen", "127.0.0.1:0", "--role", role, "--allow-target-cidr", "127.0.0.1/32"])
            .args(["--database-url", &run.database_url])
            .args(extra)
            .env("HOOKLINE_SECRET_KEY", &run.secret_key)
            .env("HOOKLINE_ADMIN_TOKEN", &run.admin_token)
            .env("HOOKLINE_LOG_FORMAT", "pretty")
            .env("RUST_LOG", "warn,hookline::app=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} serve", run.server_bin.display()))?;
        let mut lines = BufReader::new(child.stderr.take().expect("piped")).lines();
        let base = loop {
            let Some(line) = lines.next_line().await? else {
                bail!("the server exited before it was listening");
            };
            if let Some(addr) = line.split("address=").nth(1) {
                break format!("http://{}", addr.split_whitespace().next().unwrap_or_default());
            }
            eprintln!("server: {line}");
        };
        // Keep draining the server's stderr so it never blocks; show what it says.
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("server: {line}");
            }
        });
        Ok(Self { child, base, admin_token: run.admin_token.clone(), run })
    }

    pub fn backend_name(&self) -> &'static str {
        if self.run.database_url.starts_with("postgres") { "postgres" } else { "sqlite" }
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The server's CPU time so far: user and system, and by thread name.
    pub fn cpu(&self) -> CpuTimes {
        let Some(pid) = self.pid() else { return CpuTimes::default() };
        let (user, system) = stat_times(&format!("/proc/{pid}/stat")).map(|(_, u, s)| (u, s)).unwrap_or_default();
        let mut threads = BTreeMap::new();
        for task in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
            if let Some((name, user, system)) = stat_times(&task.path().join("stat").to_string_lossy()) {
                let t: &mut ThreadCpu = threads.entry(name).or_default();
                t.user += user;
                t.system += system;
            }
        }
        CpuTimes { user, system, threads }
    }

    /// The high-water mark of the server's resident memory (VmHWM).
    pub fn peak_rss_mb(&self) -> f64 {
        let status = self.pid().and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok());
        status
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0)
            .unwrap_or(0.0)
    }

    /// SIGTERM, then waits for the exit; returns what a restart needs.
    pub async fn stop(mut self) -> anyhow::Result<RunDir> {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        }
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), self.child.wait()).await;
        if !matches!(status, Ok(Ok(s)) if s.success()) {
            let _ = self.child.kill().await;
            bail!("the server did not stop cleanly: {status:?}");
        }
        Ok(self.run)
    }
}

/// CPU time of the server, in seconds.
#[derive(Debug, Clone, Default)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
    /// By thread name (`sqlite-writer`, `tokio-runtime-w`, …; Linux keeps 15
    /// bytes of a name): where the server's time went. A thread that ended
    /// is missing, so the sum may fall short of `user + system`.
    pub threads: BTreeMap<String, ThreadCpu>,
}

/// The CPU time of the threads of one name, in seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct ThreadCpu {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// The time spent since `before`.
    pub fn since(&self, before: &CpuTimes) -> CpuTimes {
        let threads = self
            .threads
            .iter()
            .map(|(n, t)| {
                let b = before.threads.get(n).copied().unwrap_or_default();
                (n.clone(), ThreadCpu { user: t.user - b.user, system: t.system - b.system })
            })
            .collect();
        CpuTimes { user: self.user - before.user, system: self.system - before.system, threads }
    }
}

/// The name, user and system seconds of a process or thread from its stat(5).
fn stat_times(path: &str) -> Option<(String, f64, f64)> {
    parse_stat(&std::fs::read_to_string(path).ok()?)
}

fn parse_stat(stat: &str) -> Option<(String, f64, f64)> {
    // The name is in parentheses and may contain spaces and parentheses.
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(')?.1.to_owned();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); index 11 and 12 after the name.
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    Some((name, ticks(11) / TICKS_PER_SECOND, ticks(12) / TICKS_PER_SECOND))
}

#[cfg(test)]
mod tests {
    use super::parse_stat;

    #[test]
    fn a_stat_line_gives_its_name_and_user_and_system_seconds() {
        // Fields 14 and 15 (utime, stime) are 250 and 75 ticks; the name holds a space and a ')'.
        let line = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 1234 0 0 0 250 75 0 0 20 0 8 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("tokio (rt) w".to_owned(), 2.5, 0.75)));
        assert_eq!(parse_stat("garbage"), None);
    }
}
