//! The harness against a real ringcast: each subcommand runs briefly, its outputs parse,
//! and its counts add up (delivered = published × subscribers when nothing is dropped).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// The ringcast server binary, built if this package's tests run on their own.
fn server_binary() -> PathBuf {
    let bin = target_dir().join("debug/ringcast");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "ringcast", "--bin", "ringcast"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .unwrap();
        assert!(ok.success(), "cannot build the ringcast server");
    }
    bin
}

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(server_binary())
            .args([
                "--port",
                "0",
                "--metrics-port",
                "0",
                "--workers",
                "2",
                "--io",
                "auto",
            ])
            .args(extra)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                {
                    let _ = tx.send(addr.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("server did not start");
        Server { child, addr }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn harness(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ringcast-loadtest"))
        .args(args)
        .output()
        .unwrap()
}

fn out_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ringcast-lt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn summary(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap()
}

fn fig(s: &Value, name: &str) -> f64 {
    s["figures"][name]
        .as_f64()
        .unwrap_or_else(|| panic!("no figure {name}: {}", s["figures"]))
}

fn check_outputs(dir: &Path) {
    let hgrm = std::fs::read_to_string(dir.join("latency.hgrm")).unwrap();
    let rows = hgrm
        .lines()
        .filter(|l| l.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert!(rows > 5, "{hgrm}");
    let hlog = std::fs::read_to_string(dir.join("latency.hlog")).unwrap();
    assert!(
        hlog.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with('"'))
            .count()
            >= 2,
        "{hlog}"
    );
    let svg = std::fs::read_to_string(dir.join("latency.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
}

#[test]
fn fanout_delivers_published_times_subscribers() {
    let server = Server::start(&[]);
    let out = out_dir("fanout");
    let pid = server.child.id().to_string();
    let o = harness(&[
        "fanout",
        "--url",
        &server.url(),
        "--subscribers",
        "20",
        "--channels",
        "4",
        "--rate",
        "400",
        "--batch",
        "2",
        "--publishers",
        "2",
        "--duration",
        "2s",
        "--warmup",
        "1s",
        "--threads",
        "2",
        "--quiet",
        "--server-pid",
        &pid,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    let published = fig(&s, "events_published");
    assert!(published >= 1000.0, "{published}");
    // 20 subscribers over 4 channels: five per channel, each event to one channel.
    assert_eq!(fig(&s, "deliveries_expected"), published * 5.0);
    assert_eq!(
        fig(&s, "deliveries_received"),
        fig(&s, "deliveries_expected")
    );
    for f in [
        "lost",
        "duplicates",
        "out_of_order",
        "publish_errors",
        "subscribers_with_loss",
    ] {
        assert_eq!(fig(&s, f), 0.0, "{f}");
    }
    assert!(s["latency"]["count"].as_u64().unwrap() > 0);
    assert!(s["server"]["cpu_cores"].as_f64().is_some());
    // Server CPU per delivery, split into the server's own (user) and the kernel's.
    let (cpu, user, system) = (
        fig(&s, "server_cpu_us_per_delivery"),
        fig(&s, "server_user_us_per_delivery"),
        fig(&s, "server_system_us_per_delivery"),
    );
    assert!((cpu - user - system).abs() < 0.01, "{cpu} {user} {system}");
    assert_eq!(s["server"]["user_us_per_message"].as_f64(), Some(user));
    assert!(fig(&s, "publish_rate_achieved") >= 0.95 * 400.0);
    assert_eq!(s["errors"].as_array().unwrap().len(), 0);
    let csv = std::fs::read_to_string(out.join("subscribers.csv")).unwrap();
    assert_eq!(csv.lines().count(), 21);
    check_outputs(&out);
}

/// A publisher that cannot keep up with --rate (one request at a time, far more requests
/// a second than one connection can make) fails the run with the rate it achieved, however
/// complete the deliveries; publishers that could not all own a channel are refused.
#[test]
fn a_run_that_falls_behind_its_rate_fails() {
    let server = Server::start(&[]);
    let out = out_dir("behind");
    let o = harness(&[
        "fanout",
        "--url",
        &server.url(),
        "--subscribers",
        "5",
        "--rate",
        "1000000",
        "--duration",
        "1s",
        "--warmup",
        "0s",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = summary(&out);
    assert_eq!(fig(&s, "lost"), 0.0, "everything published arrived");
    let errors = s["errors"].to_string();
    assert!(errors.contains("publishers fell behind"), "{errors}");
    assert!(errors.contains("--pipeline"), "{errors}");
    assert!(fig(&s, "publish_rate_achieved") < 950_000.0);

    let o = harness(&[
        "fanout",
        "--url",
        &server.url(),
        "--subscribers",
        "5",
        "--channels",
        "1",
        "--publishers",
        "8",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("--publishers (8) exceeds --channels (1)"),
        "{err}"
    );
}

/// A second URL for `server`: `localhost` when it resolves to the server's address (it
/// does where /etc/hosts maps it to 127.0.0.1), else the same address with a trailing slash.
fn second_url(server: &Server) -> String {
    use std::net::ToSocketAddrs;
    let port = server.addr.port();
    let localhost = ("localhost", port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next());
    if localhost == Some(server.addr) {
        format!("ws://localhost:{port}")
    } else {
        format!("ws://{}/", server.addr)
    }
}

#[test]
fn fanout_spreads_subscribers_over_several_urls() {
    // Two URLs of one server: without clustering, two servers would not share events.
    let server = Server::start(&[]);
    let out = out_dir("fanout-urls");
    let pid = server.child.id().to_string();
    let (first, second) = (server.url(), second_url(&server));
    let api = format!("http://{}", server.addr);
    let o = harness(&[
        "fanout",
        "--url",
        &first,
        "--url",
        &second,
        "--api-url",
        &api,
        "--subscribers",
        "10",
        "--channels",
        "2",
        "--rate",
        "200",
        "--duration",
        "1s",
        "--warmup",
        "500ms",
        "--quiet",
        "--server-pid",
        &pid,
        "--server-pid",
        &pid,
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let s = summary(&out);
    assert_eq!(s["target"]["targets"], serde_json::json!([first, second]));
    assert_eq!(s["target"]["api_url"], api.as_str());
    assert_eq!(
        s["target"]["subscribers_per_target"],
        serde_json::json!([5, 5])
    );
    assert!(
        stderr.contains(&format!("target: {first}, {second}")),
        "{stderr}"
    );
    let published = fig(&s, "events_published");
    assert!(published >= 200.0, "{published}");
    assert_eq!(fig(&s, "deliveries_expected"), published * 5.0);
    assert_eq!(
        fig(&s, "deliveries_received"),
        fig(&s, "deliveries_expected")
    );
    for f in ["lost", "duplicates", "out_of_order", "publish_errors"] {
        assert_eq!(fig(&s, f), 0.0, "{f}");
    }
    assert_eq!(s["errors"].as_array().unwrap().len(), 0);
    // One process given twice: its figures are summed twice, as for two nodes.
    let pid: u64 = pid.parse().unwrap();
    assert_eq!(s["server"]["pids"], serde_json::json!([pid, pid]));
    assert!(stderr.contains("(summed)"), "{stderr}");
    // compare shows what was measured.
    let o = harness(&[
        "compare",
        out.to_str().unwrap(),
        out.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(
        table.contains(&format!(
            "| target | {first}, {second}; subscribers per URL 5 + 5; API {api} |"
        )),
        "{table}"
    );
    assert!(table.contains("| server processes | 2 | 2 |"), "{table}");
}

#[test]
fn connect_goes_round_robin_over_urls_from_the_environment() {
    // Every other connection goes to a port nobody listens on: exactly half fail.
    let server = Server::start(&[]);
    let out = out_dir("connect-urls");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("ws://{}", closed.local_addr().unwrap());
    drop(closed);
    let o = Command::new(env!("CARGO_BIN_EXE_ringcast-loadtest"))
        .env("LOADTEST_URL", format!("{},{dead}", server.url()))
        .args([
            "connect",
            "--connections",
            "10",
            "--hold",
            "500ms",
            "--quiet",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = summary(&out);
    assert_eq!(fig(&s, "connections_opened"), 5.0);
    assert_eq!(fig(&s, "connect_failures"), 5.0);
    assert_eq!(
        s["target"]["targets"],
        serde_json::json!([server.url(), dead])
    );
    assert_eq!(
        s["target"]["connections_per_target"],
        serde_json::json!([5, 5])
    );
}

#[test]
fn urls_that_are_not_loopback_are_refused() {
    let out = out_dir("not-loopback");
    for args in [
        &["--url", "ws://127.0.0.1:9", "--url", "ws://192.0.2.1:9"][..],
        &["--url", "ws://127.0.0.1:9,ws://192.0.2.1:9"],
    ] {
        let o = harness(
            &[
                &["fanout", "--quiet", "--out", out.to_str().unwrap()][..],
                args,
            ]
            .concat(),
        );
        assert_eq!(o.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            stderr.contains("192.0.2.1:9 is not a loopback address"),
            "{stderr}"
        );
    }
}

#[test]
fn connect_counts_handshakes_and_server_memory() {
    let server = Server::start(&[]);
    let out = out_dir("connect");
    let pid = server.child.id().to_string();
    let o = harness(&[
        "connect",
        "--url",
        &server.url(),
        "--connections",
        "300",
        "--connect-rate",
        "500",
        "--channels",
        "10",
        "--hold",
        "2s",
        "--quiet",
        "--server-pid",
        &pid,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    assert_eq!(fig(&s, "connections_opened"), 300.0);
    assert_eq!(fig(&s, "connect_failures"), 0.0);
    assert_eq!(s["latency"]["count"].as_u64(), Some(300));
    assert!(fig(&s, "server_rss_per_connection_bytes") > 0.0);
    assert!(s["figures"]["kernel_tcp_mem_bytes_per_connection"].is_number());
    // Server CPU per handshake, split; the schedule was kept.
    // (/proc counts CPU in 10 ms ticks: 300 handshakes may show as 0.)
    assert!(fig(&s, "server_cpu_us_per_connection") >= 0.0);
    assert!(
        fig(&s, "server_user_us_per_connection") + fig(&s, "server_system_us_per_connection")
            <= fig(&s, "server_cpu_us_per_connection") + 0.01
    );
    assert!(fig(&s, "connect_rate_achieved") > 0.0);
    check_outputs(&out);
}

#[test]
fn ping_gets_every_pong() {
    let server = Server::start(&[]);
    let out = out_dir("ping");
    let o = harness(&[
        "ping",
        "--url",
        &server.url(),
        "--connections",
        "10",
        "--rate",
        "50",
        "--duration",
        "2s",
        "--warmup",
        "1s",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    let sent = fig(&s, "pings_sent");
    assert!(sent >= 1000.0, "{sent}");
    assert_eq!(fig(&s, "pongs_received"), sent);
    assert_eq!(fig(&s, "pongs_lost"), 0.0);
    check_outputs(&out);
}

#[test]
fn soak_churns_and_keeps_the_others_whole() {
    let server = Server::start(&[]);
    let out = out_dir("soak");
    let pid = server.child.id().to_string();
    let o = harness(&[
        "soak",
        "--url",
        &server.url(),
        "--subscribers",
        "30",
        "--channels",
        "3",
        "--rate",
        "300",
        "--churn",
        "5",
        "--duration",
        "3s",
        "--warmup",
        "1s",
        "--sample-every",
        "1s",
        "--quiet",
        "--server-pid",
        &pid,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    assert!(fig(&s, "subscribers_churned") > 0.0);
    assert_eq!(
        fig(&s, "subscribers_stayed") + fig(&s, "subscribers_churned"),
        30.0
    );
    assert_eq!(fig(&s, "lost"), 0.0);
    assert!(s["server"]["rss_samples"].as_array().unwrap().len() >= 3);
}

/// A soak with presence connections and client events, the app's webhooks pointed at the
/// harness: joins and leaves happen, and every webhook checks out (signed, members and
/// channels balance, one `client_event` webhook per client event).
#[test]
fn soak_checks_presence_and_webhooks() {
    let hooks = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hooks_addr = hooks.local_addr().unwrap();
    drop(hooks);
    let dir = out_dir("soak-webhooks-apps");
    std::fs::create_dir_all(&dir).unwrap();
    let apps = dir.join("apps.toml");
    std::fs::write(
        &apps,
        format!(
            "[[app]]\nid = \"app-id\"\nkey = \"app-key\"\nsecret = \"app-secret\"\n\
             client_events = true\n[[app.webhook]]\nurl = \"http://{hooks_addr}/hooks\"\n"
        ),
    )
    .unwrap();
    let server = Server::start(&["--apps-file", apps.to_str().unwrap()]);
    let out = out_dir("soak-webhooks");
    let hooks_arg = hooks_addr.to_string();
    let o = harness(&[
        "soak",
        "--url",
        &server.url(),
        "--via",
        "client-event",
        "--subscribers",
        "20",
        "--channels",
        "4",
        "--publishers",
        "4",
        "--rate",
        "20",
        "--churn",
        "2",
        "--presence",
        "12",
        "--presence-channels",
        "3",
        "--presence-hold",
        "1s",
        "--webhook-listen",
        &hooks_arg,
        "--webhook-settle",
        "5s",
        "--duration",
        "4s",
        "--warmup",
        "1s",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let s = summary(&out);
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stderr),
        s["errors"]
    );
    assert!(fig(&s, "presence_joins") >= 12.0, "{}", s["figures"]);
    assert_eq!(fig(&s, "presence_joins"), fig(&s, "presence_leaves"));
    assert!(fig(&s, "webhook_member_added") >= 12.0, "{}", s["figures"]);
    assert_eq!(
        fig(&s, "webhook_member_added"),
        fig(&s, "webhook_member_removed")
    );
    assert_eq!(fig(&s, "webhook_members_unbalanced"), 0.0);
    assert_eq!(fig(&s, "webhook_channels_unbalanced"), 0.0);
    assert!(fig(&s, "webhook_channel_occupied") >= 7.0, "4 + 3 channels");
    assert_eq!(
        fig(&s, "webhook_client_event"),
        fig(&s, "client_events_published")
    );
    assert!(fig(&s, "client_events_published") > 0.0);
}

#[test]
fn a_server_that_goes_away_fails_the_run() {
    let mut server = Server::start(&[]);
    let out = out_dir("dies");
    let url = server.url();
    let out2 = out.clone();
    let run = std::thread::spawn(move || {
        harness(&[
            "fanout",
            "--url",
            &url,
            "--subscribers",
            "10",
            "--rate",
            "200",
            "--duration",
            "3s",
            "--warmup",
            "1s",
            "--drain",
            "1s",
            "--quiet",
            "--out",
            out2.to_str().unwrap(),
        ])
    });
    std::thread::sleep(Duration::from_millis(1800));
    let _ = server.child.kill();
    let o = run.join().unwrap();
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let s = summary(&out);
    let errors = s["errors"].as_array().unwrap();
    assert!(
        errors
            .iter()
            .any(|e| e.as_str().unwrap().contains("disconnected")),
        "{errors:?}"
    );
}

#[test]
fn compare_tabulates_runs_and_plots_them() {
    let server = Server::start(&[]);
    let (a, b) = (out_dir("cmp-a"), out_dir("cmp-b"));
    for (dir, label) in [(&a, "first"), (&b, "second")] {
        let o = harness(&[
            "fanout",
            "--url",
            &server.url(),
            "--subscribers",
            "5",
            "--rate",
            "100",
            "--duration",
            "1s",
            "--warmup",
            "500ms",
            "--quiet",
            "--label",
            label,
            "--out",
            dir.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let plot = out_dir("cmp-plot");
    let o = harness(&[
        "compare",
        a.to_str().unwrap(),
        b.join("summary.json").to_str().unwrap(),
        "--out",
        plot.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(table.contains("| figure | first | second |"), "{table}");
    assert!(table.contains("| delivered_per_sec |"));
    let svg = std::fs::read_to_string(plot.join("compare.svg")).unwrap();
    assert_eq!(svg.matches("<polyline").count(), 2);
}

#[test]
fn selftest_measures_the_harness_alone() {
    let out = out_dir("selftest");
    let o = harness(&[
        "selftest",
        "--subscribers",
        "20",
        "--duration",
        "1s",
        "--warmup",
        "500ms",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let s = summary(&out);
    assert!(fig(&s, "received_per_sec") > 1000.0);
    assert!(fig(&s, "messages_per_harness_core_second") > 0.0);
    assert_eq!(fig(&s, "duplicates"), 0.0);
    assert_eq!(fig(&s, "out_of_order"), 0.0);
}
