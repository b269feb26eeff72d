//! A Redis server of the test's own, on a free port, and ringcast nodes clustered over it.
//!
//! `redis-server` must be on the PATH (`.ci/run` installs Debian's `redis-server`); without
//! it the test says so loudly and skips — unless `RINGCAST_REQUIRE_ALL_TESTS=1`, where it
//! fails.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{deps, Server, WAIT};

/// A running `redis-server`, stopped when dropped.
pub struct Redis {
    child: Child,
    pub port: u16,
}

impl Redis {
    /// Starts one, or `None` (skipped loudly) if `redis-server` is not installed.
    pub fn start() -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            deps::unavailable("redis-server (Debian package redis-server), for the cluster tests")?;
        }
        for _ in 0..5 {
            let port = free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let mut redis = Redis { child, port };
            if redis.wait_ready() {
                return Some(redis);
            }
        }
        panic!("redis-server did not start");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// A connection for the test's own checks.
    pub fn client(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if let Ok(mut c) = redis::Client::open(self.url()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal to the server (SIGSTOP to make it unreachable, SIGCONT to bring it
    /// back).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on a child process id this handle owns.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// How many times Redis ran `command` (from `INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.client())
            .unwrap();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a node of the cluster on `redis`, and waits until it has reached Redis.
pub async fn node(redis: &Redis, backend: &'static str, node_id: &str, args: &[&str]) -> Server {
    let url = redis.url();
    let mut all = vec!["--redis-url", &url, "--node-id", node_id];
    all.extend_from_slice(args);
    let server = Server::start(backend, &all);
    server.wait_for_log("clustering on").await;
    server
}
