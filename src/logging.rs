//! Log output through `tracing`: text or JSON lines on stderr.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. `level` is a level (`info`) or filter directives
/// (`ringcast=debug,hyper=warn`).
pub fn init(format: LogFormat, level: &str) -> Result<(), String> {
    validate_directives(level).map_err(|e| format!("invalid --log-level {level:?}: {e}"))?;
    let filter =
        EnvFilter::try_new(level).map_err(|e| format!("invalid --log-level {level:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_thread_names(true);
    let res = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    res.map_err(|e| e.to_string())
}

/// `EnvFilter` accepts almost anything; refuse what is clearly not a level or
/// `target=level` list, so a typo is an error rather than silence.
fn validate_directives(s: &str) -> Result<(), String> {
    let level_ok = |l: &str| l.parse::<tracing_subscriber::filter::LevelFilter>().is_ok();
    let target_ok = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | ':' | '-'))
    };
    for d in s.split(',').map(str::trim) {
        let ok = !d.is_empty()
            && match d.rsplit_once('=') {
                Some((target, level)) => target_ok(target) && level_ok(level),
                None => level_ok(d) || target_ok(d),
            };
        if !ok {
            return Err(format!("{d:?} is neither a level nor target=level"));
        }
    }
    Ok(())
}

/// Routes panics through the log, with the thread and location, so a panic in a worker is
/// never silent.
pub fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic".into());
        tracing::error!(thread = thread.name().unwrap_or("?"), %location, "panic: {payload}");
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directives() {
        assert!(validate_directives("info").is_ok());
        assert!(validate_directives("ringcast=debug,hyper=warn").is_ok());
        assert!(validate_directives("not a level!!").is_err());
        assert!(validate_directives("x=loud").is_err());
        assert!(validate_directives("").is_err());
    }
}
