//! Keeping connections honest, checked once a second per connection: a client silent for
//! the activity timeout is pinged and closed with 4201 if it stays silent for the pong
//! timeout; a message that does not arrive whole within the message timeout closes the
//! connection with 1008; a connection of a disabled app is closed with 4003; one that has not signed in
//! or joined a private channel within the app's authorized-connections timeout with 4009;
//! and a closing handshake that the client never finishes is cut short.

use super::{ConnState, Effect};
use crate::app::App;
use crate::clock::{Tick, TICKS_PER_SEC};
use crate::protocol::{codes, messages};
use crate::ws::{codec, OpCode};

/// The timeouts, in ticks.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Client silence before a ping (`--activity-timeout`).
    pub activity: Tick,
    /// Silence after a ping before closing with 4201 (`--pong-timeout`).
    pub pong: Tick,
    /// Longest a closing handshake may take.
    pub closing: Tick,
    /// Longest a client's message may take to arrive whole (`--message-timeout`).
    pub message: Tick,
}

/// Where the connection's transport is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Open.
    Open,
    /// A close frame was queued or sent at `since`.
    Closing {
        /// When closing started.
        since: Tick,
    },
}

/// What the connection speaks.
#[derive(Debug, Clone, Copy)]
pub enum Speaks<'a> {
    /// Pusher, for this app.
    Pusher(&'a App),
    /// Plain WebSocket (the echo endpoint, or a Pusher connection refused at the upgrade).
    WebSocket,
}

