//! ringcast — a thread-per-core WebSocket server that speaks the Pusher Channels protocol (v7).
//!
//! # The map
//!
//! ```text
//!             SO_REUSEPORT listeners, one per worker
//!                 │            │            │
//!   ┌─────────────▼──┐ ┌───────▼────────┐ ┌─▼──────────────┐
//!   │ worker 0 (CPU0)│ │ worker 1 (CPU1)│ │ worker N (CPUN)│   one pinned thread each, its own
//!   │ io_uring/epoll │ │                │ │                │   reactor (compio or tokio), owning
//!   │ conns, channels│ │                │ │                │   the connections it accepted
//!   └──────▲─────────┘ └──────▲─────────┘ └──────▲─────────┘
//!          │ inbox (crossbeam, bounded, + waker)  │
//!          └── deliveries, user messages, broker answers ──┘
//!                  hub::Broker: what the cluster shares (LocalBroker: this process)
//! ```
//!
//! Modules, from the top down; each uses only those below it (`tests/architecture.rs`
//! checks this):
//!
//! * [`server`] — start-up and shutdown: picks the backend, binds one SO_REUSEPORT listener
//!   per worker, starts the pinned workers, waits for signals, reloads, drains.
//! * [`http`] — every accepted socket starts in hyper (HTTP/1.1), after TLS if enabled: the
//!   API, health and the WebSocket upgrade (deciding what the connection speaks). After the
//!   `101` the socket leaves hyper for its session.
//! * [`api`] — the signed Pusher HTTP API (`events`, `batch_events`, `channels`, `users`,
//!   `terminate_connections`), every refusal an [`api::ApiError`].
//! * [`session`] — one task per WebSocket connection: reads and decodes frames, hands Pusher
//!   messages to its worker, writes the outbound queue in vectored writes, closes cleanly.
//! * [`worker`] — what one worker thread owns (its connections, its subscribers, its inbox)
//!   and what all share ([`worker::Shared`]). It carries out what the protocol rules decide,
//!   fans events out, and sweeps its connections once a second.
//! * [`hub`] — channels on this node: the lock-free [`hub::ChannelIndex`] (which workers have
//!   subscribers of a channel), each worker's [`hub::LocalChannels`], each connection's
//!   outbound queue ([`hub::Conn`]), the inboxes, and the [`hub::Broker`] seam for what the
//!   cluster shares (presence, users, counts, cache, other nodes' events).
//! * [`pusher`] — **the protocol rules, without IO**: inputs (a client message, a broker's
//!   answer, a tick) and state in, [`pusher::Effect`]s out. *Subscribing to a presence
//!   channel is decided in [`pusher::subscribe`]*; client events in [`pusher::client_event`];
//!   sign-in and watchlists in [`pusher::user`]; occupancy and counts in
//!   [`pusher::occupancy`]; pings and timeouts in [`pusher::liveness`].
//! * [`console`] — the live console on the metrics listener: live counts, channels,
//!   presence members, a user's connections, an event log recorded only while watched,
//!   webhook deliveries, and a publish form that goes through the node's own HTTP API.
//! * [`webhooks`] — a dedicated sender thread that debounces, signs, batches and retries
//!   webhook requests, so no worker ever waits on an app's backend.
//! * [`tls`] — certificates (reloaded on SIGHUP) and rustls driven over the IO seam.
//! * [`metrics`] — per-worker counters and latency histograms, their exposition, health, and
//!   the metrics listener's own thread.
//! * [`logging`], [`config`] (flags, environment, the TOML file), [`runtime`] (the two IO
//!   backends behind the owned-buffer [`runtime::Socket`] seam, and its contract), [`app`]
//!   (apps, their live counters, channel keys), [`protocol`] (the Pusher wire format and
//!   signatures), [`ws`] (a sans-IO RFC 6455 codec and the handshake), [`clock`].
//!
//! # The path of one event
//!
//! 1. [`api`]: `POST /apps/1/events` arrives on whichever worker accepted that HTTP
//!    connection; the signature and the event are checked, and the server→client frame is
//!    encoded **once** into a `Bytes` per channel.
//! 2. [`worker`] (`Worker::publish`): the frame goes to the broker for other nodes; the
//!    channel is looked up in the index, the worker's own subscribers are served at once,
//!    and each other worker with subscribers gets it through its inbox.
//! 3. [`hub`] (`LocalChannels::deliver`, on each subscriber's worker): the same `Bytes` is
//!    pushed onto each subscriber's bounded queue ([`hub::Conn::push`]), which wakes its task.
//! 4. [`session`]: the task takes what is queued and hands it to its writer in one vectored
//!    write.
//! 5. [`runtime`]: `sendmsg` (io_uring) or `writev` (epoll) of the shared bytes.
//!
//! No frame is copied or re-encoded per subscriber, and each step calls only downward.

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
pub mod console;
pub mod http;
pub mod hub;
pub mod logging;
pub mod metrics;
pub mod protocol;
pub mod pusher;
pub mod runtime;
pub mod server;
pub mod session;
pub mod tls;
pub mod webhooks;
pub mod worker;
pub mod ws;
