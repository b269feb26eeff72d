//! Deciding, once and before any worker starts, whether io_uring is usable here.
//!
//! Setting up a ring is not enough: container seccomp profiles may allow `io_uring_setup`
//! but refuse `io_uring_enter`, so the probe also completes one NOP round trip.

use io_uring::{opcode, IoUring, Probe};

/// Oldest kernel with multishot receive into provided-buffer rings, which keep idle
/// connections free of read buffers.
const MIN_KERNEL: (u32, u32) = (6, 0);

/// Checks that io_uring works for this process; the error says why not.
pub fn probe_uring() -> Result<(), String> {
    if let Ok(v) = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled") {
        if v.trim() == "2" {
            return Err("io_uring is disabled by sysctl kernel.io_uring_disabled=2".into());
        }
    }
    if let Some(release) = kernel_release() {
        if let Some(v) = parse_kernel_version(&release) {
            if v < MIN_KERNEL {
                return Err(format!(
                    "kernel {release} is older than {}.{}, which multishot receive needs",
                    MIN_KERNEL.0, MIN_KERNEL.1
                ));
            }
        }
    }
    let mut ring = IoUring::new(8).map_err(|e| format!("io_uring_setup failed: {e}"))?;
    let mut probe = Probe::new();
    ring.submitter()
        .register_probe(&mut probe)
        .map_err(|e| format!("io_uring opcode probe failed: {e}"))?;
    for (code, name) in [
        (opcode::Accept::CODE, "accept"),
        (opcode::Recv::CODE, "recv"),
        (opcode::Send::CODE, "send"),
        (opcode::SendMsg::CODE, "sendmsg"),
        (opcode::Shutdown::CODE, "shutdown"),
        (opcode::AsyncCancel::CODE, "async_cancel"),
        (opcode::Timeout::CODE, "timeout"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("io_uring lacks the {name} operation"));
        }
    }
    let nop = opcode::Nop::new().build().user_data(0x5EED);
    // SAFETY: a NOP references no memory.
    unsafe {
        ring.submission()
            .push(&nop)
            .map_err(|_| "io_uring submission queue is full".to_string())?;
    }
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter failed: {e}"))?;
    let cqe = ring
        .completion()
        .next()
        .ok_or("io_uring NOP did not complete")?;
    if cqe.user_data() != 0x5EED || cqe.result() < 0 {
        return Err(format!("io_uring NOP failed with {}", cqe.result()));
    }
    Ok(())
}

fn kernel_release() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .ok()
        .map(|s| s.trim().to_string())
}

fn parse_kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_kernel_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_kernel_version("5.15.0-1051-azure"), Some((5, 15)));
        assert_eq!(parse_kernel_version("garbage"), None);
    }
}
