//! What the harness knows about the machine and, given its pid, the server process.

use serde::{Deserialize, Serialize};

/// The machine a run happened on.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct Machine {
    pub hostname: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
    pub memory_gib: f64,
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Describes this machine from /proc.
pub fn describe() -> Machine {
    let cpuinfo = read("/proc/cpuinfo");
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .and_then(|r| r.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_default();
    let mem_kib: f64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Machine {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        cpu_model,
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_gib: (mem_kib / 1024.0 / 1024.0 * 10.0).round() / 10.0,
    }
}

/// A sample of a process.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct ProcSample {
    /// Resident set, KiB.
    pub rss_kib: u64,
    /// User + system CPU time, nanoseconds.
    pub cpu_ns: u64,
    /// User CPU time alone, nanoseconds (the rest of `cpu_ns` is the kernel's, on the
    /// process's behalf: on loopback that is most of a delivery).
    #[serde(default)]
    pub user_ns: u64,
}

/// Samples process `pid` from /proc.
pub fn sample(pid: u32) -> Option<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces), 1-based: utime is 14, stime 15.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let user: u64 = fields.get(11)?.parse().ok()?;
    let system: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(ProcSample {
        rss_kib,
        cpu_ns: (user + system) * 1_000_000_000 / hz,
        user_ns: user * 1_000_000_000 / hz,
    })
}

/// Samples processes `pids` (the nodes of a cluster) and sums their RSS and CPU time; `None`
/// when there are none or one cannot be read.
pub fn sample_sum(pids: &[u32]) -> Option<ProcSample> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().try_fold(ProcSample::default(), |sum, &pid| {
        let s = sample(pid)?;
        Some(ProcSample {
            rss_kib: sum.rss_kib + s.rss_kib,
            cpu_ns: sum.cpu_ns + s.cpu_ns,
            user_ns: sum.user_ns + s.user_ns,
        })
    })
}

/// Kernel TCP socket figures from /proc/net/sockstat.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, Default)]
pub struct Sockstat {
    /// TCP sockets in use (both ends of loopback connections count).
    pub tcp_inuse: u64,
    /// Memory in TCP socket buffers, bytes.
    pub tcp_mem_bytes: u64,
}

/// Reads /proc/net/sockstat.
pub fn sockstat() -> Option<Sockstat> {
    let text = std::fs::read_to_string("/proc/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(Sockstat {
        tcp_inuse: field("inuse")?,
        tcp_mem_bytes: field("mem")? * page,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        let me = std::process::id();
        let twice = sample_sum(&[me, me]).unwrap();
        assert!(twice.rss_kib >= s.rss_kib * 3 / 2, "{twice:?} vs {s:?}");
        assert!(sample_sum(&[]).is_none());
        assert!(sample_sum(&[me, u32::MAX]).is_none());
        assert!(sockstat().is_some());
        assert!(describe().cpus >= 1);
    }
}
