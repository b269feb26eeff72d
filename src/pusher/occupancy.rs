//! Channel occupancy: the `channel_occupied` and `channel_vacated` webhooks, and subscription
//! counts (`pusher_internal:subscription_count` and its webhook), decided on the broker's
//! count of a channel's subscriptions over the whole cluster.
//!
//! Busy channels (more than [`THROTTLE_ABOVE`] subscriptions) get a count at most every
//! [`THROTTLE_EVERY`] from each worker; smaller ones at most [`SMALL_BURST`] every
//! [`SMALL_EVERY`], so a client looping subscribe/unsubscribe cannot turn each turn into a
//! frame for every subscriber. [`CountThrottle`] holds back the changes in between, and the
//! worker's once-a-second sweep sends the last one when the interval is over
//! ([`CountThrottle::due`], then [`Change::Due`]): the count subscribers end with is always
//! the true one.

use std::sync::Arc;
use std::time::Duration;

use super::{Ctx, Effect, Verdict};
use crate::app::{AppIdx, ChannelKey, ChannelRef};
use crate::clock::{ticks, Tick};
use crate::protocol::channel::ChannelKind;
use crate::protocol::messages;
use crate::protocol::webhook::{Detail, Kind};

/// Channels with more subscriptions than this get `subscription_count` at most every
/// [`THROTTLE_EVERY`].
pub const THROTTLE_ABOVE: u64 = 100;
/// See [`THROTTLE_ABOVE`].
pub const THROTTLE_EVERY: Duration = Duration::from_secs(5);
/// Channels with at most [`THROTTLE_ABOVE`] subscriptions get at most this many counts
/// every [`SMALL_EVERY`] (enough for people arriving and leaving; a loop is held back).
pub const SMALL_BURST: u16 = 10;
/// See [`SMALL_BURST`].
pub const SMALL_EVERY: Duration = Duration::from_secs(1);

/// What changed a channel's subscription count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// A subscription was added.
    Subscribed,
    /// A subscription was removed.
    Unsubscribed,
    /// Nothing: a throttled count is due ([`CountThrottle::due`]).
    Due,
}

/// The broker's count of a channel's subscriptions after a change.
#[derive(Debug, Clone, Copy)]
pub struct Counted<'a> {
    /// The channel.
    pub channel: &'a Arc<str>,
    /// Its kind.
    pub kind: ChannelKind,
    /// What changed.
    pub change: Change,
    /// Subscriptions over the cluster after it.
    pub count: u64,
    /// How the cluster decided an occupancy change.
    pub verdict: &'a Verdict,
}

/// The broker's count of a channel's subscriptions after a change.
pub fn on_count(
    ctx: &Ctx<'_>,
    throttle: &mut CountThrottle,
    c: Counted<'_>,
    out: &mut Vec<Effect>,
) {
    let Counted {
        channel,
        kind,
        change,
        count,
        verdict,
    } = c;
    // `#server-to-user-` channels are per-user delivery: no channel webhooks or counts.
    if kind == ChannelKind::ServerToUser {
        return;
    }
    match change {
        Change::Subscribed if count == 1 => {
            if let Some(e) = ctx.webhook(Kind::ChannelOccupied, channel) {
                out.extend(verdict.apply(e).map(Effect::Webhook));
            }
        }
        Change::Unsubscribed if count == 0 => {
            if let Some(e) = ctx.webhook(Kind::ChannelVacated, channel) {
                out.extend(verdict.apply(e).map(Effect::Webhook));
            }
            return;
        }
        _ => {}
    }
    // Counting is a per-app feature: without it neither the event nor the webhook is sent
    // (as on Pusher, where the webhook comes with enabling the feature). Presence channels
    // have member events instead.
    if !ctx.settings.subscription_count || kind.is_presence() {
        return;
    }
    if change != Change::Due
        && !throttle.allow(
            ChannelRef {
                app: ctx.app,
                name: channel,
            },
            count,
            ctx.now,
        )
    {
        return;
    }
    out.push(Effect::Publish {
        channel: channel.clone(),
        frame: messages::subscription_count(channel, count),
        except: None,
    });
    if let Some(mut e) = ctx.webhook(Kind::SubscriptionCount, channel) {
        e.detail = Detail::SubscriptionCount(count);
        out.push(Effect::Webhook(e));
    }
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    /// When the current interval began.
    at: Tick,
    /// Its length.
    every: Tick,
    /// Counts it may carry, and has carried.
    burst: u16,
    sent: u16,
    /// Whether a change since the last count is held back.
    pending: bool,
}

