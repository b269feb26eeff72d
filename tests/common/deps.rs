//! Third-party test clients (Python and Node packages), found or installed on demand into
//! `target/test-deps`, so `cargo test` works on a fresh machine with Python 3 and Node.
//!
//! When a tool is missing the test says so loudly and skips — unless
//! `RINGCAST_REQUIRE_ALL_TESTS=1` (set by `.ci/run`), where it fails instead.

use std::path::{Path, PathBuf};
use std::process::Command;

fn deps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target")
        .join("test-deps")
}

/// Skips (loudly) or fails when a dependency cannot be had.
pub fn unavailable(what: &str) -> Option<std::convert::Infallible> {
    if std::env::var_os("RINGCAST_REQUIRE_ALL_TESTS").is_some() {
        panic!("required test dependency unavailable: {what}");
    }
    eprintln!(
        "\n*** SKIPPED: {what} ***\n*** (run .ci/run, or install it, to run this test) ***\n"
    );
    None
}

/// Holds an exclusive lock on a file for the duration of an install.
struct Lock(std::fs::File);

impl Lock {
    fn take(path: &Path) -> Lock {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let f = std::fs::File::create(path).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own.
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        Lock(f)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: as above.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A Python 3 that can import `modules`: the system one if it can, otherwise with the
/// `packages` pip-installed into `target/test-deps/python`. Returns the PYTHONPATH to use.
pub fn python(modules: &[&str], packages: &[&str]) -> Option<Option<PathBuf>> {
    let import = format!("import {}", modules.join(", "));
    let can_import = |path: Option<&Path>| {
        let mut c = Command::new("python3");
        c.args(["-c", &import]);
        if let Some(p) = path {
            c.env("PYTHONPATH", p);
        }
        c.output().map(|o| o.status.success()).unwrap_or(false)
    };
    if Command::new("python3").arg("--version").output().is_err() {
        unavailable("python3 is not installed")?;
    }
    if can_import(None) {
        return Some(None);
    }
    let dir = deps_dir().join("python");
    let _lock = Lock::take(&deps_dir().join("python.lock"));
    if !can_import(Some(&dir)) {
        let ok = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--target",
            ])
            .arg(&dir)
            .args(packages)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok || !can_import(Some(&dir)) {
            unavailable(&format!("pip could not install {packages:?}"))?;
        }
    }
    Some(Some(dir))
}

/// The packages of `tests/clients/package.json`.
const PACKAGES: &[&str] = &["pusher-js", "playwright-core"];

/// A `node_modules` holding the packages of `tests/clients/package.json`, installed with
/// npm into `target/test-deps/node` unless `tests/clients/node_modules` already has them.
/// Returns the directory to put in NODE_PATH.
pub fn node_modules() -> Option<PathBuf> {
    if Command::new("node").arg("--version").output().is_err() {
        unavailable("node is not installed")?;
    }
    let clients = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("clients");
    let complete = |m: &Path| PACKAGES.iter().all(|p| m.join(p).exists());
    let local = clients.join("node_modules");
    if complete(&local) {
        return Some(local);
    }
    let dir = deps_dir().join("node");
    let _lock = Lock::take(&deps_dir().join("node.lock"));
    let modules = dir.join("node_modules");
    if !complete(&modules) {
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["package.json", "package-lock.json"] {
            if clients.join(f).exists() {
                std::fs::copy(clients.join(f), dir.join(f)).unwrap();
            }
        }
        let ok = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--silent"])
            .current_dir(&dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok || !complete(&modules) {
            unavailable("npm could not install tests/clients/package.json")?;
        }
    }
    Some(modules)
}

/// Debian's Chromium, for the console's browser tests (`CHROMIUM` overrides the path;
/// `.ci/run` installs the `chromium` package).
pub fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if path.is_file() {
        return Some(path);
    }
    unavailable(&format!(
        "Chromium at {} (apt-get install chromium) for the console's browser tests",
        path.display()
    ))?;
    None
}

/// Prometheus's `promtool` (Debian package `prometheus`; `.ci/run` installs it).
pub fn promtool() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("promtool"))
            .find(|p| p.is_file())
    });
    match found {
        Some(p) => Some(p),
        None => {
            unavailable("promtool (apt-get install prometheus) to check the metrics exposition")?;
            None
        }
    }
}
