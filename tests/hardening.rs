//! What a hostile or faulty client can try, each answered without harm to anyone else:
//! idle and trickling HTTP connections, and more (see docs/security.md).

mod common;

use std::time::{Duration, Instant};

use common::{now_secs, publish, signed_url, signed_url_with, Client, Server, APP_ID, WAIT};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

on_both_backends!(
    keep_alive_connections_stay_for_the_idle_timeout,
    a_trickled_request_on_a_kept_connection_is_cut,
    clients_that_pipeline_and_never_read_do_not_stall_the_worker,
    unsigned_api_requests_are_refused_before_their_body_is_read,
    announced_but_trickled_frames_hold_little_and_are_cut,
    a_panicking_session_leaves_no_member_subscription_or_count_behind,
    a_connection_churning_channels_is_held_to_the_subscription_rate,
    a_subscribe_loop_does_not_flood_a_counted_channels_subscribers,
    re_subscribing_to_a_large_presence_channel_gets_the_same_members,
    the_channel_index_shrinks_after_a_mass_unsubscribe,
    idle_http_connections_cannot_take_the_servers_descriptors,
    an_address_is_held_to_its_connection_limit,
    one_apps_hanging_webhook_receiver_does_not_hold_up_another_apps_webhooks,
    behind_a_trusted_proxy_clients_are_counted_by_their_forwarded_address,
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

/// Clients that pipeline requests and never read the answers: the server stops reading
/// them once their answers back up, and what they keep sending must not take what every
/// other connection of the worker needs to receive (on io_uring, the worker's shared
/// receive buffers). Meanwhile a new client on the same (single) worker connects,
/// subscribes, pings and gets its events.
async fn clients_that_pipeline_and_never_read_do_not_stall_the_worker(backend: &'static str) {
    // Long timeouts, so that no timer ends the hogs while the test runs.
    let server = Server::start(
        backend,
        &[
            "--workers",
            "1",
            "--handshake-timeout",
            "120",
            "--http-idle-timeout",
            "120",
        ],
    );
    // Small requests with larger answers, 100 to a write.
    let request = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(100);
    let mut hogs = Vec::new();
    for _ in 0..8 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small receive window: the answers back up quickly.
        socket.set_recv_buffer_size(4096).unwrap();
        let mut stream = socket.connect(server.addr).await.unwrap();
        let request = request.clone();
        hogs.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while sent < 16 << 20 {
                match tokio::time::timeout(
                    Duration::from_secs(2),
                    stream.write_all(request.as_bytes()),
                )
                .await
                {
                    Ok(Ok(())) => sent += request.len(),
                    // The server stopped taking more: hold the connection open.
                    Ok(Err(_)) | Err(_) => break,
                }
            }
            (stream, sent)
        }));
    }
    let mut held = Vec::new();
    for h in hogs {
        held.push(h.await.unwrap());
    }
    let total: usize = held.iter().map(|(_, n)| n).sum();
    assert!(total > 1 << 20, "the hogs sent only {total} bytes");

    let mut c = tokio::time::timeout(WAIT, Client::connect(&server))
        .await
        .expect("a new client could not connect while the hogs held on");
    tokio::time::timeout(WAIT, c.subscribe("news"))
        .await
        .expect("a new client could not subscribe while the hogs held on");
    for i in 0..5 {
        publish(&server, &["news"], "tick", &i.to_string()).await;
        assert_eq!(c.recv().await["data"], i.to_string());
        c.send(json!({"event": "pusher:ping", "data": {}})).await;
        assert_eq!(c.recv().await["event"], "pusher:pong");
    }
    drop(held);
}

