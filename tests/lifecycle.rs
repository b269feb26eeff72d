//! Start-up and shutdown: graceful drain on SIGTERM, the epoll fallback where io_uring is
//! blocked (as Docker's seccomp profile does), clean refusals of bad configurations.

mod common;

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::Duration;

use common::{close_code, publish, Client, Server, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_backends!(sigterm_drains_clients_with_4200_and_exits_zero);

async fn sigterm_drains_clients_with_4200_and_exits_zero(backend: &'static str) {
    let mut server = Server::start(backend, &["--shutdown-timeout", "5"]);
    let mut clients = Vec::new();
    for _ in 0..10 {
        let mut c = Client::connect(&server).await;
        c.subscribe("news").await;
        clients.push(c);
    }
    // A keep-alive HTTP connection, as a load balancer's health checker keeps.
    let mut http = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    assert!(readyz(&mut http).await.starts_with("HTTP/1.1 200"));
    publish(&server, &["news"], "last-words", "before shutdown").await;
    tokio::time::sleep(Duration::from_millis(100)).await;

    server.signal(libc::SIGTERM);
    // While the WebSockets drain, readiness turns 503 and the connection is not kept.
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let reply = readyz(&mut http).await;
        if reply.starts_with("HTTP/1.1 503") {
            assert!(
                reply.to_ascii_lowercase().contains("connection: close"),
                "{reply}"
            );
            break;
        }
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(
            std::time::Instant::now() < deadline,
            "readiness never turned 503"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for c in &mut clients {
        // Queued events are delivered first, then pusher:error 4200, then close 4200.
        let ev = c.recv().await;
        assert_eq!(ev["event"], "last-words");
        let err = c.recv().await;
        assert_eq!(err["event"], "pusher:error");
        assert_eq!(err["data"]["code"], 4200);
        assert_eq!(close_code(&c.closed().await), 4200);
    }
    // New connections are refused once the listeners are closed.
    let status = server.wait_exit(WAIT);
    assert!(status.success(), "exit status {status:?}");
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err());
    assert!(server.log().iter().any(|l| l.contains("shut down cleanly")));
}

/// Sends `GET /readyz` on a kept-alive connection and returns the response head.
async fn readyz(http: &mut tokio::net::TcpStream) -> String {
    http.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    loop {
        let mut tmp = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, http.read(&mut tmp))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "connection closed: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(|v| v.trim().parse().unwrap())
                })
                .unwrap_or(0);
            if body.len() >= len {
                return head.to_string();
            }
        }
    }
}

/// Installs a seccomp filter that makes io_uring_setup/enter/register fail with EPERM,
/// as Docker's and containerd's default profiles do.
fn block_io_uring(cmd: &mut Command) {
    #[cfg(target_arch = "x86_64")]
    {
        const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
        const LD_ABS_W: u16 = 0x20;
        const JEQ: u16 = 0x15;
        const JGE: u16 = 0x35;
        const JGT: u16 = 0x25;
        const RET: u16 = 0x06;
        const RET_ERRNO_EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;
        const RET_ALLOW: u32 = 0x7fff_0000;
        let f = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
        let filter = [
            f(LD_ABS_W, 0, 0, 4), // arch
            f(JEQ, 0, 4, AUDIT_ARCH_X86_64),
            f(LD_ABS_W, 0, 0, 0), // syscall number
            f(JGE, 0, 2, 425),    // io_uring_setup
            f(JGT, 1, 0, 427),    // io_uring_register
            f(RET, 0, 0, RET_ERRNO_EPERM),
            f(RET, 0, 0, RET_ALLOW),
        ];
        // SAFETY: runs in the child between fork and exec; prctl is async-signal-safe and
        // `filter` outlives the call (it is copied into the closure).
        unsafe {
            cmd.pre_exec(move || {
                let prog = libc::sock_fprog {
                    len: filter.len() as u16,
                    filter: filter.as_ptr() as *mut libc::sock_filter,
                };
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        2,
                        &prog as *const _ as libc::c_ulong,
                        0,
                        0,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn auto_falls_back_to_epoll_when_io_uring_is_blocked() {
    // (Server::command installs it; this test builds its own command.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args([
        "--port",
        "0",
        "--metrics-port",
        "0",
        "--io",
        "auto",
        "--workers",
        "2",
    ]);
    block_io_uring(&mut cmd);
    let server = Server::spawn(cmd, "auto").unwrap_or_else(|log| panic!("{}", log.join("\n")));
    let line = server.wait_for_log("IO backend").await;
    assert!(line.contains("backend=epoll"), "{line}");
    assert!(line.contains("falling back to epoll"), "{line}");
    assert!(line.contains("Operation not permitted"), "{line}");
    // And it serves.
    let mut c = Client::connect(&server).await;
    c.subscribe("still-here").await;
    publish(&server, &["still-here"], "ev", "x").await;
    assert_eq!(c.recv().await["event"], "ev");
}

#[cfg(target_arch = "x86_64")]
#[test]
fn forced_uring_where_it_is_blocked_is_a_clean_startup_error() {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringcast"));
    cmd.args(["--port", "0", "--io", "uring"]);
    block_io_uring(&mut cmd);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("io_uring is unavailable"), "{stderr}");
    assert!(!stderr.contains("panic"), "{stderr}");
}

#[test]
fn demo_secret_is_refused_on_a_public_interface() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--host", "0.0.0.0", "--port", "0"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("--app-secret"), "{stderr}");
}

#[test]
fn bad_flags_are_reported_not_panicked() {
    for args in [
        &["--io", "kqueue"][..],
        &["--cpus", "3-1"],
        &["--app-id", "1"],
        &["--apps-file", "/nonexistent/apps.toml"],
        &["--log-level", "not a level!!"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(!stderr.contains("panic"), "{args:?}: {stderr}");
    }
}

#[test]
fn port_in_use_is_a_clean_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--port", &port, "--io", "epoll"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    // SO_REUSEPORT must not let a second instance quietly share (and split) the port.
    let first = Server::start("epoll", &[]);
    let port = first.addr.port().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .args(["--port", &port, "--io", "epoll"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot listen on"), "{stderr}");
}

/// Every flag in `--help` is documented in the README.
#[test]
fn every_flag_is_in_the_readme() {
    let help = Command::new(env!("CARGO_BIN_EXE_ringcast"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let flags: Vec<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '=']))
        .collect();
    assert!(flags.len() > 20, "{help}");
    let reference = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/configuration.md"
    ))
    .unwrap();
    for flag in flags {
        assert!(readme.contains(flag), "README does not document {flag}");
        if !matches!(flag, "--help" | "--version") {
            let env = format!("RINGCAST_{}", flag[2..].replace('-', "_").to_uppercase());
            assert!(
                reference.contains(&format!("`{flag}` | `{env}`")),
                "docs/configuration.md has no row for {flag} ({env})"
            );
        }
    }
}
