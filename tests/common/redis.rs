//! A Redis of the test's own (one server, or a three-master Redis Cluster) on free ports,
//! and ringcast nodes clustered over it.
//!
//! `redis-server` must be on the PATH (`.ci/run` installs Debian's `redis-server`); without
//! it the test says so loudly and skips — unless `RINGCAST_REQUIRE_ALL_TESTS=1`, where it
//! fails.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{deps, Server, WAIT};

/// How the test's Redis runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// One server.
    Single,
    /// A Redis Cluster of three masters (no replicas): nodes use `--redis-cluster`.
    Sharded,
}

/// The test's Redis (one server, or the masters of a Redis Cluster), stopped when
/// dropped.
pub struct Redis {
    children: Vec<Child>,
    pub ports: Vec<u16>,
    pub kind: Kind,
    /// Where the Cluster's node files go; removed when dropped.
    dir: std::path::PathBuf,
}

impl Redis {
    /// Starts one server, or `None` (skipped loudly) if `redis-server` is not installed.
    pub fn start() -> Option<Redis> {
        Self::start_kind(Kind::Single)
    }

    /// Starts a Redis of `kind`, or `None` (skipped loudly) if `redis-server` (and, for a
    /// Cluster, `redis-cli`) is not installed.
    pub fn start_kind(kind: Kind) -> Option<Redis> {
        redis_server_installed()?;
        if kind == Kind::Sharded && Command::new("redis-cli").arg("--version").output().is_err() {
            deps::unavailable(
                "redis-cli (Debian package redis-tools), for the Redis Cluster tests",
            )?;
        }
        let dir = std::env::temp_dir().join(format!(
            "ringcast-redis-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let count = match kind {
            Kind::Single => 1,
            Kind::Sharded => 3,
        };
        let mut redis = Redis {
            children: Vec::new(),
            ports: Vec::new(),
            kind,
            dir,
        };
        while redis.children.len() < count {
            let port = free_port();
            // A Cluster node also listens on port + 10000 (the cluster bus).
            if kind == Kind::Sharded
                && (port > 55_000 || TcpListener::bind(("127.0.0.1", port + 10_000)).is_err())
            {
                continue;
            }
            let mut cmd = Command::new("redis-server");
            cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
                .current_dir(&redis.dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if kind == Kind::Sharded {
                cmd.args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")]);
            }
            let child = cmd.spawn().expect("spawn redis-server");
            redis.children.push(child);
            redis.ports.push(port);
            if !redis.wait_ready(redis.children.len() - 1) {
                let mut child = redis.children.pop().unwrap();
                redis.ports.pop();
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if kind == Kind::Sharded {
            redis.create_cluster();
        }
        Some(redis)
    }

    /// Joins the servers into one Cluster (the slots spread over the three) and waits
    /// until every node says it is ready.
    fn create_cluster(&self) {
        let addrs: Vec<String> = self
            .ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("run redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let deadline = Instant::now() + WAIT;
        for port in &self.ports {
            loop {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut self.client_at(*port))
                    .unwrap();
                if info.contains("cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "the Redis Cluster did not form: {info}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// What `--redis-url` is given: the server, or every master as a seed.
    pub fn url(&self) -> String {
        self.ports
            .iter()
            .map(|p| format!("redis://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The flags that put a node on this Redis.
    pub fn node_args(&self) -> Vec<String> {
        let mut args = vec!["--redis-url".to_string(), self.url()];
        if self.kind == Kind::Sharded {
            args.push("--redis-cluster".into());
        }
        args
    }

    /// A connection to the (first) server, for the test's own checks.
    pub fn client(&self) -> redis::Connection {
        self.client_at(self.ports[0])
    }

    fn client_at(&self, port: u16) -> redis::Connection {
        redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap()
    }

    fn wait_ready(&mut self, i: usize) -> bool {
        let deadline = Instant::now() + WAIT;
        let url = format!("redis://127.0.0.1:{}", self.ports[i]);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.children[i].try_wait() {
                return false;
            }
            if let Ok(mut c) = redis::Client::open(url.as_str()).and_then(|c| c.get_connection()) {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Sends a signal to every server (SIGSTOP to make Redis unreachable, SIGCONT to bring
    /// it back).
    pub fn signal(&self, sig: i32) {
        for child in &self.children {
            // SAFETY: kill(2) on a child process id this handle owns.
            unsafe { libc::kill(child.id() as i32, sig) };
        }
    }

    /// How many times Redis ran `command`, over every server (`INFO commandstats`).
    pub fn calls(&self, command: &str) -> u64 {
        let prefix = format!("cmdstat_{command}:calls=");
        self.ports
            .iter()
            .map(|p| {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query(&mut self.client_at(*p))
                    .unwrap();
                info.lines()
                    .find_map(|l| l.strip_prefix(&prefix))
                    .and_then(|rest| rest.split(',').next())
                    .map_or(0, |n| n.parse().unwrap())
            })
            .sum()
    }

    /// The publish command nodes use on this Redis.
    pub fn publish_command(&self) -> &'static str {
        match self.kind {
            Kind::Single => "publish",
            Kind::Sharded => "spublish",
        }
    }

    /// Subscribers of pub/sub channel `channel` (sharded ones on a Cluster), over every
    /// server.
    pub fn subscribers(&self, channel: &str) -> i64 {
        let sub = match self.kind {
            Kind::Single => "NUMSUB",
            Kind::Sharded => "SHARDNUMSUB",
        };
        self.ports
            .iter()
            .map(|p| {
                let (_, n): (String, i64) = redis::cmd("PUBSUB")
                    .arg(sub)
                    .arg(channel)
                    .query(&mut self.client_at(*p))
                    .unwrap();
                n
            })
            .sum()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `Some` if `redis-server` is on the PATH; else skipped loudly (or failed, with
/// `RINGCAST_REQUIRE_ALL_TESTS=1`).
fn redis_server_installed() -> Option<()> {
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        deps::unavailable("redis-server (Debian package redis-server), for the cluster tests")?;
    }
    Some(())
}

/// A number unlikely to repeat between tests of one process.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One Redis server that takes only TLS connections and requires a password, with a
/// self-signed certificate for 127.0.0.1; stopped when dropped.
pub struct TlsRedis {
    child: Child,
    pub port: u16,
    pub password: &'static str,
    /// The certificate clients must trust (`SSL_CERT_FILE` for ringcast).
    pub ca: std::path::PathBuf,
    dir: std::path::PathBuf,
}

impl TlsRedis {
    /// Starts it, or `None` (skipped loudly) if `redis-server` is not installed.
    pub fn start() -> Option<TlsRedis> {
        redis_server_installed()?;
        let dir = super::certs::temp_dir();
        let cert = super::certs::write_cert(&dir, 1, "redis");
        let password = "s3cret-redis-password";
        for _ in 0..5 {
            let port = free_port();
            let mut child = Command::new("redis-server")
                .args([
                    "--port",
                    "0",
                    "--tls-port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .arg("--tls-cert-file")
                .arg(&cert.cert_path)
                .arg("--tls-key-file")
                .arg(&cert.key_path)
                .arg("--tls-ca-cert-file")
                .arg(&cert.cert_path)
                .args(["--tls-auth-clients", "no", "--requirepass", password])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-server");
            let deadline = Instant::now() + WAIT;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Some(TlsRedis {
                        child,
                        port,
                        password,
                        ca: cert.cert_path,
                        dir,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server with TLS did not start (is it built with TLS?)");
    }

    /// `rediss://` with `password`.
    pub fn url(&self, password: &str) -> String {
        format!("rediss://:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Starts a node of the cluster on `redis`, and waits until it has reached Redis.
pub async fn node(redis: &Redis, backend: &'static str, node_id: &str, args: &[&str]) -> Server {
    let store = redis.node_args();
    let mut all: Vec<&str> = store.iter().map(String::as_str).collect();
    all.extend_from_slice(&["--node-id", node_id]);
    all.extend_from_slice(args);
    let server = Server::start(backend, &all);
    server.wait_for_log("clustering on").await;
    server
}
