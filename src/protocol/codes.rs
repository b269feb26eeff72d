//! Pusher close/error codes, named as Pusher names them.
//!
//! 4000–4099: do not reconnect unchanged; 4100–4199: reconnect after backing off;
//! 4200–4299: reconnect now; 4300–4399: other (pusher-js does not reconnect).

/// The app only accepts TLS connections.
pub const SSL_ONLY: u16 = 4000;
/// No app has this key.
pub const APP_NOT_FOUND: u16 = 4001;
/// The app is disabled.
pub const APP_DISABLED: u16 = 4003;
/// The app is over its connection quota.
pub const OVER_CONNECTION_QUOTA: u16 = 4004;
/// No such path.
pub const PATH_NOT_FOUND: u16 = 4005;
/// The `protocol` parameter is not a number.
pub const INVALID_VERSION_STRING: u16 = 4006;
/// The protocol version is not supported.
pub const UNSUPPORTED_PROTOCOL_VERSION: u16 = 4007;
/// No `protocol` parameter.
pub const NO_PROTOCOL_VERSION: u16 = 4008;
/// The connection is not authorized.
pub const CONNECTION_UNAUTHORIZED: u16 = 4009;
/// The server is over capacity, or the client does not read fast enough.
pub const OVER_CAPACITY: u16 = 4100;
/// Generic reconnect: used on graceful shutdown.
pub const GENERIC_RECONNECT: u16 = 4200;
/// No reply to the server's ping in time.
pub const PONG_NOT_RECEIVED: u16 = 4201;
/// Closed after inactivity.
pub const CLOSED_AFTER_INACTIVITY: u16 = 4202;
/// Client event rejected: over the rate limit.
pub const CLIENT_EVENT_RATE_LIMIT: u16 = 4301;
/// Watchlist over its limit.
pub const WATCHLIST_LIMIT_EXCEEDED: u16 = 4302;

/// Oldest protocol version accepted; pusher-js and the mobile SDKs send 7.
pub const MIN_PROTOCOL: u32 = 5;
/// Newest protocol version accepted.
pub const MAX_PROTOCOL: u32 = 7;