/// The once-a-second check of one connection.
pub fn on_tick(
    conn: &mut ConnState,
    speaks: Speaks<'_>,
    transport: Transport,
    timeouts: &Timeouts,
    shutting_down: bool,
    now: Tick,
) -> Option<Effect> {
    match transport {
        Transport::Closing { since } => {
            (now.wrapping_sub(since) >= timeouts.closing && !shutting_down).then_some(Effect::Kill)
        }
        Transport::Open => {
            if let Speaks::Pusher(app) = speaks {
                if !app.enabled {
                    // The app was disabled or removed by a reload.
                    return Some(Effect::Close {
                        code: codes::APP_DISABLED,
                        reason: "Application is disabled".into(),
                    });
                }
                let secs = app.authorized_connections_timeout;
                if secs > 0
                    && !conn.authorized
                    && now.wrapping_sub(conn.opened) >= (secs as Tick).saturating_mul(TICKS_PER_SEC)
                {
                    return Some(Effect::Close {
                        code: codes::CONNECTION_UNAUTHORIZED,
                        reason: format!(
                            "Connection not authorized within {secs} s: sign in or subscribe to a private or presence channel"
                        ),
                    });
                }
            }
            if let Some(since) = conn.partial_since() {
                if now.wrapping_sub(since) >= timeouts.message {
                    return Some(Effect::Close {
                        code: codec::close_code::POLICY_VIOLATION,
                        reason: format!(
                            "Message not received whole within {} s",
                            timeouts.message / TICKS_PER_SEC
                        ),
                    });
                }
            }
            match conn.ping_sent() {
                None if now.wrapping_sub(conn.last_seen()) >= timeouts.activity => {
                    conn.set_ping_sent(now);
                    Some(Effect::Send(match speaks {
                        Speaks::Pusher(_) => messages::ping(),
                        Speaks::WebSocket => codec::encode(OpCode::Ping, b""),
                    }))
                }
                Some(at) if now.wrapping_sub(at) >= timeouts.pong => Some(Effect::Close {
                    code: codes::PONG_NOT_RECEIVED,
                    reason: "Pong reply not received".into(),
                }),
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        activity: 120 * TICKS_PER_SEC,
        pong: 30 * TICKS_PER_SEC,
        closing: 5 * TICKS_PER_SEC,
        message: 30 * TICKS_PER_SEC,
    };

    fn tick(conn: &mut ConnState, app: &App, now: Tick) -> Option<Effect> {
        on_tick(conn, Speaks::Pusher(app), Transport::Open, &T, false, now)
    }

    #[test]
    fn a_silent_client_is_pinged_then_closed_with_4201() {
        let app = App::new("1", "k", "s");
        let mut conn = ConnState::new(0);
        assert_eq!(tick(&mut conn, &app, T.activity - 1), None);
        assert_eq!(
            tick(&mut conn, &app, T.activity),
            Some(Effect::Send(messages::ping()))
        );
        assert_eq!(tick(&mut conn, &app, T.activity + 1), None, "pinged once");
        let closed = tick(&mut conn, &app, T.activity + T.pong);
        assert!(
            matches!(closed, Some(Effect::Close { code: 4201, .. })),
            "{closed:?}"
        );
    }

    #[test]
    fn a_message_not_whole_within_the_message_timeout_closes_with_1008() {
        let app = App::new("1", "k", "s");
        let mut conn = ConnState::new(0);
        // Part of a message at 10; more of it later does not restart the clock.
        conn.receiving(true, 10);
        conn.receiving(true, 20);
        assert_eq!(tick(&mut conn, &app, 10 + T.message - 1), None);
        let closed = tick(&mut conn, &app, 10 + T.message);
        assert!(
            matches!(closed, Some(Effect::Close { code: 1008, .. })),
            "{closed:?}"
        );
        // Whole in time: the clock stops, and the next message starts its own.
        let mut conn = ConnState::new(0);
        conn.receiving(true, 10);
        conn.receiving(false, 15);
        conn.receiving(true, 100);
        assert_eq!(tick(&mut conn, &app, 10 + T.message), None);
        assert!(tick(&mut conn, &app, 100 + T.message).is_some());
    }

    #[test]
    fn anything_from_the_client_counts_as_a_pong() {
        let app = App::new("1", "k", "s");
        let mut conn = ConnState::new(0);
        tick(&mut conn, &app, T.activity);
        conn.touch(T.activity + 5);
        assert_eq!(tick(&mut conn, &app, T.activity + T.pong), None);
    }

    #[test]
    fn echo_connections_get_websocket_pings() {
        let mut conn = ConnState::new(0);
        let ping = on_tick(
            &mut conn,
            Speaks::WebSocket,
            Transport::Open,
            &T,
            false,
            T.activity,
        );
        assert_eq!(ping, Some(Effect::Send(codec::encode(OpCode::Ping, b""))));
    }

    #[test]
    fn a_disabled_app_closes_its_connections_with_4003() {
        let mut app = App::new("1", "k", "s");
        app.enabled = false;
        let r = tick(&mut ConnState::new(0), &app, 1);
        assert!(matches!(r, Some(Effect::Close { code: 4003, .. })), "{r:?}");
    }

    #[test]
    fn unauthorized_connections_close_with_4009_after_the_app_timeout() {
        let mut app = App::new("1", "k", "s");
        let mut conn = ConnState::new(0);
        // An active client (no pings due), never authorized.
        let at = |conn: &mut ConnState, app: &App, secs: Tick| {
            conn.touch(secs * TICKS_PER_SEC);
            tick(conn, app, secs * TICKS_PER_SEC)
        };
        assert_eq!(at(&mut conn, &app, 1000), None, "off by default");
        app.authorized_connections_timeout = 30;
        assert_eq!(at(&mut conn, &app, 29), None);
        let r = at(&mut conn, &app, 30);
        assert!(matches!(r, Some(Effect::Close { code: 4009, .. })), "{r:?}");
        conn.authorized = true;
        assert_eq!(at(&mut conn, &app, 30), None);
    }

    #[test]
    fn a_closing_handshake_is_cut_short_unless_draining() {
        let mut conn = ConnState::new(0);
        let closing = Transport::Closing { since: 10 };
        let at = |now, draining| {
            on_tick(
                &mut ConnState::new(0),
                Speaks::WebSocket,
                closing,
                &T,
                draining,
                now,
            )
        };
        assert_eq!(at(10 + T.closing - 1, false), None);
        assert_eq!(at(10 + T.closing, false), Some(Effect::Kill));
        assert_eq!(
            at(10 + T.closing, true),
            None,
            "the drain has its own deadline"
        );
        assert_eq!(
            on_tick(
                &mut conn,
                Speaks::WebSocket,
                closing,
                &T,
                false,
                10 + T.activity
            ),
            Some(Effect::Kill),
            "no ping while closing"
        );
    }
}