impl Sent {
    /// A new interval at `now` for a channel of `count` subscriptions, its first count sent.
    fn new(now: Tick, count: u64) -> Self {
        let (every, burst) = if count > THROTTLE_ABOVE {
            (THROTTLE_EVERY, 1)
        } else {
            (SMALL_EVERY, SMALL_BURST)
        };
        Self {
            at: now,
            every: ticks(every),
            burst,
            sent: 1,
            pending: false,
        }
    }
}

type FastState = foldhash::fast::RandomState;

/// When each channel with recent counts began its interval on this worker, how many it
/// sent in it, and whether a change since is waiting.
#[derive(Debug, Default)]
pub struct CountThrottle {
    sent: hashbrown::HashMap<ChannelKey, Sent, FastState>,
}

impl CountThrottle {
    /// Whether a count (`count` subscriptions) of `channel` may go out at `now`; if not,
    /// it is remembered as due.
    fn allow(&mut self, channel: ChannelRef<'_>, count: u64, now: Tick) -> bool {
        match self.sent.get_mut(&channel) {
            Some(s) if now.wrapping_sub(s.at) < s.every => {
                if s.sent < s.burst {
                    s.sent += 1;
                    s.pending = false;
                    true
                } else {
                    s.pending = true;
                    false
                }
            }
            Some(s) => {
                *s = Sent::new(now, count);
                true
            }
            None => {
                self.sent.insert(channel.to_key(), Sent::new(now, count));
                true
            }
        }
    }

