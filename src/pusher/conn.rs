//! A connection's Pusher state, and the rules for its beginning and end: admission,
//! `connection_established`, and what a closed connection leaves behind.

use std::sync::Arc;

use crate::app::{AppIdx, Apps};
use crate::clock::{Tick, TICKS_PER_SEC};
use crate::metrics::Rejected;
use crate::protocol::channel;
use crate::protocol::{codes, messages, SocketId};

use super::Effect;

const NO_PING: Tick = Tick::MAX;

/// What the protocol remembers about one connection.
///
/// Kept small: every idle subscriber has one. What few connections need (presence
/// memberships, a signed-in user, client-event counts) is allocated on first use.
#[derive(Debug)]
pub struct ConnState {
    /// The channels subscribed to, in subscription order.
    channels: Vec<Arc<str>>,
    /// Whether the connection signed in or subscribed to a private or presence channel
    /// (for the app's authorized-connections timeout).
    pub(super) authorized: bool,
    /// When the connection opened.
    pub(super) opened: Tick,
    /// When the client last sent anything.
    last_seen: Tick,
    /// When the server pinged the idle client, if it has not answered since.
    ping_sent: Tick,
    /// Since when part of a message has been waiting for the rest.
    partial_since: Tick,
    /// Subscriptions the connection may still make now (`u32::MAX`: not used yet, full).
    sub_tokens: u32,
    /// When `sub_tokens` was last refilled.
    sub_refilled: Tick,
    extra: Option<Box<Extra>>,
}

/// A connection's less common state.
#[derive(Debug, Default)]
struct Extra {
    /// Presence channels joined, with the user id each was joined as.
    presence: Vec<(Arc<str>, Arc<str>)>,
    /// The signed-in user, if any.
    user: Option<Arc<str>>,
    /// User ids this connection watches (from its sign-in).
    watchlist: Vec<Arc<str>>,
    /// The second the client-event count is for.
    rate_second: Tick,
    /// Client events sent in that second.
    rate_count: u32,
}

impl ConnState {
    /// A connection opened at `now`.
    pub fn new(now: Tick) -> Self {
        Self {
            channels: Vec::new(),
            authorized: false,
            opened: now,
            last_seen: now,
            ping_sent: NO_PING,
            partial_since: NO_PING,
            sub_tokens: u32::MAX,
            sub_refilled: now,
            extra: None,
        }
    }

    fn extra(&mut self) -> &mut Extra {
        self.extra.get_or_insert_with(Box::default)
    }

    /// The channels subscribed to.
    pub fn channels(&self) -> &[Arc<str>] {
        &self.channels
    }

    /// Whether the connection is subscribed to `channel`.
    pub fn is_subscribed(&self, channel: &str) -> bool {
        self.subscription(channel).is_some()
    }

    /// The subscribed channel named `channel`.
    pub fn subscription(&self, channel: &str) -> Option<&Arc<str>> {
        self.channels.iter().find(|c| &***c == channel)
    }

    pub(super) fn add_channel(&mut self, channel: Arc<str>) {
        self.channels.push(channel);
    }

    /// Forgets `channel`; returns its name if it was subscribed.
    pub(super) fn remove_channel(&mut self, channel: &str) -> Option<Arc<str>> {
        let pos = self.channels.iter().position(|c| &**c == channel)?;
        Some(self.channels.swap_remove(pos))
    }

    /// The signed-in user.
    pub fn user(&self) -> Option<&Arc<str>> {
        self.extra.as_ref()?.user.as_ref()
    }

    pub(super) fn sign_in(&mut self, user: Arc<str>, watchlist: Vec<Arc<str>>) {
        let e = self.extra();
        e.user = Some(user);
        e.watchlist = watchlist;
    }

    /// The user id this connection joined presence channel `channel` as.
    pub fn presence_user(&self, channel: &str) -> Option<&Arc<str>> {
        let e = self.extra.as_ref()?;
        e.presence
            .iter()
            .find(|(c, _)| &**c == channel)
            .map(|(_, u)| u)
    }

    pub(super) fn join_presence(&mut self, channel: Arc<str>, user: Arc<str>) {
        self.extra().presence.push((channel, user));
    }

    /// Forgets the presence membership of `channel`, returning the user id it was joined as.
    pub(super) fn take_presence(&mut self, channel: &str) -> Option<Arc<str>> {
        let e = self.extra.as_mut()?;
        let pos = e.presence.iter().position(|(c, _)| &**c == channel)?;
        Some(e.presence.swap_remove(pos).1)
    }

    /// Counts a subscription against a bucket of `burst` refilled with `per_second` each
    /// second (0: no limit); false when it is empty.
    pub(super) fn allow_subscription(&mut self, now: Tick, per_second: u32, burst: u32) -> bool {
        if per_second == 0 {
            return true;
        }
        if self.sub_tokens == u32::MAX {
            self.sub_tokens = burst;
            self.sub_refilled = now;
        }
        let secs = now.wrapping_sub(self.sub_refilled) / TICKS_PER_SEC;
        if secs > 0 {
            self.sub_tokens = burst.min(
                self.sub_tokens
                    .saturating_add(secs.saturating_mul(per_second)),
            );
            self.sub_refilled = self.sub_refilled.wrapping_add(secs * TICKS_PER_SEC);
        }
        if self.sub_tokens == 0 {
            return false;
        }
        self.sub_tokens -= 1;
        true
    }