/// An API request whose query does not prove it comes from the app (wrong key, secret or
/// timestamp) is answered 401 at once: its body (announced, never sent here) is not waited
/// for, read or hashed. A correctly signed request's body is still checked against
/// `body_md5`.
async fn unsigned_api_requests_are_refused_before_their_body_is_read(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let path = format!("/apps/{APP_ID}/events");
    let body = json!({"name": "e", "channel": "c", "data": "x".repeat(100_000)}).to_string();
    let forged = [
        signed_url_with(
            &server,
            common::APP_KEY,
            "wrong-secret",
            "POST",
            &path,
            &[],
            body.as_bytes(),
            now_secs(),
        ),
        signed_url(
            &server,
            "POST",
            &path,
            &[],
            body.as_bytes(),
            now_secs() - 3600,
        ),
        signed_url_with(
            &server,
            "no-such-key",
            common::APP_SECRET,
            "POST",
            &path,
            &[],
            body.as_bytes(),
            now_secs(),
        ),
    ];
    for url in forged {
        let target = url
            .split_once(&server.addr.to_string())
            .unwrap()
            .1
            .to_string();
        let mut http = TcpStream::connect(server.addr).await.unwrap();
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        http.write_all(head.as_bytes()).await.unwrap();
        let reply = read_response(&mut http).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");
        assert!(reply.contains("\"error\""), "a JSON reason: {reply}");
    }
    // Signed for one body, sent with another: refused once the body is in.
    let body = json!({"name": "e", "channel": "c", "data": "x"}).to_string();
    let url = signed_url(&server, "POST", &path, &[], body.as_bytes(), now_secs());
    let other = body.replace("\"e\"", "\"f\"");
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.text().await.unwrap().contains("body_md5"));
    let resp = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

