//! `hookline serve` as a separate process, for tests that kill it or signal it.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::helpers::PATIENCE;

pub struct ServerProcess {
    child: Child,
    pub base: String,
    /// Everything the process wrote to stdout and stderr so far.
    pub output: Arc<Mutex<String>>,
}

impl ServerProcess {
    /// Starts `hookline serve` with `args` (plus `--listen 127.0.0.1:0`) and
    /// waits until it is listening.
    pub fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_hookline"));
        cmd.arg("serve").args(["--listen", "127.0.0.1:0"]).args(args);
        cmd.env("RUST_LOG", "info").stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("the hookline binary starts");
        let output = Arc::new(Mutex::new(String::new()));
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let output = output.clone();
            let addr_tx = addr_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if line.contains("hookline is listening") {
                        // Pretty: `address=127.0.0.1:1234`; JSON: `"address":"127.0.0.1:1234"`.
                        let rest = line.split("address=").nth(1).or_else(|| line.split("\"address\":\"").nth(1));
                        let addr: String = rest
                            .unwrap_or_default()
                            .chars()
                            .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == ':' || *c == '[' || *c == ']')
                            .collect();
                        let _ = addr_tx.send(addr);
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            });
        }
        let addr = addr_rx
            .recv_timeout(PATIENCE)
            .unwrap_or_else(|_| panic!("the server did not start listening:\n{}", output.lock().unwrap()));
        Self { child, base: format!("http://{addr}"), output }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// SIGKILL: no chance to clean up, as in a crash or an OOM kill.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for the exit and returns its code.
    pub fn terminate(mut self) -> (Option<i32>, Duration) {
        let started = std::time::Instant::now();
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = started + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code(), started.elapsed());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the server did not exit after SIGTERM:\n{}",
                self.output.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
