//! TLS termination (`--tls-cert`/`--tls-key`) on both backends: wss:// and https:// on the
//! one port, a plain-text client turned away without harm to others, TLS errors closing only
//! their connection, the handshake timeout, certificate reload on SIGHUP, and start-up
//! refusing unusable files.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::certs::{temp_dir, write_cert, Cert};
use common::{now_secs, signed_url, Client, Server, APP_ID, WAIT};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::CertificateDer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream};

on_both_backends!(
    wss_and_https_share_the_port,
    large_messages_cross_many_records,
    plain_text_and_bad_tls_fail_alone,
    silent_clients_are_cut_at_the_handshake_timeout,
    sighup_reloads_the_certificate_for_new_connections,
    the_console_publishes_to_a_tls_listener,
);

/// The console's publish form reaches a TLS-only API (trusting exactly the certificate the
/// server serves, also after a reload) and a wss:// subscriber gets the event.
async fn the_console_publishes_to_a_tls_listener(backend: &'static str) {
    let dir = temp_dir();
    let cert = write_cert(&dir, 1, "localhost");
    let server = start(backend, &cert, &[]);
    let mut c = connect_wss(&server, &client_config(&[&cert.der])).await;
    c.subscribe("orders").await;
    let publish = || async {
        let resp = reqwest::Client::new()
            .post(server.metrics_url("/console/api/apps/app-id/events"))
            .json(&json!({"channel": "orders", "name": "created", "data": "1"}))
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    };
    assert_eq!(publish().await, (200, "{}".to_string()));
    assert_eq!(c.recv().await["event"], "created");

    // A new certificate at the same paths, then SIGHUP: the console follows it.
    let renewed = write_cert(&dir, 2, "localhost");
    assert_ne!(renewed.der, cert.der);
    server.signal(libc::SIGHUP);
    server.wait_for_log("certificate reloaded").await;
    assert_eq!(publish().await, (200, "{}".to_string()));
    assert_eq!(c.recv().await["event"], "created");
}

