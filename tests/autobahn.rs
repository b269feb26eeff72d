//! The Autobahn|Testsuite (run by kosoku) against `--echo-path`, which runs the same framing
//! code as Pusher connections — on both IO backends. Every case outside permessage-deflate
//! (12.*, 13.*, not negotiated by ringcast) must be OK, NON-STRICT or INFORMATIONAL.

mod common;

use std::path::Path;
use std::process::Command;

use common::{deps, Server};
use serde_json::Value;

on_both_backends!(autobahn_cases_pass_on_the_echo_endpoint);

async fn autobahn_cases_pass_on_the_echo_endpoint(backend: &'static str) {
    let Some(python_path) = deps::python(&["kosoku"], &["kosoku==0.1.0"]) else {
        return;
    };
    // Case 9.* echoes messages up to 16 MiB.
    let server = Server::start(
        backend,
        &[
            "--echo-path",
            "/echo",
            "--max-message-size",
            "16777216",
            "--max-outbound-buffer",
            "67108864",
        ],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/autobahn/run.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script).arg(format!("ws://{}/echo", server.addr));
    if let Some(p) = python_path {
        cmd.env("PYTHONPATH", p);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("run kosoku");
    assert!(
        out.status.success(),
        "kosoku failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: serde_json::Map<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(results.len() >= 290, "only {} cases ran", results.len());
    let mut bad = Vec::new();
    for (case, r) in &results {
        let behavior = r["behavior"].as_str().unwrap();
        let close = r["behavior_close"].as_str().unwrap();
        if !matches!(behavior, "OK" | "NON-STRICT" | "INFORMATIONAL")
            || !matches!(close, "OK" | "INFORMATIONAL")
        {
            bad.push(format!("{case}: {r}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} Autobahn cases failed on {backend}:\n{}",
        bad.len(),
        bad.join("\n")
    );
    let strict = results.values().filter(|r| r["behavior"] == "OK").count();
    eprintln!(
        "Autobahn on {backend}: {} cases, {strict} OK",
        results.len()
    );
}
