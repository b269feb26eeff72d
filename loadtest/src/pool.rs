//! Harness threads: each runs its own current-thread runtime, pinned to a CPU, so the
//! harness scales like the server it loads and one thread's work never migrates.

use std::future::Future;
use std::sync::Arc;
use std::thread::JoinHandle;

/// Starts `n` threads; thread `i` runs the future `make(i)` (built on that thread, so it
/// need not be `Send`) and is pinned to `cpus[i % cpus.len()]` when CPUs are given.
pub fn spawn<T, F, Fut>(
    n: usize,
    cpus: Option<&[usize]>,
    make: F,
) -> Vec<JoinHandle<anyhow::Result<T>>>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<T>> + 'static,
{
    let make = Arc::new(make);
    (0..n)
        .map(|i| {
            let make = make.clone();
            let cpu = cpus.filter(|c| !c.is_empty()).map(|c| c[i % c.len()]);
            std::thread::Builder::new()
                .name(format!("loadtest-{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        pin(cpu)?;
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&rt, make(i))
                })
                .expect("spawn a harness thread")
        })
        .collect()
}

/// Joins the threads, failing on the first error.
pub fn join<T>(handles: Vec<JoinHandle<anyhow::Result<T>>>) -> anyhow::Result<Vec<T>> {
    let mut out = Vec::with_capacity(handles.len());
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok(v)) => out.push(v),
            Ok(Err(e)) => {
                first_err.get_or_insert(e);
            }
            Err(_) => {
                first_err.get_or_insert(anyhow::anyhow!("a harness thread panicked"));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: a plain bitmask owned by this frame.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            anyhow::bail!(
                "cannot pin a harness thread to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(())
}

/// CPU time the calling thread has used, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// CPU time the whole process has used, in nanoseconds.
pub fn process_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The soft limit on open files, raised to the hard limit.
pub fn raise_fd_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a struct owned by this frame.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
    lim.rlim_cur
}
