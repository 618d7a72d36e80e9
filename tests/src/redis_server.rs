//! A throwaway Redis for one test (Debian's `redis-server` on a free port, AOF on as in
//! production), which the test may SIGKILL and restart from its AOF; stopped when
//! dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or killed) server.
pub struct RedisServer {
    /// `redis://127.0.0.1:<port>/`.
    pub url: String,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server with its data under `dir`; panics (naming the package to
    /// install) when `redis-server` is missing or does not answer within 10 s.
    pub fn start(dir: &Path) -> RedisServer {
        std::fs::create_dir_all(dir).expect("redis dir");
        let port = crate::free_port();
        let mut s = RedisServer {
            url: format!("redis://127.0.0.1:{port}/"),
            port,
            dir: dir.to_owned(),
            child: None,
        };
        s.spawn();
        s
    }

    fn spawn(&mut self) {
        let child = server_command(self.port, &self.dir, "redis.log")
            .args(["--appendfsync", "everysec"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server cannot start ({e}): install Debian's redis-server")
            });
        self.child = Some(child);
        assert!(
            answers(self.port, "PING", "PONG", Duration::from_secs(10)),
            "redis on port {} did not answer:\n{}",
            self.port,
            self.log()
        );
    }

    /// SIGKILLs the server (no shutdown, no final AOF rewrite).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Repairs a torn AOF tail with `redis-check-aof --fix` (a no-op on a whole file)
    /// and starts the server again on the same port and data; returns what the check
    /// printed.
    pub fn restart_from_aof(&mut self) -> String {
        let manifest = self.dir.join("appendonlydir/appendonly.aof.manifest");
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo y | redis-check-aof --fix '{}'",
                manifest.display()
            ))
            .output()
            .unwrap_or_else(|e| {
                panic!("redis-check-aof cannot run ({e}): install Debian's redis-tools")
            });
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "redis-check-aof failed:\n{report}");
        self.spawn();
        report
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-server` on `port` of 127.0.0.1 with AOF on and no RDB snapshots, its data and
/// its log (`logfile`) under `dir`: what every test Redis shares.
pub(crate) fn server_command(port: u16, dir: &Path, logfile: &str) -> Command {
    let mut c = Command::new("redis-server");
    c.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--appendonly",
        "yes",
        "--save",
        "",
        "--dir",
        dir.to_str().expect("utf-8 dir"),
        "--logfile",
        logfile,
    ]);
    c
}

/// Polls `redis-cli -p port <command>` until its output contains `want`; false when
/// `timeout` passes first.
pub(crate) fn answers(port: u16, command: &str, want: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(command.split(' '))
            .output();
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(want)) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
