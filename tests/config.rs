//! The configuration file: precedence (command line > environment > file > defaults),
//! apps from the file, clear errors naming the file and key, and the `config check` /
//! `config example` tools.

mod common;

use std::process::Command;

use common::{apps_file, Client, Server};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ringcast");

fn config_file(toml: &str) -> std::path::PathBuf {
    // Same temporary-directory helper as the apps files.
    let path = apps_file(toml);
    let renamed = path.with_file_name("ringcast.toml");
    std::fs::rename(&path, &renamed).unwrap();
    renamed
}

fn server_cmd(config: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--port", "0", "--metrics-port", "0", "--workers", "1"])
        .arg("--config")
        .arg(config)
        .args(extra);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

async fn activity_timeout(server: &Server, key: &str) -> u64 {
    use futures_util::StreamExt;
    let mut ws = Client::open(&server.ws_url(key)).await;
    let msg = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let msg: Value = serde_json::from_str(&msg).unwrap();
    assert_eq!(msg["event"], "pusher:connection_established", "{msg}");
    let data: Value = serde_json::from_str(msg["data"].as_str().unwrap()).unwrap();
    data["activity_timeout"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_line_beats_environment_beats_file() {
    let file = config_file(
        "activity_timeout = 41\nlog_level = \"ringcast=debug\"\n\n[[app]]\nid = \"7\"\nkey = \"file-key\"\nsecret = \"file-secret\"\n",
    );
    // The file alone.
    let server = Server::spawn(server_cmd(&file, &[], &[]), "auto").unwrap();
    assert_eq!(activity_timeout(&server, "file-key").await, 41);
    drop(server);
    // The environment over the file.
    let env = [("RINGCAST_ACTIVITY_TIMEOUT", "42")];
    let server = Server::spawn(server_cmd(&file, &[], &env), "auto").unwrap();
    assert_eq!(activity_timeout(&server, "file-key").await, 42);
    drop(server);
    // The command line over both.
    let server = Server::spawn(
        server_cmd(&file, &["--activity-timeout", "43"], &env),
        "auto",
    )
    .unwrap();
    assert_eq!(activity_timeout(&server, "file-key").await, 43);
    drop(server);
    // Apps on the command line replace the file's.
    let server = Server::spawn(
        server_cmd(
            &file,
            &[
                "--app-id",
                "8",
                "--app-key",
                "cli-key",
                "--app-secret",
                "cli-secret",
            ],
            &[],
        ),
        "auto",
    )
    .unwrap();
    assert_eq!(activity_timeout(&server, "cli-key").await, 41);
    let mut ws = Client::open(&server.ws_url("file-key")).await;
    assert_eq!(
        common::close_code(&common::wait_closed(&mut ws).await),
        4001
    );
}

#[test]
fn invalid_files_fail_at_start_naming_the_file_and_key() {
    for (toml, key, why) in [
        ("port = \"six\"\n", "port", "invalid value"),
        ("max_connectionz = 5\n", "max_connectionz", "unknown key"),
        ("io = \"kqueue\"\n", "io", "invalid value"),
        ("[[app]]\nid = \"1\"\nkey = \"k\"\n", "app", "secret"),
        ("port = [\n", "-", "invalid TOML"),
    ] {
        let file = config_file(toml);
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&file)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{toml}: {err}");
        let want = format!("{}: {key}: ", file.display());
        assert!(err.contains(&want), "{toml}: want {want:?} in {err}");
        assert!(err.contains(why), "{toml}: want {why:?} in {err}");
    }
}

#[test]
fn config_check_masks_secrets_and_example_round_trips() {
    let example = Command::new(BIN)
        .args(["config", "example"])
        .output()
        .unwrap();
    assert!(example.status.success());
    let text = String::from_utf8(example.stdout).unwrap();
    assert!(text.contains("[[app]]"), "{text}");

    // As printed, its placeholder secrets are refused.
    let placeholder = config_file(&text);
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&placeholder)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("placeholder secret"));

    // With real secrets it is valid, and the check prints the effective values, masked.
    let real = config_file(&text.replace("CHANGE-ME-", "s3cr3t-value-"));
    let out = Command::new(BIN)
        .args(["config", "check"])
        .arg(&real)
        .env("RINGCAST_MAX_CONNECTIONS", "777")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !stdout.contains("s3cr3t-value-long-random-secret"),
        "{stdout}"
    );
    assert!(stdout.contains("characters, masked"), "{stdout}");
    assert!(
        stdout.contains("max_connections = 777"),
        "environment wins: {stdout}"
    );
    assert!(stdout.contains("host = \"0.0.0.0\""), "{stdout}");
    let effective: toml::Table = stdout.parse().expect("the check prints TOML");
    assert_eq!(effective["app"][0]["id"].as_str(), Some("1001"));

    // The shipped example is the one the binary prints.
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ringcast.toml.example"),
    )
    .unwrap();
    assert_eq!(shipped, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_apps_without_dropping_the_others() {
    let apps = apps_file(
        "[[app]]\nid = \"1\"\nkey = \"stays\"\nsecret = \"s1\"\n\n[[app]]\nid = \"2\"\nkey = \"goes\"\nsecret = \"s2\"\n",
    );
    let server = Server::start("auto", &["--apps-file", apps.to_str().unwrap()]);
    let mut stays = Client::connect_url(&server.ws_url("stays")).await;
    stays.subscribe("news").await;
    let mut goes = Client::connect_url(&server.ws_url("goes")).await;

    // A broken file changes nothing.
    std::fs::write(&apps, "[[app]]\nid = \"1\"\n").unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("apps not reloaded").await;
    Client::connect_url(&server.ws_url("goes")).await;

    std::fs::write(
        &apps,
        "[[app]]\nid = \"1\"\nkey = \"stays\"\nsecret = \"s1\"\n\n[[app]]\nid = \"3\"\nkey = \"new\"\nsecret = \"s3\"\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server.wait_for_log("apps reloaded").await;
    // The removed app's connection is closed with 4003, new ones are refused (4001)…
    assert_eq!(common::close_code(&goes.closed().await), 4003);
    let mut ws = Client::open(&server.ws_url("goes")).await;
    assert_eq!(
        common::close_code(&common::wait_closed(&mut ws).await),
        4001
    );
    // …the new app works, and the one that stayed was never disturbed.
    Client::connect_url(&server.ws_url("new")).await;
    stays
        .send(serde_json::json!({"event": "pusher:ping"}))
        .await;
    assert_eq!(stays.recv().await["event"], "pusher:pong");
}

/// Runs `cmd` until it exits (killing it after `common::WAIT`); its exit code (None if it
/// had to be killed) and what it wrote to stderr.
fn exit_of(mut cmd: Command) -> (Option<i32>, String) {
    use std::io::Read;
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + common::WAIT;
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (code, err)
}

#[test]
fn durations_too_long_are_refused_at_start() {
    for (setting, key) in [
        ("cache_ttl = 9223372036854775807", "cache_ttl"),
        ("cache_ttl = 604801", "cache_ttl"),
        (
            "authorized_connections_timeout = 86401",
            "authorized_connections_timeout",
        ),
    ] {
        let apps = apps_file(&format!(
            "[[app]]\nid = \"1001\"\nkey = \"k\"\nsecret = \"a-real-secret\"\n{setting}\n"
        ));
        let mut cmd = Command::new(BIN);
        cmd.args(["--port", "0", "--metrics-port", "0", "--workers", "1"])
            .arg("--apps-file")
            .arg(&apps);
        let (code, err) = exit_of(cmd);
        assert_eq!(code, Some(2), "{setting}: {err}");
        assert!(
            err.contains(&format!("app \"1001\": {key}")),
            "{setting}: {err}"
        );
    }
    for args in [
        ["--shutdown-timeout", "3601"],
        ["--shutdown-timeout", "18446744073709551615"],
        ["--http-idle-timeout", "86401"],
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(["--port", "0", "--metrics-port", "0", "--workers", "1"])
            .args(args);
        let (code, err) = exit_of(cmd);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains(args[0]), "{args:?}: {err}");
    }
}

/// Apps that could not work (clashing ids or keys, missing credentials, an `https://`
/// webhook, zero rates) and configuration values of the wrong type stop the server at
/// start, saying which.
#[test]
fn apps_and_values_that_cannot_work_are_refused_at_start() {
    let app = |id: &str, key: &str, more: &str| {
        format!("[[app]]\nid = \"{id}\"\nkey = \"{key}\"\nsecret = \"a-real-secret\"\n{more}\n")
    };
    for (toml, expect) in [
        (
            app("1", "k", "") + &app("2", "k", ""),
            "duplicate app key \"k\"",
        ),
        (
            app("1", "k", "") + &app("1", "j", ""),
            "duplicate app id \"1\"",
        ),
        (app("", "k", ""), "has an empty id, key or secret"),
        (app("a/b", "k", ""), "id and key may not contain '/'"),
        (
            app(
                "1",
                "k",
                "[[app.webhook]]\nurl = \"https://example.com/hook\"",
            ),
            "must start with http://",
        ),
        (app("1", "k", "client_event_rate = 0"), "must be positive"),
        (
            app("1", "k", "max_presence_members = 0"),
            "must be positive",
        ),
    ] {
        let apps = apps_file(&toml);
        let mut cmd = Command::new(BIN);
        cmd.args(["--port", "0", "--metrics-port", "0", "--workers", "1"])
            .arg("--apps-file")
            .arg(&apps);
        let (code, err) = exit_of(cmd);
        assert_eq!(code, Some(2), "{toml}: {err}");
        assert!(err.contains(expect), "{toml}: want {expect:?} in {err}");
    }
    for (toml, key, expect) in [
        (
            "workers = { n = 1 }\n",
            "workers",
            "expected a string, number or boolean",
        ),
        (
            "redis_cluster = \"yes\"\n",
            "redis_cluster",
            "expected true or false",
        ),
    ] {
        let file = config_file(toml);
        let (code, err) = exit_of({
            let mut cmd = Command::new(BIN);
            cmd.arg("--config").arg(&file);
            cmd
        });
        assert_eq!(code, Some(2), "{toml}: {err}");
        assert!(err.contains(&format!("{key}: {expect}")), "{toml}: {err}");
    }
}

/// Malformed flag values stop the server at start with status 2 and say what was expected.
#[test]
fn malformed_flag_values_are_refused_saying_what_is_expected() {
    for (args, expect) in [
        (&["--cpus", "3-1"][..], "expected e.g. 0,2-3"),
        (&["--cpus", "x"], "expected e.g. 0,2-3"),
        (&["--cpus", ","], "empty CPU list"),
        (
            &["--redis-url", "http://127.0.0.1:6379"],
            "expected redis://",
        ),
        (&["--redis-prefix", "a{b}"], "without spaces or braces"),
        (&["--redis-prefix", ""], "1 to 64 printable characters"),
        (&["--node-id", "node 1"], "1 to 64 characters of A-Z"),
        (&["--echo-path", "echo"], "is not an absolute URL path"),
        (
            &["--redis-url", "redis://127.0.0.1:1,redis://127.0.0.1:2"],
            "add --redis-cluster",
        ),
        (
            &["--echo-path", "/echo", "--max-outbound-buffer", "4096"],
            "must be at least --max-message-size",
        ),
        (&["--workers", "100000"], "exceeds the maximum"),
    ] {
        let mut cmd = Command::new(BIN);
        cmd.args(["--port", "0", "--metrics-port", "0"]).args(args);
        let (code, err) = exit_of(cmd);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(
            err.contains(args[0]) && err.contains(expect),
            "{args:?}: {err}"
        );
    }
    // A metrics port already taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let mut cmd = Command::new(BIN);
    cmd.args(["--port", "0", "--metrics-port", &port]);
    let (code, err) = exit_of(cmd);
    assert_ne!(code, Some(0), "{err}");
    assert!(err.contains("cannot listen for metrics"), "{err}");
}

#[test]
fn toml_errors_name_the_line_but_never_print_the_secret() {
    const SECRET: &str = "9f86d081884c7d65";
    for (secret, line) in [(SECRET, 4), ("9086081884", 4)] {
        let text = format!("[[app]]\nid = \"1001\"\nkey = \"k\"\nsecret = {secret}\n");
        // As --apps-file, and as the [[app]] tables of --config.
        let apps = apps_file(&text);
        let config = config_file(&text);
        for (flag, file) in [("--apps-file", &apps), ("--config", &config)] {
            let mut cmd = Command::new(BIN);
            cmd.args(["--port", "0", "--metrics-port", "0", "--workers", "1"])
                .arg(flag)
                .arg(file);
            let (code, err) = exit_of(cmd);
            assert_eq!(code, Some(2), "{flag}: {err}");
            assert!(err.contains(&file.display().to_string()), "{flag}: {err}");
            assert!(
                err.contains(&format!("line {line}, column 10")),
                "{flag}: {err}"
            );
            assert!(!err.contains(secret), "{flag} printed the secret: {err}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_apps_file_does_not_log_the_secret() {
    let apps = apps_file("[[app]]\nid = \"1\"\nkey = \"k\"\nsecret = \"s1\"\n");
    let server = Server::start("auto", &["--apps-file", apps.to_str().unwrap()]);
    std::fs::write(
        &apps,
        "[[app]]\nid = \"1\"\nkey = \"k\"\nsecret = 9f86d081884c7d65\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    let line = server.wait_for_log("apps not reloaded").await;
    assert!(line.contains("line 4, column 10"), "{line}");
    let log = server.log().join("\n");
    assert!(!log.contains("9f86d081884c7d65"), "{log}");
}
