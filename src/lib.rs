//! ringcast — a thread-per-core WebSocket server that speaks the Pusher Channels protocol (v7).
//!
//! # The map
//!
//! ```text
//!             SO_REUSEPORT listeners, one per worker
//!                 │            │            │
//!   ┌─────────────▼──┐ ┌───────▼────────┐ ┌─▼──────────────┐
//!   │ worker 0 (CPU0)│ │ worker 1 (CPU1)│ │ worker N (CPUN)│   one pinned thread each, its own
//!   │ io_uring / epoll│ │                │ │                │   reactor (compio or tokio), owning
//!   │ conns, channels│ │                │ │                │   the connections it accepted
//!   └──────▲─────────┘ └──────▲─────────┘ └──────▲─────────┘
//!          │ inbox (crossbeam, bounded, + waker)  │
//!          └──────────── hub::Delivery ───────────┘
//! ```
//!
//! * [`server`] — start-up and shutdown: the main thread picks the backend, binds one
//!   SO_REUSEPORT listener per worker, starts the pinned workers, waits for signals, drains.
//! * [`worker`] — what one worker thread owns (its connections, its subscribers, its inbox)
//!   and what all workers share (config, the channel index, counters).
//! * [`runtime`] — picks the IO backend once (io_uring through compio, or epoll through a
//!   current-thread tokio runtime), binds the listeners, starts and pins the workers. The
//!   [`runtime::Connection`] trait is the owned-buffer IO seam; everything above it is generic
//!   and monomorphised per backend.
//! * [`http`] — every accepted socket starts in hyper (HTTP/1.1), after TLS if enabled: the
//!   events API, health and the WebSocket upgrade. After the `101` the socket leaves hyper for the native
//!   framing path.
//! * [`ws`] — a sans-IO RFC 6455 codec (decode from a byte buffer, encode into `Bytes`) and the
//!   opening handshake.
//! * [`protocol`] — Pusher messages: parsing client messages, encoding server messages, channel
//!   names, close codes.
//! * [`session`] — one task per WebSocket connection: reads frames, answers the protocol,
//!   writes its outbound queue in vectored writes, and closes with the right code.
//! * [`hub`] — channels and subscriptions. A worker-local registry holds each worker's
//!   subscribers; a shared lock-free index records which workers have subscribers of each
//!   channel, so an event is sent only to workers that need it. Presence members, signed-in
//!   users and cache channels' last events are shared between workers too.
//! * [`api`] — the signed Pusher HTTP API (`/apps/{id}/events`, `batch_events`, `channels`,
//!   `users`).
//! * [`webhooks`] — a dedicated sender thread that debounces, signs, batches and retries
//!   webhook requests, so no worker ever waits on an app's backend.
//! * [`metrics`] and [`metrics_server`] — per-worker counters and latency histograms, and
//!   the metrics listener's own thread (`/metrics`, `/metrics/latency.hgrm`, health).
//! * [`config`], [`config_file`], [`app`] — flags, environment and the TOML file; apps
//!   and their live counters (reloaded on SIGHUP). [`tls`] — certificates for `wss://`.
//!
//! # The path of one event
//!
//! `POST /apps/1/events` arrives on whichever worker accepted that HTTP connection. The
//! handler checks the signature, then for each channel encodes the server→client WebSocket
//! frame **once** into a `Bytes`. It looks up the channel in the shared index, delivers the
//! frame to its own subscribers directly, and sends it to every other worker with subscribers
//! through that worker's inbox. Each worker pushes the same `Bytes` onto each subscriber's
//! bounded outbound queue; the connection task writes whatever is queued in one vectored
//! write. No frame is copied or re-encoded per subscriber.

#![warn(missing_docs)]

pub mod api;
pub mod app;
pub mod clock;
pub mod config;
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
