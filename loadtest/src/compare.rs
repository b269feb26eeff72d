//! `compare`: several runs side by side — every figure in one table, and one latency
//! percentile plot with a line per run.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::cli::CompareArgs;
use crate::numfmt::fmt_num;
use crate::report::{describe_target, Summary, Verdict};

fn load(path: &Path) -> anyhow::Result<Summary> {
    let file: PathBuf = if path.is_dir() {
        path.join("summary.json")
    } else {
        path.to_path_buf()
    };
    let text = std::fs::read_to_string(&file)
        .with_context(|| format!("cannot read {}", file.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not a ringcast-loadtest summary", file.display()))
}

/// The table, as Markdown.
pub fn table(runs: &[Summary]) -> String {
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for r in runs {
        names.extend(r.figures.keys().map(String::as_str));
    }
    let mut t = String::new();
    let _ = write!(t, "| figure |");
    for r in runs {
        let _ = write!(t, " {} |", r.label.replace('|', "/"));
    }
    let _ = writeln!(t);
    let _ = writeln!(t, "|---|{}", "---:|".repeat(runs.len()));
    let mut row = |name: &str, cell: &dyn Fn(&Summary) -> String| {
        let _ = write!(t, "| {name} |");
        for r in runs {
            let _ = write!(t, " {} |", cell(r));
        }
        let _ = writeln!(t);
    };
    row("scenario", &|r| r.scenario.clone());
    row("target", &|r| describe_target(&r.target).replace('|', "/"));
    for name in names {
        row(name, &|r| {
            r.figures.get(name).map_or("–".into(), |v| fmt_num(*v))
        });
    }
    row("harness threads", &|r| r.harness.threads.to_string());
    row("harness saturated", &|r| r.harness.saturated.to_string());
    // CPU and RSS are summed over the server processes given (one per cluster node).
    row("server processes", &|r| {
        r.server
            .as_ref()
            .map_or("–".into(), |s| s.pids.len().max(1).to_string())
    });
    row("server CPU cores", &|r| {
        r.server
            .as_ref()
            .map_or("–".into(), |s| format!("{:.3}", s.cpu_cores))
    });
    row("server CPU µs per message", &|r| {
        r.server
            .as_ref()
            .and_then(|s| s.cpu_us_per_message)
            .map_or("–".into(), |v| format!("{v:.3}"))
    });
    row("server user CPU µs per message", &|r| {
        r.server
            .as_ref()
            .and_then(|s| s.user_us_per_message)
            .map_or("–".into(), |v| format!("{v:.3}"))
    });
    row("server system CPU µs per message", &|r| {
        r.server
            .as_ref()
            .and_then(|s| s.system_us_per_message)
            .map_or("–".into(), |v| format!("{v:.3}"))
    });
    row("errors", &|r| r.errors.len().to_string());
    row("machine", &|r| {
        format!("{} × {}", r.machine.cpus, r.machine.cpu_model)
    });
    t
}

pub fn run(args: CompareArgs) -> anyhow::Result<Verdict> {
    let runs = args
        .runs
        .iter()
        .map(|p| load(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    print!("{}", table(&runs));
    std::fs::create_dir_all(&args.out)?;
    let series: Vec<(&str, &Vec<[f64; 2]>)> = runs
        .iter()
        .map(|r| (r.label.as_str(), &r.distribution))
        .collect();
    let svg = args.out.join("compare.svg");
    std::fs::write(&svg, crate::svg::percentile_plot(&series))?;
    eprintln!("latency plot: {}", svg.display());
    Ok(Verdict::Pass)
}
