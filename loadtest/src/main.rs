//! ringcast-loadtest: a load generator for any Pusher-protocol server (ringcast, Soketi,
//! Sockudo, Reverb, Pusher itself). It speaks only the public protocol and the signed HTTP
//! API.
//!
//! * `fanout` — N subscribers over C channels, events published at a fixed rate; latency
//!   from the *intended* publish time (corrected for coordinated omission, as wrk2 does),
//!   loss, duplicates and reordering per subscriber.
//! * `connect` — open N connections, measure handshakes, hold them idle, report server
//!   memory per connection.
//! * `ping` — `pusher:ping` → `pusher:pong` round trips at a fixed rate.
//! * `soak` — a long fan-out with connection churn, server RSS over time.
//! * `compare` — a table and a latency plot of several runs.
//! * `selftest` — the harness's own capacity, fed by a built-in source.
//!
//! The harness is thread-per-core (`--threads`): each thread runs its own current-thread
//! runtime, pinned, with its own histograms, merged at the end.

mod cli;
mod compare;
mod connect;
mod fanout;
mod http;
mod machine;
mod numfmt;
mod pinger;
mod pool;
mod progress;
mod pusher;
mod report;
mod selftest;
mod stats;
mod svg;
mod webhooks;
mod wsclient;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let result = match cli.command {
        cli::Command::Fanout(args) => fanout::run(args, None),
        cli::Command::Soak(args) => fanout::run(
            args.fanout,
            Some(fanout::Soak {
                churn_per_sec: args.churn,
                sample_every: args.sample_every,
                presence: args.presence,
                presence_channels: args.presence_channels,
                presence_hold: args.presence_hold,
                webhooks: args.webhook_listen,
                webhook_settle: args.webhook_settle,
            }),
        ),
        cli::Command::Connect(args) => connect::run(args),
        cli::Command::Ping(args) => pinger::run(args),
        cli::Command::Compare(args) => compare::run(args),
        cli::Command::Selftest(args) => selftest::run(args),
    };
    match result {
        Ok(report::Verdict::Pass) => std::process::ExitCode::SUCCESS,
        Ok(report::Verdict::Errors) => std::process::ExitCode::from(3),
        Err(e) => {
            eprintln!("ringcast-loadtest: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