    /// Counts a client event against `per_second`; false when over the limit.
    pub(super) fn allow_client_event(&mut self, now: Tick, per_second: u32) -> bool {
        let second = now / TICKS_PER_SEC;
        let e = self.extra();
        if e.rate_second != second {
            e.rate_second = second;
            e.rate_count = 0;
        }
        e.rate_count += 1;
        e.rate_count <= per_second
    }

    /// Records that the client sent a complete message (it is alive). Bytes of a message
    /// still arriving do not count: see [`ConnState::receiving`].
    pub fn touch(&mut self, now: Tick) {
        self.last_seen = now;
        self.ping_sent = NO_PING;
    }

    /// Records whether part of a message is waiting for the rest (`partial`), keeping the
    /// time it started.
    pub fn receiving(&mut self, partial: bool, now: Tick) {
        if !partial {
            self.partial_since = NO_PING;
        } else if self.partial_since == NO_PING {
            self.partial_since = now;
        }
    }

    pub(super) fn partial_since(&self) -> Option<Tick> {
        Some(self.partial_since).filter(|&t| t != NO_PING)
    }

    pub(super) fn last_seen(&self) -> Tick {
        self.last_seen
    }

    pub(super) fn ping_sent(&self) -> Option<Tick> {
        Some(self.ping_sent).filter(|&t| t != NO_PING)
    }

    pub(super) fn set_ping_sent(&mut self, at: Tick) {
        self.ping_sent = at;
    }
}

/// What an upgrade to `/app/{key}?protocol={version}` connects to: the app, or how a Pusher
/// client is refused after the upgrade — 4001 for an unknown key, 4003 for a disabled app,
/// 4008 without a version, 4006 for one that is not a number, 4007 outside 5–7.
pub fn connect(apps: &Apps, key: &str, version: Option<&str>) -> Result<AppIdx, Refusal> {
    let refuse = |code, reason: String| Refusal {
        code,
        reason,
        rejected: None,
    };
    let Some(app) = apps.by_key(key) else {
        return Err(refuse(
            codes::APP_NOT_FOUND,
            format!("App key {key} does not exist on this server"),
        ));
    };
    if !apps.get(app).enabled {
        return Err(refuse(
            codes::APP_DISABLED,
            "Application is disabled".into(),
        ));
    }
    let Some(version) = version else {
        return Err(refuse(
            codes::NO_PROTOCOL_VERSION,
            "No protocol version supplied: connect with ?protocol=7".into(),
        ));
    };
    let Ok(number) = version.parse::<u32>() else {
        return Err(refuse(
            codes::INVALID_VERSION_STRING,
            format!("Invalid protocol version {version:?}"),
        ));
    };
    if !(codes::MIN_PROTOCOL..=codes::MAX_PROTOCOL).contains(&number) {
        return Err(refuse(
            codes::UNSUPPORTED_PROTOCOL_VERSION,
            format!(
                "Unsupported protocol version {number}: this server speaks {}–{}",
                codes::MIN_PROTOCOL,
                codes::MAX_PROTOCOL
            ),
        ));
    }
    Ok(app)
}

/// What a new connection is measured against.
#[derive(Debug, Clone, Copy)]
pub struct Admission {
    /// Open WebSocket connections over all workers, this one included.
    pub open: usize,
    /// `--max-connections`.
    pub max: usize,
    /// The app's open connections, this one included (`None`: no app).
    pub app_open: Option<usize>,
    /// The app's `max_connections` (0: no limit).
    pub app_max: usize,
    /// Whether the server is draining.
    pub shutting_down: bool,
}

/// Why a new connection is turned away: it is closed at once with this code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The close code.
    pub code: u16,
    /// Why.
    pub reason: String,
    /// How it is counted in `ringcast_connections_rejected_total`, if it is.
    pub rejected: Option<Rejected>,
}

/// Admits a new connection, or says how to turn it away: 4100 over `--max-connections`
/// (back off and retry), 4004 over the app's quota, 4200 while draining (reconnect now,
/// elsewhere).
pub fn admit(a: Admission) -> Result<(), Refusal> {
    if a.open > a.max {
        return Err(Refusal {
            code: codes::OVER_CAPACITY,
            reason: "Over capacity: try again later".into(),
            rejected: Some(Rejected::OverCapacity),
        });
    }
    if a.app_max > 0 && a.app_open.is_some_and(|n| n > a.app_max) {
        return Err(Refusal {
            code: codes::OVER_CONNECTION_QUOTA,
            reason: format!(
                "Over connection quota: this app allows {} connections",
                a.app_max
            ),
            rejected: Some(Rejected::AppOverQuota),
        });
    }
    if a.shutting_down {
        return Err(Refusal {
            code: codes::GENERIC_RECONNECT,
            reason: "Server is shutting down".into(),
            rejected: None,
        });
    }
    Ok(())
}

