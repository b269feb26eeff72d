//! The worker's once-a-second sweep: the liveness rules for each connection, the
//! subscription counts held back on busy channels, and the broker's housekeeping.

use std::sync::atomic::Ordering;

use super::{Worker, CLOSING_HANDSHAKE_TIMEOUT};
use crate::app::{ChannelKey, ChannelRef};
use crate::clock::{ticks, Tick};
use crate::protocol::channel;
use crate::pusher::liveness::{self, Speaks, Timeouts};
use crate::pusher::occupancy::Change;
use crate::pusher::Effect;

impl Worker {
    /// Checks every connection: pings idle clients, closes those that never answered with
    /// 4201, connections of disabled apps with 4003, unauthorized ones past their app's
    /// timeout with 4009, and drops connections stuck in the closing handshake.
    pub fn sweep(&self, now: Tick) {
        let config = self.config();
        let timeouts = Timeouts {
            activity: ticks(config.activity_timeout),
            pong: ticks(config.pong_timeout),
            closing: ticks(CLOSING_HANDSHAKE_TIMEOUT),
            message: ticks(config.message_timeout),
        };
        let shutting_down = self.is_shutting_down();
        let apps = self.shared.apps.load();
        let mut queued = 0;
        // Pushing, closing and killing never touch the connection table, so it stays
        // borrowed for the walk (no copy of it every second).
        self.each_conn(|conn| {
            queued += conn.queued_bytes() as u64;
            let speaks = match conn.app {
                Some(app) if conn.pusher => Speaks::Pusher(apps.get(app)),
                _ => Speaks::WebSocket,
            };
            let effect = liveness::on_tick(
                &mut conn.state.borrow_mut(),
                speaks,
                conn.transport(),
                &timeouts,
                shutting_down,
                now,
            );
            match effect {
                Some(Effect::Send(frame)) => {
                    conn.push(frame);
                }
                Some(Effect::Close { code, reason }) => conn.close(code, &reason),
                Some(Effect::Kill) => conn.kill(),
                Some(other) => debug_assert!(false, "liveness decided {other:?}"),
                None => {}
            }
        });
        self.stats
            .outbound_queue_bytes
            .store(queued, Ordering::Relaxed);
    }

    /// Housekeeping that is not per connection: subscription counts held back on busy
    /// channels, and (on worker 0) the broker's and the channel index's shrinking.
    pub fn sweep_shared(&self, now: Tick) {
        let due = self.counts.borrow_mut().due(now);
        for (app, name) in due {
            let Some(o) = self.shared.index.get(ChannelRef { app, name: &name }) else {
                continue;
            };
            let Ok(kind) = channel::parse(&name) else {
                continue;
            };
            self.count(
                ChannelKey { app, name },
                kind,
                Change::Due,
                o.subscription_count,
            );
        }
        if self.index == 0 {
            self.shared.broker.sweep();
            let rebuilt = self.shared.index.shrink();
            if rebuilt > 0 {
                tracing::info!(
                    apps = rebuilt,
                    "channel index rebuilt smaller after mass unsubscribes"
                );
            }
        }
    }
}
