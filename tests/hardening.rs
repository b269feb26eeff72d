//! What a hostile or faulty client can try, each answered without harm to anyone else:
//! idle and trickling HTTP connections, and more (see docs/security.md).

mod common;

use std::time::{Duration, Instant};

use common::{Server, WAIT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_backends!(
    keep_alive_connections_stay_for_the_idle_timeout,
    a_trickled_request_on_a_kept_connection_is_cut,
);

/// Sends `GET /healthz` and reads the response head (the body is small and comes with it).
async fn request(http: &mut TcpStream) -> std::io::Result<String> {
    http.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await?;
    read_response(http).await
}

async fn read_response(http: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::new();
    loop {
        let mut tmp = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, http.read(&mut tmp))
            .await
            .map_err(|_| std::io::Error::other("no response"))??;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("closed after {:?}", String::from_utf8_lossy(&buf)),
            ));
        }
        buf.extend_from_slice(&tmp[..n]);
        let text = String::from_utf8_lossy(&buf);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let len = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= head_end + 4 + len {
                return Ok(text.into_owned());
            }
        }
    }
}

/// A kept-alive API connection that is quiet for longer than `--handshake-timeout` (the
/// time a request's head may take) still serves its next request: only
/// `--http-idle-timeout` ends a quiet connection, and then it does.
async fn keep_alive_connections_stay_for_the_idle_timeout(backend: &'static str) {
    let server = Server::start(
        backend,
        &["--handshake-timeout", "1", "--http-idle-timeout", "4"],
    );
    let mut http = TcpStream::connect(server.addr).await.unwrap();
    assert!(request(&mut http)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = request(&mut http).await;
    assert!(
        second
            .as_deref()
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200")),
        "a kept-alive connection quiet for 2.5 s was cut: {second:?}"
    );
    // Past the idle timeout the server closes it.
    let started = Instant::now();
    let mut tmp = [0u8; 64];
    let n = tokio::time::timeout(WAIT, http.read(&mut tmp)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "not closed when idle: {n:?}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3), "closed early");
}

/// A second request whose head trickles in a byte at a time (each byte resetting any idle
/// timer) is cut once `--handshake-timeout` has passed since its first byte.
async fn a_trickled_request_on_a_kept_connection_is_cut(backend: &'static str) {
    let server = Server::start(
        backend,
        &["--handshake-timeout", "1", "--http-idle-timeout", "60"],
    );
    let mut http = TcpStream::connect(server.addr).await.unwrap();
    assert!(request(&mut http)
        .await
        .unwrap()
        .starts_with("HTTP/1.1 200"));
    let started = Instant::now();
    let head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut cut = false;
    for b in head {
        if http.write_all(&[*b]).await.is_err() {
            cut = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut tmp = [0u8; 64];
        if let Ok(r) = tokio::time::timeout(Duration::from_millis(1), http.read(&mut tmp)).await {
            assert!(matches!(r, Ok(0) | Err(_)), "answered a trickled head");
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "a head trickled over {:?} was still being read",
        started.elapsed()
    );
}