/// The first frame of an admitted connection: `pusher:connection_established` with its
/// socket id and the activity timeout it should ping within.
pub fn established(socket_id: SocketId, activity_timeout_secs: u64, out: &mut Vec<Effect>) {
    out.push(Effect::Send(messages::connection_established(
        socket_id,
        activity_timeout_secs,
    )));
}

/// What a closed connection leaves: each subscription ends (as its presence member), and a
/// signed-in user signs out.
pub fn on_close(conn: &mut ConnState, out: &mut Vec<Effect>) {
    let members = conn.extra.as_mut().map(|e| std::mem::take(&mut e.presence));
    for channel in std::mem::take(&mut conn.channels) {
        let leave = members
            .as_ref()
            .and_then(|m| m.iter().find(|(c, _)| *c == channel))
            .map(|(_, user)| super::subscribe::leaving(&channel, user));
        let kind = channel::parse(&channel).expect("subscribed channels have valid names");
        out.push(Effect::Unsubscribe {
            channel,
            kind,
            leave,
        });
    }
    if let Some(extra) = conn.extra.take() {
        if let Some(user) = extra.user {
            out.push(Effect::SignOut {
                user,
                watchlist: extra.watchlist,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;

    fn admission() -> Admission {
        Admission {
            open: 10,
            max: 10,
            app_open: Some(5),
            app_max: 0,
            shutting_down: false,
        }
    }

    #[test]
    fn an_upgrade_names_a_known_enabled_app_and_protocol_5_to_7() {
        let mut off = crate::app::App::new("2", "off", "s");
        off.enabled = false;
        let apps = Apps::new(vec![crate::app::App::new("1", "on", "s"), off]).unwrap();
        for v in ["5", "6", "7"] {
            assert_eq!(connect(&apps, "on", Some(v)), Ok(0));
        }
        let code = |key, v| connect(&apps, key, v).unwrap_err().code;
        assert_eq!(code("nope", Some("7")), 4001);
        assert_eq!(code("off", Some("7")), 4003);
        assert_eq!(code("on", None), 4008);
        assert_eq!(code("on", Some("seven")), 4006);
        assert_eq!(code("on", Some("4")), 4007);
        assert_eq!(code("on", Some("8")), 4007);
    }

    #[test]
    fn connections_within_every_limit_are_admitted() {
        assert_eq!(admit(admission()), Ok(()));
    }

    #[test]
    fn over_max_connections_closes_with_4100() {
        let r = admit(Admission {
            open: 11,
            ..admission()
        })
        .unwrap_err();
        assert_eq!(r.code, 4100);
        assert_eq!(r.rejected, Some(Rejected::OverCapacity));
    }

    #[test]
    fn over_the_app_quota_closes_with_4004() {
        let r = admit(Admission {
            app_max: 4,
            ..admission()
        })
        .unwrap_err();
        assert_eq!(r.code, 4004);
        assert!(r.reason.contains("allows 4 connections"), "{}", r.reason);
        assert_eq!(
            admit(Admission {
                app_max: 5,
                ..admission()
            }),
            Ok(())
        );
    }

    #[test]
    fn connections_during_a_drain_close_with_4200() {
        let r = admit(Admission {
            shutting_down: true,
            ..admission()
        })
        .unwrap_err();
        assert_eq!((r.code, r.rejected), (4200, None));
    }

    #[test]
    fn connection_established_carries_socket_id_and_activity_timeout() {
        let mut out = Vec::new();
        established(SocketId { random: 3, seq: 4 }, 120, &mut out);
        let [Effect::Send(frame)] = &out[..] else {
            panic!("{out:?}")
        };
        let data = frame_data(frame);
        assert_eq!(data["socket_id"], "3.4");
        assert_eq!(data["activity_timeout"], 120);
    }

    #[test]
    fn a_closed_connection_leaves_each_channel_as_its_member_and_signs_out() {
        let mut t = Test::new();
        t.signin("ann", &["bob"]);
        t.subscribe_public("news");
        t.subscribe_presence("presence-room", "ann");
        let mut out = Vec::new();
        on_close(&mut t.conn, &mut out);
        assert!(t.conn.channels().is_empty());
        assert_eq!(
            out,
            vec![
                Effect::Unsubscribe {
                    channel: "news".into(),
                    kind: channel::ChannelKind::Public,
                    leave: None,
                },
                Effect::Unsubscribe {
                    channel: "presence-room".into(),
                    kind: channel::ChannelKind::Presence,
                    leave: Some(super::super::Leaving {
                        user: "ann".into(),
                        announce: messages::member_removed("presence-room", "ann"),
                    }),
                },
                Effect::SignOut {
                    user: "ann".into(),
                    watchlist: vec!["bob".into()],
                },
            ]
        );
    }
}