fn start(backend: &'static str, cert: &Cert, extra: &[&str]) -> Server {
    let mut args = vec![
        "--tls-cert",
        cert.cert_path.to_str().unwrap(),
        "--tls-key",
        cert.key_path.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    Server::start(backend, &args)
}

/// A client configuration trusting exactly these certificates.
fn client_config(trusted: &[&CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in trusted {
        roots.add((*c).clone()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Arc::new(config)
}

fn wss_url(server: &Server) -> String {
    format!(
        "wss://{}/app/{}?protocol=7&client=js&version=8.4.0&flash=false",
        server.addr,
        common::APP_KEY
    )
}

/// Opens a wss:// connection and reads `pusher:connection_established`.
async fn connect_wss(server: &Server, config: &Arc<rustls::ClientConfig>) -> Client {
    connect_wss_url(&wss_url(server), config).await
}

async fn connect_wss_url(url: &str, config: &Arc<rustls::ClientConfig>) -> Client {
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async_tls_with_config(
            url,
            None,
            true,
            Some(Connector::Rustls(config.clone())),
        ),
    )
    .await
    .expect("wss connect timed out")
    .expect("wss connect failed");
    let mut client = Client {
        ws,
        socket_id: String::new(),
    };
    let msg = client.recv().await;
    assert_eq!(msg["event"], "pusher:connection_established", "{msg}");
    let data: Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
    client.socket_id = data["socket_id"].as_str().unwrap().to_string();
    client
}

/// The certificate the server presented on this connection.
fn peer_cert(client: &Client) -> CertificateDer<'static> {
    match client.ws.get_ref() {
        MaybeTlsStream::Rustls(tls) => tls.get_ref().1.peer_certificates().unwrap()[0].clone(),
        _ => panic!("not a TLS connection"),
    }
}

/// An HTTPS client trusting these certificates.
fn https_client(config: &Arc<rustls::ClientConfig>) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured((**config).clone())
        .build()
        .unwrap()
}

/// The signed URL of an API call, over https.
fn signed_https(server: &Server, method: &str, path: &str, body: &[u8]) -> String {
    let url = signed_url(server, method, path, &[], body, now_secs());
    url.replacen("http://", "https://", 1)
}

async fn publish_https(http: &reqwest::Client, server: &Server, body: Value) -> (u16, Value) {
    let path = if body.get("batch").is_some() {
        format!("/apps/{APP_ID}/batch_events")
    } else {
        format!("/apps/{APP_ID}/events")
    };
    let body = body.to_string().into_bytes();
    let url = signed_https(server, "POST", &path, &body);
    let resp = tokio::time::timeout(
        WAIT,
        http.post(url)
            .header("content-type", "application/json")
            .body(body)
            .send(),
    )
    .await
    .expect("API timed out")
    .expect("API request over https");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

/// Sends `request` over TLS with a blocking rustls client, the request written before the
/// handshake so that it leaves in the same segment as the client's last handshake message,
/// and reads until the server closes. Returns the response and whether the server ended the
/// TLS session cleanly (close_notify) or how it did not.
fn tls_request(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &[u8],
) -> (Result<(), String>, String) {
    use std::io::{Read, Write};
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(config, name).unwrap();
    conn.writer().write_all(request).unwrap();
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    let end = loop {
        while conn.wants_write() {
            conn.write_tls(&mut sock).unwrap();
        }
        if let Err(e) = conn.read_tls(&mut sock) {
            break Err(e.to_string());
        }
        if let Err(e) = conn.process_new_packets() {
            break Err(e.to_string());
        }
        match conn.reader().read_to_end(&mut out) {
            Ok(_) => break Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    (end, String::from_utf8_lossy(&out).into_owned())
}

/// Reads from a raw socket until the server ends the connection (end of stream or reset),
/// returning what arrived; fails if it stays open for `wait`.
async fn read_until_closed(stream: &mut tokio::net::TcpStream, wait: Duration) -> Vec<u8> {
    let deadline = Instant::now() + wait;
    let mut got = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf))
            .await
            .expect("the server kept the connection open")
        {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn wss_and_https_share_the_port(backend: &'static str) {
    let dir = temp_dir();
    let cert = write_cert(&dir, 1, "ringcast test");
    let server = start(backend, &cert, &[]);
    let config = client_config(&[&cert.der]);
    assert!(server
        .log()
        .iter()
        .any(|l| l.contains("tls enabled") && l.contains(cert.cert_path.to_str().unwrap())));

    // A real WebSocket client over wss receives events published over https.
    let mut client = connect_wss(&server, &config).await;
    assert_eq!(peer_cert(&client), cert.der);
    client.subscribe("orders").await;
    let http = https_client(&config);
    let (status, body) = publish_https(
        &http,
        &server,
        json!({"name": "order-shipped", "channels": ["orders"], "data": "{\"id\":42}"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let ev = client.recv().await;
    assert_eq!(ev["event"], "order-shipped", "{ev}");
    assert_eq!(ev["channel"], "orders");
    assert_eq!(ev["data"], "{\"id\":42}");

    // Health endpoints over https, on a kept-alive connection.
    for path in ["/healthz", "/readyz", "/healthz"] {
        let resp = http
            .get(format!("https://{}{path}", server.addr))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }

    // A request that arrives with the client's last handshake message is answered; an HTTP
    // connection that ends (`Connection: close`) ends with close_notify.
    let (end, reply) = {
        let config = config.clone();
        let addr = server.addr;
        tokio::task::spawn_blocking(move || {
            tls_request(
                addr,
                config,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            )
        })
        .await
        .unwrap()
    };
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(reply.contains(r#"{"status":"#), "{reply}");
    assert_eq!(end, Ok(()), "unclean TLS close after an HTTP response");

    // pusher:ping over TLS, then a client-initiated close: the server answers the close and
    // ends the TLS session with close_notify (a clean end of stream for the client, where a
    // missing close_notify would be an error).
    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(client.recv().await["event"], "pusher:pong");
    client.ws.close(None).await.unwrap();
    let end = tokio::time::timeout(WAIT, async {
        loop {
            match client.ws.next().await {
                Some(Ok(Message::Close(_))) => continue,
                Some(Ok(other)) => panic!("unexpected {other:?}"),
                Some(Err(e)) => return Err(e.to_string()),
                None => return Ok(()),
            }
        }
    })
    .await
    .expect("server did not end the connection");
    assert_eq!(end, Ok(()), "unclean TLS close");
}

async fn large_messages_cross_many_records(backend: &'static str) {
    let dir = temp_dir();
    let cert = write_cert(&dir, 1, "ringcast test");
    let server = start(backend, &cert, &["--echo-path", "/echo"]);
    let config = client_config(&[&cert.der]);

    // A 60 KB message each way: several TLS records to reassemble, several to send.
    let (mut echo, _) = tokio_tungstenite::connect_async_tls_with_config(
        format!("wss://{}/echo", server.addr),
        None,
        true,
        Some(Connector::Rustls(config.clone())),
    )
    .await
    .unwrap();
    let payload: Vec<u8> = (0..60_000u32).map(|i| (i % 251) as u8).collect();
    for _ in 0..3 {
        echo.send(Message::Binary(payload.clone().into()))
            .await
            .unwrap();
    }
    for _ in 0..3 {
        let got = tokio::time::timeout(WAIT, echo.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::Binary(payload.clone().into()));
    }

    // Event bursts larger than what rustls buffers at once (64 KiB) arrive whole and in
    // order.
    let mut client = connect_wss(&server, &config).await;
    client.subscribe("bulk").await;
    let http = https_client(&config);
    let data = "x".repeat(9_000);
    for round in 0..4 {
        let batch: Vec<Value> = (0..10)
            .map(|i| json!({"name": format!("e{}", round * 10 + i), "channel": "bulk", "data": data}))
            .collect();
        let (status, body) = publish_https(&http, &server, json!({ "batch": batch })).await;
        assert_eq!(status, 200, "{body}");
    }
    for i in 0..40 {
        let ev = client.recv().await;
        assert_eq!(ev["event"], format!("e{i}"));
        assert_eq!(ev["data"].as_str().unwrap().len(), data.len());
    }
}

async fn plain_text_and_bad_tls_fail_alone(backend: &'static str) {
    let dir = temp_dir();
    let cert = write_cert(&dir, 1, "ringcast test");
    let server = start(backend, &cert, &[]);
    let config = client_config(&[&cert.der]);
    let mut before = connect_wss(&server, &config).await;
    before.subscribe("news").await;

    // A ws:// client is answered in plain text that the port speaks TLS.
    let err = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::connect_async(server.ws_url("app-key")),
    )
    .await
    .expect("ws:// attempt hung")
    .expect_err("ws:// to the TLS port succeeded");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => assert_eq!(resp.status(), 400),
        other => panic!("unexpected error {other}"),
    }
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let reply = String::from_utf8_lossy(&read_until_closed(&mut raw, WAIT).await).to_string();
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    assert!(reply.contains("speaks TLS"), "{reply}");

    // A ClientHello that does not parse gets an alert (decode_error), and the connection
    // ends; so does one announcing a message larger than TLS allows.
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0x08, 0x01, 0x00, 0x00, 0x04, 0xde, 0xad, 0xbe, 0xef,
    ])
    .await
    .unwrap();
    let reply = read_until_closed(&mut raw, WAIT).await;
    assert_eq!(
        reply,
        [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 50],
        "expected a decode_error alert"
    );
    let mut raw = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    raw.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05, 1, 2, 3, 4, 5])
        .await
        .unwrap();
    read_until_closed(&mut raw, WAIT).await;

    // A client that does not trust the certificate aborts its handshake: only it fails.
    let other = write_cert(&temp_dir(), 2, "someone else");
    let res = tokio_tungstenite::connect_async_tls_with_config(
        wss_url(&server),
        None,
        true,
        Some(Connector::Rustls(client_config(&[&other.der]))),
    )
    .await;
    assert!(res.is_err(), "an untrusted certificate was accepted");

    // Everyone else is unaffected.
    server.wait_for_log("TLS handshake failed").await;
    let http = https_client(&config);
    let (status, body) = publish_https(
        &http,
        &server,
        json!({"name": "still-here", "channels": ["news"], "data": "1"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(before.recv().await["event"], "still-here");
    let mut after = connect_wss(&server, &config).await;
    after.subscribe("news").await;
}

async fn silent_clients_are_cut_at_the_handshake_timeout(backend: &'static str) {
    let dir = temp_dir();
    let cert = write_cert(&dir, 1, "ringcast test");
    let server = start(backend, &cert, &["--handshake-timeout", "1"]);
    let config = client_config(&[&cert.der]);

    // Nothing sent; then a ClientHello cut short.
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut partial = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    partial
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    let started = Instant::now();
    read_until_closed(&mut silent, Duration::from_secs(5)).await;
    read_until_closed(&mut partial, Duration::from_secs(5)).await;
    assert!(started.elapsed() >= Duration::from_millis(700));
    server
        .wait_for_log("TLS handshake not completed in time")
        .await;
    let rejected = server
        .metric_sum(
            "ringcast_connections_rejected_total",
            &[("reason", "handshake_timeout")],
        )
        .await;
    assert_eq!(rejected, 2, "both stalled handshakes are counted");

    // A client that completes its handshake in time stays, past the timeout.
    let mut client = connect_wss(&server, &config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client
        .send(json!({"event": "pusher:ping", "data": {}}))
        .await;
    assert_eq!(client.recv().await["event"], "pusher:pong");
}

async fn sighup_reloads_the_certificate_for_new_connections(backend: &'static str) {
    let dir = temp_dir();
    let first = write_cert(&dir, 1001, "ringcast first");
    let server = start(backend, &first, &[]);

    let mut open = connect_wss(&server, &client_config(&[&first.der])).await;
    assert_eq!(peer_cert(&open), first.der);

    // A new certificate at the same paths, then SIGHUP.
    let second = write_cert(&dir, 2002, "ringcast second");
    assert_ne!(first.der, second.der);
    server.signal(libc::SIGHUP);
    server.wait_for_log("certificate reloaded").await;

    // New connections get the new certificate (its serial and subject are in the DER).
    let both = client_config(&[&first.der, &second.der]);
    let fresh = connect_wss(&server, &both).await;
    let seen = peer_cert(&fresh);
    assert_eq!(seen, second.der);
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    assert!(contains(&seen, b"ringcast second"));
    assert!(contains(&seen, &2002u64.to_be_bytes()[6..]));
    // Only the new certificate is trusted by this client: it connects.
    connect_wss(&server, &client_config(&[&second.der])).await;

    // The connection opened before the reload keeps working.
    open.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(open.recv().await["event"], "pusher:pong");
    open.subscribe("after-reload").await;

    // A reload that fails (a key that does not parse) keeps the certificate in use.
    std::fs::write(&second.key_path, "not a key").unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for_log("certificate not reloaded").await;
    assert!(line.contains(second.key_path.to_str().unwrap()), "{line}");
    let again = connect_wss(&server, &both).await;
    assert_eq!(peer_cert(&again), second.der);
    open.send(json!({"event": "pusher:ping", "data": {}})).await;
    assert_eq!(open.recv().await["event"], "pusher:pong");
}

/// Runs the binary with these arguments; it must exit at start with a message containing
/// every one of `expect`.
fn refuses_to_start(args: &[&str], expect: &[&str]) {
    let err = match Server::try_start("epoll", args) {
        Ok(_) => panic!("started with {args:?}"),
        Err(log) => log.join("\n"),
    };
    for e in expect {
        assert!(err.contains(e), "no {e:?} in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn unusable_certificates_fail_at_start() {
    let dir = temp_dir();
    let cert = write_cert(&dir, 1, "ringcast test");
    let cert_path = cert.cert_path.to_str().unwrap();
    let key_path = cert.key_path.to_str().unwrap();
    let missing = dir.join("missing.pem");
    let missing = missing.to_str().unwrap();

    refuses_to_start(
        &["--tls-cert", cert_path, "--tls-key", missing],
        &["TLS key", missing, "cannot read it", "No such file"],
    );
    refuses_to_start(
        &["--tls-cert", missing, "--tls-key", key_path],
        &["TLS certificate", missing, "No such file"],
    );
    // A certificate file with no certificate in it (here: the key).
    refuses_to_start(
        &["--tls-cert", key_path, "--tls-key", key_path],
        &["TLS certificate", key_path, "no certificate"],
    );
    // A key file with no key in it (here: the certificate).
    refuses_to_start(
        &["--tls-cert", cert_path, "--tls-key", cert_path],
        &["TLS key", cert_path, "no private key"],
    );
    // Another certificate's key.
    let other = write_cert(&temp_dir(), 2, "other");
    refuses_to_start(
        &[
            "--tls-cert",
            cert_path,
            "--tls-key",
            other.key_path.to_str().unwrap(),
        ],
        &["does not match the certificate"],
    );
    // One without the other.
    refuses_to_start(&["--tls-cert", cert_path], &["--tls-key"]);
    refuses_to_start(&["--tls-key", key_path], &["--tls-cert"]);
}