    /// The channels whose held-back count is due at `now` (each then counts as sent now);
    /// forgets channels quiet for a whole interval.
    pub fn due(&mut self, now: Tick) -> Vec<(AppIdx, Arc<str>)> {
        let mut due = Vec::new();
        self.sent.retain(|key, s| {
            if now.wrapping_sub(s.at) < s.every {
                return true;
            }
            if s.pending {
                due.push((key.app, key.name.clone()));
                s.at = now;
                s.sent = s.burst;
                s.pending = false;
                return true;
            }
            false
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::clock::TICKS_PER_SEC;

    fn count(
        t: &Test,
        throttle: &mut CountThrottle,
        channel: &str,
        change: Change,
        n: u64,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let kind = crate::protocol::channel::parse(channel).unwrap();
        let channel = Arc::from(channel);
        let counted = Counted {
            channel: &channel,
            kind,
            change,
            count: n,
            verdict: &Verdict::Send,
        };
        on_count(&t.ctx(), throttle, counted, &mut out);
        out
    }

    fn kinds(out: &[Effect]) -> Vec<Kind> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Webhook(w) => Some(w.kind),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_first_subscription_anywhere_occupies_and_the_last_vacates() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&[Kind::ChannelOccupied, Kind::ChannelVacated]);
        let mut th = CountThrottle::default();
        assert_eq!(
            kinds(&count(&t, &mut th, "news", Change::Subscribed, 1)),
            [Kind::ChannelOccupied]
        );
        assert!(count(&t, &mut th, "news", Change::Subscribed, 2).is_empty());
        assert!(count(&t, &mut th, "news", Change::Unsubscribed, 1).is_empty());
        assert_eq!(
            kinds(&count(&t, &mut th, "news", Change::Unsubscribed, 0)),
            [Kind::ChannelVacated]
        );
    }

    #[test]
    fn the_cluster_verdict_quiets_a_return_and_holds_a_vacancy_for_confirmation() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&[Kind::ChannelOccupied, Kind::ChannelVacated]);
        let mut th = CountThrottle::default();
        let channel = Arc::from("news");
        let mut at = |change, count, verdict: &Verdict| {
            let mut out = Vec::new();
            let c = Counted {
                channel: &channel,
                kind: ChannelKind::Public,
                change,
                count,
                verdict,
            };
            on_count(&t.ctx(), &mut th, c, &mut out);
            out
        };
        assert!(at(Change::Subscribed, 1, &Verdict::Quiet).is_empty());
        let token = Verdict::Confirm(Arc::from("node-b#2\n9"));
        let out = at(Change::Unsubscribed, 0, &token);
        assert!(
            matches!(&out[..], [Effect::Webhook(e)] if e.kind == Kind::ChannelVacated && e.confirm.is_some())
        );
    }

    #[test]
    fn server_to_user_channels_have_no_occupancy_webhooks_or_counts() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&Kind::all());
        t.app.subscription_count = true;
        let mut th = CountThrottle::default();
        assert!(count(&t, &mut th, "#server-to-user-1", Change::Subscribed, 1).is_empty());
        assert!(count(&t, &mut th, "#server-to-user-1", Change::Unsubscribed, 0).is_empty());
    }

    #[test]
    fn subscription_counts_go_to_subscribers_and_the_webhook_when_enabled() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&[Kind::SubscriptionCount]);
        let mut th = CountThrottle::default();
        assert!(
            count(&t, &mut th, "news", Change::Subscribed, 2).is_empty(),
            "off unless the app enables subscription_count"
        );
        t.app.subscription_count = true;
        let out = count(&t, &mut th, "news", Change::Subscribed, 2);
        let [Effect::Publish { frame, .. }, Effect::Webhook(w)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(
            frame_json(frame)["event"],
            "pusher_internal:subscription_count"
        );
        assert_eq!(frame_data(frame)["subscription_count"], 2);
        assert_eq!(w.detail, Detail::SubscriptionCount(2));
        assert!(
            count(&t, &mut th, "presence-a", Change::Subscribed, 2).is_empty(),
            "presence channels have member events instead"
        );
        assert!(
            count(&t, &mut th, "news", Change::Unsubscribed, 0).is_empty(),
            "a vacated channel has no count to send"
        );
    }

    #[test]
    fn busy_channels_get_a_count_every_five_seconds_and_the_last_change_when_due() {
        let mut t = Test::new();
        t.app.subscription_count = true;
        let mut th = CountThrottle::default();
        let start = 100 * TICKS_PER_SEC;
        t.now = start;
        assert_eq!(count(&t, &mut th, "news", Change::Subscribed, 101).len(), 1);
        t.now = start + TICKS_PER_SEC;
        assert!(count(&t, &mut th, "news", Change::Subscribed, 102).is_empty());
        assert!(th.due(t.now).is_empty(), "not yet");
        let later = start + 5 * TICKS_PER_SEC;
        assert_eq!(th.due(later), vec![(0, Arc::from("news"))]);
        t.now = later;
        assert_eq!(count(&t, &mut th, "news", Change::Due, 102).len(), 1);
        assert!(
            th.due(later + 5 * TICKS_PER_SEC).is_empty(),
            "nothing changed since"
        );
        assert!(th.sent.is_empty(), "a quiet channel is forgotten");
        // Below the threshold changes go out as they come.
        for n in [100, 99, 98] {
            assert_eq!(count(&t, &mut th, "news", Change::Unsubscribed, n).len(), 1);
        }
    }

    #[test]
    fn a_subscribe_loop_on_a_small_channel_is_held_to_a_burst_a_second() {
        let mut t = Test::new();
        t.app.subscription_count = true;
        let mut th = CountThrottle::default();
        let start = 100 * TICKS_PER_SEC;
        t.now = start;
        let mut sent = 0;
        for i in 0..200u64 {
            let (change, n) = if i % 2 == 0 {
                (Change::Subscribed, 3)
            } else {
                (Change::Unsubscribed, 2)
            };
            if !count(&t, &mut th, "room", change, n).is_empty() {
                sent += 1;
            }
        }
        assert_eq!(sent, SMALL_BURST, "the rest is held back");
        assert!(th.due(start + TICKS_PER_SEC / 2).is_empty(), "not yet");
        // The sweep sends the last change once the second is over, then the interval is
        // spent: the next change waits for the one after.
        let later = start + TICKS_PER_SEC;
        assert_eq!(th.due(later), vec![(0, Arc::from("room"))]);
        t.now = later;
        let due = count(&t, &mut th, "room", Change::Due, 2);
        assert!(matches!(&due[0], Effect::Publish { frame, .. }
            if frame_data(frame)["subscription_count"] == 2));
        assert!(count(&t, &mut th, "room", Change::Subscribed, 3).is_empty());
        t.now = later + TICKS_PER_SEC;
        assert_eq!(count(&t, &mut th, "room", Change::Subscribed, 4).len(), 1);
    }
}