/// Connections that announce a 64 KiB frame (a 14-byte header) and then send one byte of
/// it: each holds only what it sent, not the announced length, and each is closed with
/// 1008 once `--message-timeout` has passed since the frame began (bytes of an unfinished
/// message are not activity, so nothing else would end them).
async fn announced_but_trickled_frames_hold_little_and_are_cut(backend: &'static str) {
    let server = Server::start(backend, &["--message-timeout", "2"]);
    let path = format!("/app/{}?protocol=7", common::APP_KEY);
    let mut header = vec![0x81u8, 0x80 | 127];
    header.extend_from_slice(&65_536u64.to_be_bytes());
    header.extend_from_slice(&[1, 2, 3, 4]);
    assert_eq!(header.len(), 14);
    let n = 1000;
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut ws = common::raw::RawWs::connect(&server, &path).await;
        let established = ws.read_frame().await.unwrap();
        assert!(established.text().contains("connection_established"));
        ws.send_bytes(&header).await;
        ws.send_bytes(b"x").await;
        conns.push(ws);
    }
    // What the server holds for them, once their bytes are in.
    let deadline = Instant::now() + WAIT;
    let held = loop {
        let held = server.metric_total("ringcast_inbound_buffer_bytes").await;
        if held >= (n * 15) as u64 || Instant::now() > deadline {
            break held;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        held >= (n * 15) as u64,
        "the partial frames were not received: {held}"
    );
    assert!(
        held <= (n * 4096) as u64,
        "{n} connections that sent 15 bytes each hold {held} bytes of receive buffers"
    );
    for ws in &mut conns {
        assert_eq!(ws.read_close().await, 1008);
    }
    drop(conns);
    // Their buffers go with them.
    let deadline = Instant::now() + WAIT;
    while server.metric_total("ringcast_inbound_buffer_bytes").await != 0 {
        assert!(Instant::now() < deadline, "receive buffers not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A session that panics (injected through a test-only hook) is cleaned up like one that
/// closed: its presence member is removed (observers told), its channels vacated, its
/// counts returned; the server goes on serving everyone else.
async fn a_panicking_session_leaves_no_member_subscription_or_count_behind(backend: &'static str) {
    let marker = "boom-4f1c";
    let mut cmd = Server::command(backend, &["--workers", "1"]);
    cmd.env("RINGCAST_TEST_PANIC_MARKER", marker);
    let server = Server::spawn(cmd, backend).unwrap_or_else(|log| panic!("{}", log.join("\n")));
    let mut observer = Client::connect(&server).await;
    observer
        .send_presence_subscribe("presence-room", &json!({"user_id": "obs"}))
        .await;
    assert_eq!(
        observer.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    let mut victim = Client::connect(&server).await;
    victim.subscribe("only-victim").await;
    victim
        .send_presence_subscribe("presence-room", &json!({"user_id": "ann"}))
        .await;
    assert_eq!(
        victim.recv().await["event"],
        "pusher_internal:subscription_succeeded"
    );
    assert_eq!(
        observer.recv().await["event"],
        "pusher_internal:member_added"
    );
    common::eventually_api(
        &server,
        &format!("/apps/{APP_ID}/channels"),
        &[],
        json!({"channels": {"only-victim": {}, "presence-room": {}}}),
    )
    .await;

    victim
        .send(json!({"event": "pusher:ping", "data": {"note": marker}}))
        .await;
    // Its socket closes, and everything it held is let go.
    common::wait_closed(&mut victim.ws).await;
    let removed = observer.recv().await;
    assert_eq!(
        removed["event"], "pusher_internal:member_removed",
        "{removed}"
    );
    common::eventually_api(
        &server,
        &format!("/apps/{APP_ID}/channels"),
        &[],
        json!({"channels": {"presence-room": {}}}),
    )
    .await;
    let deadline = Instant::now() + WAIT;
    while server.metric_total("ringcast_connections").await != 1 {
        assert!(
            Instant::now() < deadline,
            "the panicked connection is still counted"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Everyone else is still served.
    let mut late = Client::connect(&server).await;
    late.subscribe("news").await;
    publish(&server, &["news"], "e", "1").await;
    assert_eq!(late.recv().await["event"], "e");
}

/// A connection that subscribes and unsubscribes unique channels as fast as it can (each
/// one a channel created and vacated, with its webhooks and counts) gets its first burst
/// (a reconnect re-subscribing everything), then `--max-subscriptions-per-second`:
/// beyond it `pusher:subscription_error` with status 429, counted; others are unaffected.
async fn a_connection_churning_channels_is_held_to_the_subscription_rate(backend: &'static str) {
    let server = Server::start(
        backend,
        &[
            "--max-subscriptions-per-second",
            "5",
            "--max-channels-per-connection",
            "10",
        ],
    );
    let mut churner = Client::connect(&server).await;
    let (mut accepted, mut refused) = (0, 0);
    let started = Instant::now();
    for i in 0..30 {
        let channel = format!("churn-{i}");
        churner
            .send(json!({"event": "pusher:subscribe", "data": {"channel": channel}}))
            .await;
        let answer = churner.recv().await;
        match answer["event"].as_str() {
            Some("pusher_internal:subscription_succeeded") => accepted += 1,
            Some("pusher:subscription_error") => {
                assert_eq!(answer["data"]["status"], 429, "{answer}");
                assert_eq!(answer["data"]["type"], "LimitReached", "{answer}");
                refused += 1;
            }
            _ => panic!("unexpected {answer}"),
        }
        churner
            .send(json!({"event": "pusher:unsubscribe", "data": {"channel": channel}}))
            .await;
    }
    // The burst of 10, plus what refilled while the loop ran (5 a second).
    let refilled = 5 * (started.elapsed().as_secs() + 1);
    assert!(
        accepted >= 10 && accepted <= 10 + refilled && refused > 0,
        "{accepted} accepted, {refused} refused"
    );
    assert_eq!(accepted + refused, 30);
    assert_eq!(
        server
            .metric_sum("ringcast_rate_limited_total", &[("limit", "subscriptions")])
            .await,
        refused
    );
    // Another connection subscribes as usual.
    let mut other = Client::connect(&server).await;
    other.subscribe("news").await;
}

/// A connection looping subscribe/unsubscribe on a channel with subscription counts gives
/// its subscribers at most a burst of counts a second (not two frames per turn), and they
/// end with the true count.
async fn a_subscribe_loop_does_not_flood_a_counted_channels_subscribers(backend: &'static str) {
    let apps = common::demo_app_with("subscription_count = true");
    let server = Server::start(backend, &["--apps-file", apps.to_str().unwrap()]);
    let count = |msg: &serde_json::Value| {
        assert_eq!(msg["event"], "pusher_internal:subscription_count", "{msg}");
        let data: serde_json::Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
        data["subscription_count"].as_u64().unwrap()
    };
    let mut watcher = Client::connect(&server).await;
    watcher.subscribe("counted").await;
    assert_eq!(count(&watcher.recv().await), 1);
    let mut churner = Client::connect(&server).await;
    for _ in 0..40 {
        for event in ["pusher:subscribe", "pusher:unsubscribe"] {
            churner
                .send(json!({"event": event, "data": {"channel": "counted"}}))
                .await;
        }
    }
    // 80 changes; the watcher gets a burst, then the last one from the sweep.
    let mut seen = Vec::new();
    while let Some(msg) = watcher.try_recv(Duration::from_millis(2500)).await {
        seen.push(count(&msg));
    }
    assert!(
        seen.len() <= 2 * 10 + 1,
        "{} counts for 80 changes: {seen:?}",
        seen.len()
    );
    assert_eq!(seen.last(), Some(&1), "ends with the true count: {seen:?}");
    // The churner was answered every time.
    let mut answered = 0;
    while answered < 40 {
        let m = churner.recv_event().await;
        assert_eq!(m["event"], "pusher_internal:subscription_succeeded", "{m}");
        answered += 1;
    }
}

/// Subscribing again to a joined presence channel of 100 members with large `user_info`
/// answers with the members, the same bytes each time, and with the change once a member
/// leaves.
async fn re_subscribing_to_a_large_presence_channel_gets_the_same_members(backend: &'static str) {
    let server = Server::start(backend, &[]);
    let bio = "x".repeat(900);
    let mut members = Vec::new();
    for u in 0..100 {
        let mut c = Client::connect(&server).await;
        c.send_presence_subscribe(
            "presence-big",
            &json!({"user_id": u.to_string(), "user_info": {"bio": bio}}),
        )
        .await;
        let ok = c.recv_event().await;
        assert_eq!(
            ok["event"], "pusher_internal:subscription_succeeded",
            "{ok}"
        );
        members.push(c);
    }
    let me = &mut members[0];
    let mut answers = Vec::new();
    for _ in 0..20 {
        me.send_presence_subscribe(
            "presence-big",
            &json!({"user_id": "0", "user_info": {"bio": bio}}),
        )
        .await;
        let again = loop {
            let m = me.recv().await;
            if m["event"] == "pusher_internal:subscription_succeeded" {
                break m;
            }
        };
        answers.push(again["data"].as_str().unwrap().to_string());
    }
    let data: serde_json::Value = serde_json::from_str(&answers[0]).unwrap();
    assert_eq!(data["presence"]["count"], 100);
    assert_eq!(data["presence"]["hash"]["42"]["bio"], bio.as_str());
    assert!(answers.iter().all(|a| *a == answers[0]));
    drop(members.pop());
    let me = &mut members[0];
    let gone = loop {
        me.send_presence_subscribe(
            "presence-big",
            &json!({"user_id": "0", "user_info": {"bio": bio}}),
        )
        .await;
        let m = loop {
            let m = me.recv().await;
            if m["event"] == "pusher_internal:subscription_succeeded" {
                break m;
            }
        };
        let data: serde_json::Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
        if data["presence"]["count"] == 99 {
            break data;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        gone["presence"]["hash"].get("99").is_none(),
        "{}",
        gone["presence"]["ids"]
    );
}

/// A connection that opened 4,200 channels leaves: the app's channel table is rebuilt
/// smaller within a second or two (logged), and what remains is served as before.
async fn the_channel_index_shrinks_after_a_mass_unsubscribe(backend: &'static str) {
    let server = Server::start(
        backend,
        &[
            "--max-channels-per-connection",
            "5000",
            "--max-subscriptions-per-second",
            "0",
            "--workers",
            "1",
        ],
    );
    let mut stays = Client::connect(&server).await;
    stays.subscribe("keep").await;
    let mut many = Client::connect(&server).await;
    for i in 0..4200 {
        many.send(json!({"event": "pusher:subscribe", "data": {"channel": format!("mass-{i}")}}))
            .await;
    }
    for _ in 0..4200 {
        assert_eq!(
            many.recv_event().await["event"],
            "pusher_internal:subscription_succeeded"
        );
    }
    drop(many);
    server.wait_for_log("channel index rebuilt smaller").await;
    publish(&server, &["keep"], "after", "x").await;
    assert_eq!(stays.recv().await["event"], "after");
    let (status, body) = common::api(
        &server,
        "GET",
        &format!("/apps/{APP_ID}/channels"),
        &[],
        None,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"channels": {"keep": {}}}));
}

/// A server with 256 descriptors, flooded with 300 idle TCP connections and kept-alive API
/// connections: HTTP connections are held to `--max-http-connections` (by default an
/// eighth of the descriptors), the quietest closed to make room, so descriptors remain for
/// everyone: the API still publishes and a new client still connects and subscribes.
async fn idle_http_connections_cannot_take_the_servers_descriptors(backend: &'static str) {
    use std::os::unix::process::CommandExt;
    // No timer ends the flood while the test runs.
    let mut cmd = Server::command(backend, &["--handshake-timeout", "120"]);
    // SAFETY: setrlimit(2) in the child between fork and exec, touching no shared state.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 256,
                rlim_max: 256,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::spawn(cmd, backend).unwrap_or_else(|log| panic!("{}", log.join("\n")));
    let mut subscriber = Client::connect(&server).await;
    subscriber.subscribe("news").await;

    let mut idle = Vec::new();
    for i in 0..300 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        if i % 3 == 0 {
            // A kept-alive API connection that made one request.
            assert!(request(&mut s).await.unwrap().starts_with("HTTP/1.1 200"));
        }
        idle.push(s);
    }
    tokio::time::timeout(WAIT, publish(&server, &["news"], "still-here", "1"))
        .await
        .expect("the API was not reachable");
    assert_eq!(subscriber.recv().await["event"], "still-here");
    let mut late = tokio::time::timeout(WAIT, Client::connect(&server))
        .await
        .expect("a new client could not connect");
    late.subscribe("news").await;
    // The flood was trimmed: most of it was closed by the server.
    let mut closed = 0;
    for s in &mut idle {
        let mut b = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) =
            tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await
        {
            closed += 1;
        }
    }
    assert!(
        closed >= 200,
        "only {closed} of 300 idle connections were closed"
    );
}

/// `--max-connections-per-ip`: an address gets that many connections (HTTP or WebSocket)
/// at once, more are closed at accept (counted), other addresses are unaffected, and a
/// closed connection frees its place.
async fn an_address_is_held_to_its_connection_limit(backend: &'static str) {
    let server = Server::start(backend, &["--max-connections-per-ip", "3"]);
    let path = format!("/app/{}?protocol=7", common::APP_KEY);
    let from = |last: u8| {
        let s = tokio::net::TcpSocket::new_v4().unwrap();
        s.bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
            .unwrap();
        s
    };
    let mut mine = Vec::new();
    for _ in 0..3 {
        let stream = from(2).connect(server.addr).await.unwrap();
        mine.push(common::raw::RawWs::handshake(stream, &server, &path).await);
    }
    let mut extra = from(2).connect(server.addr).await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(WAIT, extra.read(&mut b))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "a fourth connection was served: {n:?}"
    );
    assert_eq!(
        server
            .metric_sum(
                "ringcast_connections_rejected_total",
                &[("reason", "ip_connections")]
            )
            .await,
        1
    );
    // Another address is served.
    let stream = from(3).connect(server.addr).await.unwrap();
    let _other = common::raw::RawWs::handshake(stream, &server, &path).await;
    // One of the three leaves: its place is free again.
    drop(mine.pop());
    let deadline = Instant::now() + WAIT;
    loop {
        let stream = from(2).connect(server.addr).await.unwrap();
        let mut s = stream;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        if let Ok(reply) = read_response(&mut s).await {
            assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the freed place was not given back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// App A's webhook receiver hangs while anonymous clients open 11,000 of A's channels (a
/// `channel_occupied` each): A's URL fills only its own share of waiting requests, and app
/// B's webhooks keep arriving.
async fn one_apps_hanging_webhook_receiver_does_not_hold_up_another_apps_webhooks(
    backend: &'static str,
) {
    use common::hooks::{Answer, Receiver};
    let hanging = Receiver::start(vec![Answer::Hang; 20_000]).await;
    let fine = Receiver::start(vec![]).await;
    let apps = common::apps_file(&format!(
        "[[app]]\nid = \"a\"\nkey = \"key-a\"\nsecret = \"secret-of-app-a\"\n\
         [[app.webhook]]\nurl = \"{}\"\nevents = [\"channel_occupied\"]\n\n\
         [[app]]\nid = \"b\"\nkey = \"key-b\"\nsecret = \"secret-of-app-b\"\n\
         [[app.webhook]]\nurl = \"{}\"\nevents = [\"channel_occupied\"]\n",
        hanging.url, fine.url
    ));
    let server = Server::start(
        backend,
        &[
            "--apps-file",
            apps.to_str().unwrap(),
            "--max-subscriptions-per-second",
            "0",
        ],
    );
    let mut flood = Vec::new();
    for c in 0..11 {
        let mut client = Client::connect_url(&server.ws_url("key-a")).await;
        for i in 0..1000 {
            let channel = format!("flood-{c}-{i}");
            client
                .send(json!({"event": "pusher:subscribe", "data": {"channel": channel}}))
                .await;
        }
        for _ in 0..1000 {
            assert_eq!(
                client.recv().await["event"],
                "pusher_internal:subscription_succeeded"
            );
        }
        flood.push(client);
    }
    let mut b = Client::connect_url(&server.ws_url("key-b")).await;
    b.subscribe("b-room").await;
    fine.wait_for_event(|e| e["name"] == "channel_occupied" && e["channel"] == "b-room")
        .await;
    // A's excess was dropped and counted, not queued.
    assert!(
        server
            .metric_sum("ringcast_webhook_requests_total", &[("result", "overload")])
            .await
            > 0
    );
}

/// Behind a `--trusted-proxy`, new WebSocket connections are counted per client address
/// from `X-Forwarded-For`, and the proxy itself is not held to `--max-connections-per-ip`;
/// anyone else's `X-Forwarded-For` is ignored.
async fn behind_a_trusted_proxy_clients_are_counted_by_their_forwarded_address(
    backend: &'static str,
) {
    let server = Server::start(
        backend,
        &[
            "--trusted-proxy",
            "127.0.0.2",
            "--max-connections-per-ip-per-second",
            "2",
            "--max-connections-per-ip",
            "3",
        ],
    );
    let upgrade = |last: u8, forwarded: &'static str| {
        let addr = server.addr;
        async move {
            let s = tokio::net::TcpSocket::new_v4().unwrap();
            s.bind(std::net::SocketAddr::from(([127, 0, 0, last], 0)))
                .unwrap();
            let mut stream = s.connect(addr).await.unwrap();
            let req = format!(
                "GET /app/{}?protocol=7 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                 Sec-WebSocket-Version: 13\r\nX-Forwarded-For: {forwarded}\r\n\r\n",
                common::APP_KEY
            );
            stream.write_all(req.as_bytes()).await.unwrap();
            let mut head = vec![0u8; 12];
            let status = match tokio::time::timeout(WAIT, stream.read_exact(&mut head)).await {
                Ok(Ok(_)) => String::from_utf8_lossy(&head).to_string(),
                // Closed at accept (--max-connections-per-ip).
                _ => "closed".to_string(),
            };
            (status, stream)
        }
    };
    // Six clients behind the proxy, two connections each: more than 3 from the proxy's
    // address at once, 2 a second from each client.
    let mut held = Vec::new();
    for client in ["203.0.113.1", "203.0.113.2", "203.0.113.3"] {
        for _ in 0..2 {
            let (status, s) = upgrade(2, client).await;
            assert!(status.ends_with("101"), "{client}: {status}");
            held.push(s);
        }
    }
    // Five more from one client at once (two windows at most): some get 429, as they
    // would without the proxy.
    let refused = |statuses: Vec<String>| statuses.iter().any(|s| s.ends_with("429"));
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(upgrade(2, "203.0.113.1").await.0);
    }
    assert!(refused(statuses.clone()), "{statuses:?}");
    // What a client writes before the proxy's own entry is not believed.
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(upgrade(2, "198.51.100.9, 203.0.113.2").await.0);
    }
    assert!(refused(statuses.clone()), "{statuses:?}");
    // Not a trusted proxy: its X-Forwarded-For is ignored, it is counted as itself.
    let mut statuses = Vec::new();
    for forged in ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5"] {
        statuses.push(upgrade(3, forged).await.0);
    }
    assert!(refused(statuses.clone()), "{statuses:?}");
}
