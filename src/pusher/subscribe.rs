//! Subscribing and unsubscribing: channel names, the per-connection and channel limits,
//! authorization of private, presence and `#server-to-user-` channels, presence membership
//! (the broker decides first join and last leave), and the cache channels' replay.
//!
//! A valid subscription makes the connection a subscriber at once; the client is answered
//! when this node receives the channel's events from everywhere ([`on_subscribed`]), so no
//! event published after the answer is missed. A presence subscription then asks the broker
//! to join; [`on_joined`] answers with the members, or refuses it if the channel is full.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;

use super::{
    authorize, ConnState, Ctx, Effect, Joined, Leaving, Member, MemberError, NodeView, Roster,
    SubscriptionError, Verdict,
};
use crate::app::ChannelRef;
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::client::Subscribe;
use crate::protocol::webhook::Kind;
use crate::protocol::{messages, SocketId, MAX_USER_ID_LEN};

/// `pusher:subscribe`.
pub fn subscribe(
    conn: &mut ConnState,
    ctx: &Ctx<'_>,
    socket_id: SocketId,
    req: &Subscribe,
    node: &impl NodeView,
    out: &mut Vec<Effect>,
) {
    if let Err(e) = try_subscribe(conn, ctx, socket_id, req, node, out) {
        refuse(&req.channel, &e, out);
    }
}

fn try_subscribe(
    conn: &mut ConnState,
    ctx: &Ctx<'_>,
    socket_id: SocketId,
    req: &Subscribe,
    node: &impl NodeView,
    out: &mut Vec<Effect>,
) -> Result<(), SubscriptionError> {
    let name = req.channel.as_str();
    let kind = channel::parse(name).map_err(SubscriptionError::InvalidChannelName)?;
    // Every request counts, repeated ones too (a presence channel answers them with its
    // member list).
    let rate = ctx.limits.max_subscriptions_per_second;
    let burst = ctx
        .limits
        .max_channels_per_connection
        .min(u32::MAX as usize) as u32;
    if !conn.allow_subscription(ctx.now, rate, burst.max(rate)) {
        return Err(SubscriptionError::SubscriptionRate(rate));
    }
    if conn.is_subscribed(name) {
        // Already subscribed: answer again, joining nothing twice.
        out.push(match kind.is_presence() {
            true => Effect::ListPresence {
                channel: Arc::from(name),
            },
            false => Effect::Send(messages::subscription_succeeded(name)),
        });
        return Ok(());
    }
    let limit = ctx.limits.max_channels_per_connection;
    if conn.channels().len() >= limit {
        return Err(SubscriptionError::ConnectionChannelLimit(limit));
    }
    channel_room(ctx, ChannelRef { app: ctx.app, name }, node)?;
    let member = match kind {
        ChannelKind::Public | ChannelKind::Cache => None,
        ChannelKind::ServerToUser => {
            let mine = conn
                .user()
                .is_some_and(|u| name.strip_prefix("#server-to-user-") == Some(&**u));
            if !mine {
                return Err(SubscriptionError::NotThisUser);
            }
            None
        }
        k if k.is_presence() => {
            let channel_data = req
                .channel_data
                .as_deref()
                .ok_or(SubscriptionError::MissingChannelData)?;
            let signed = format!("{socket_id}:{name}:{channel_data}");
            authorize(ctx.settings, req.auth.as_deref(), &signed)
                .map_err(SubscriptionError::Auth)?;
            let member = parse_member(channel_data, ctx.settings.max_presence_user_info)
                .map_err(SubscriptionError::InvalidChannelData)?;
            Some(member)
        }
        _ => {
            let signed = format!("{socket_id}:{name}");
            authorize(ctx.settings, req.auth.as_deref(), &signed)
                .map_err(SubscriptionError::Auth)?;
            None
        }
    };
    let channel: Arc<str> = Arc::from(name);
    conn.add_channel(channel.clone());
    if kind.requires_auth() {
        conn.authorized = true;
    }
    if let Some(member) = &member {
        // Recorded now, so that leaving before the broker answers leaves as this member.
        conn.join_presence(channel.clone(), member.user_id.clone());
    }
    out.push(Effect::Subscribe {
        channel,
        kind,
        member,
    });
    Ok(())
}

/// The connection is a subscriber and this node receives the channel's events from
/// everywhere: a presence subscription joins the members now (and is answered when the
/// broker has decided), any other is answered at once — with the cache channel's last
/// event after the answer.
pub fn on_subscribed(
    conn: &mut ConnState,
    channel: &Arc<str>,
    member: Option<Member>,
    out: &mut Vec<Effect>,
) {
    if !conn.is_subscribed(channel) {
        // Unsubscribed meanwhile.
        return;
    }
    let kind = channel::parse(channel).expect("subscribed channels have valid names");
    match member {
        Some(member) => out.push(Effect::JoinPresence {
            announce: messages::member_added(channel, &member.user_id, &member.user_info),
            channel: channel.clone(),
            member,
        }),
        None => {
            out.push(Effect::Send(messages::subscription_succeeded(channel)));
            if kind.is_cache() {
                out.push(Effect::ReplayCache {
                    channel: channel.clone(),
                });
            }
        }
    }
}

/// Whether a subscription may open `channel` under the channel limits: always when it is
/// occupied; a new one must fit `--max-channels` and the app's `max_channels`. (Workers
/// check concurrently, so a burst may pass a limit by a few.)
fn channel_room(
    ctx: &Ctx<'_>,
    channel: ChannelRef<'_>,
    node: &impl NodeView,
) -> Result<(), SubscriptionError> {
    if node.occupied(channel) {
        return Ok(());
    }
    let max = ctx.limits.max_channels;
    if max > 0 && node.channels_open() >= max as u64 {
        return Err(SubscriptionError::ServerChannelLimit(max));
    }
    let app_max = ctx.settings.max_channels;
    let app_open = ctx
        .settings
        .counters
        .channels
        .load(std::sync::atomic::Ordering::Relaxed);
    if app_max > 0 && app_open >= app_max {
        return Err(SubscriptionError::AppChannelLimit(app_max));
    }
    Ok(())
}

/// Refuses a subscription with `pusher:subscription_error`, counting the limit that did.
fn refuse(channel: &str, e: &SubscriptionError, out: &mut Vec<Effect>) {
    if let Some(limit) = e.limit() {
        tracing::debug!(channel, reason = %e, "subscription refused by a limit");
        out.push(Effect::Limited(limit));
    }
    out.push(Effect::Send(messages::subscription_error(
        channel,
        e.kind(),
        &e.to_string(),
        e.status(),
    )));
}

/// The broker's answer to [`Effect::JoinPresence`]: the client gets the members (the
/// others got `member_added` from the broker if this is the user's first connection, and
/// the app gets the webhook), or, when the channel is full, a refusal and no subscription.
pub fn on_joined(
    conn: &mut ConnState,
    ctx: &Ctx<'_>,
    channel: &Arc<str>,
    member: &Member,
    joined: Joined,
    out: &mut Vec<Effect>,
) {
    if conn.presence_user(channel).is_none() {
        // Unsubscribed meanwhile: its leave followed this join to the broker.
        return;
    }
    let kind = channel::parse(channel).expect("subscribed channels have valid names");
    match joined {
        Joined::Full => {
            conn.take_presence(channel);
            conn.remove_channel(channel);
            out.push(Effect::Unsubscribe {
                channel: channel.clone(),
                kind,
                leave: None,
            });
            let e = SubscriptionError::PresenceFull {
                channel: channel.to_string(),
                max: ctx.settings.max_presence_members,
            };
            return refuse(channel, &e, out);
        }
        Joined::First(roster) => {
            out.push(Effect::Send(roster.frame().clone()));
            if let Some(e) = ctx.webhook(Kind::MemberAdded, channel) {
                out.push(Effect::Webhook(e.with_user(&member.user_id)));
            }
        }
        Joined::Again(roster) | Joined::Back(roster) => {
            out.push(Effect::Send(roster.frame().clone()))
        }
    }
    if kind.is_cache() {
        out.push(Effect::ReplayCache {
            channel: channel.clone(),
        });
    }
}

/// The broker's answer to [`Effect::ListPresence`]: a repeated subscription is answered
/// with the members again.
pub fn on_members(roster: &Roster, out: &mut Vec<Effect>) {
    out.push(Effect::Send(roster.frame().clone()));
}

/// The broker's answer to [`Effect::ReplayCache`]: the last event (as subscribers got it),
/// or `pusher:cache_miss` — and, on the first miss since the channel's last event, the
/// `cache_miss` webhook.
pub fn on_cache(
    ctx: &Ctx<'_>,
    channel: &str,
    cached: Option<Bytes>,
    first_miss: bool,
    out: &mut Vec<Effect>,
) {
    match cached {
        Some(frame) => out.push(Effect::Send(frame)),
        None => {
            out.push(Effect::Send(messages::cache_miss(channel)));
            if first_miss {
                if let Some(e) = ctx.webhook(Kind::CacheMiss, channel) {
                    out.push(Effect::Webhook(e));
                }
            }
        }
    }
}

/// `pusher:unsubscribe` (unsubscribing from a channel not subscribed to does nothing).
pub fn unsubscribe(conn: &mut ConnState, channel: &str, out: &mut Vec<Effect>) {
    let Some(channel) = conn.remove_channel(channel) else {
        return;
    };
    let kind = channel::parse(&channel).expect("subscribed channels have valid names");
    let leave = conn
        .take_presence(&channel)
        .map(|user| leaving(&channel, &user));
    out.push(Effect::Unsubscribe {
        channel,
        kind,
        leave,
    });
}

/// Leaving `channel`'s members as `user`: the event the broker publishes if it is the last.
pub(super) fn leaving(channel: &str, user: &Arc<str>) -> Leaving {
    Leaving {
        user: user.clone(),
        announce: messages::member_removed(channel, user),
    }
}

/// The broker's answer to a presence leave: when it was the user's last connection in the
/// channel (the others got `member_removed` from the broker), the app gets the webhook.
pub fn on_left(
    ctx: &Ctx<'_>,
    channel: &Arc<str>,
    user: &Arc<str>,
    last: bool,
    verdict: &Verdict,
    out: &mut Vec<Effect>,
) {
    if !last {
        return;
    }
    if let Some(e) = ctx.webhook(Kind::MemberRemoved, channel) {
        if let Some(e) = verdict.apply(e.with_user(user)) {
            out.push(Effect::Webhook(e));
        }
    }
}

#[derive(serde::Deserialize)]
struct ChannelData<'a> {
    user_id: Option<serde_json::Value>,
    #[serde(borrow, default)]
    user_info: Option<&'a RawValue>,
}

/// The member a presence subscription joins as, from its `channel_data`: a string or
/// numeric `user_id`, and `user_info` of at most `max_info` bytes.
pub fn parse_member(channel_data: &str, max_info: usize) -> Result<Member, MemberError> {
    // serde would also read the struct from an array (`["id", {…}]`): only an object is a
    // member.
    if !channel_data.trim_start().starts_with('{') {
        return Err(MemberError::NotObject);
    }
    let d: ChannelData =
        serde_json::from_str(channel_data).map_err(|e| MemberError::NotJson(e.to_string()))?;
    let id = match d.user_id {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(MemberError::UserIdType),
    };
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(MemberError::UserIdLength);
    }
    let info = d.user_info.map_or("null", RawValue::get);
    // An absent user_info (sent as `null`) is not counted against the limit.
    if d.user_info.is_some() && info.len() > max_info {
        return Err(MemberError::InfoTooLarge {
            size: info.len(),
            max: max_info,
        });
    }
    Ok(Member {
        user_id: Arc::from(id),
        user_info: Arc::from(info),
    })
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::clock::TICKS_PER_SEC;
    use crate::metrics::Limited;

    #[test]
    fn public_channels_need_no_auth_and_answer_at_once() {
        let mut t = Test::new();
        let out = t.text(r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#);
        assert_eq!(
            out,
            vec![
                Effect::Subscribe {
                    channel: "news".into(),
                    kind: ChannelKind::Public,
                    member: None,
                },
                Effect::Send(messages::subscription_succeeded("news")),
            ]
        );
        assert!(t.conn.is_subscribed("news"));
        assert!(!t.conn.authorized, "public channels do not authorize");
    }

    #[test]
    fn prefixes_are_anchored_so_foo_private_bar_is_public() {
        let mut t = Test::new();
        let out = t.subscribe_public("foo-private-bar");
        assert!(matches!(
            &out[0],
            Effect::Subscribe {
                kind: ChannelKind::Public,
                ..
            }
        ));
    }

    #[test]
    fn invalid_channel_names_are_refused_with_invalid_channel_name_400() {
        let mut t = Test::new();
        let out = t.text(r#"{"event":"pusher:subscribe","data":{"channel":"a b"}}"#);
        let e = subscription_error_of(&out);
        assert_eq!(e["type"], "InvalidChannelName");
        assert_eq!(e["status"], 400);
        assert!(t.conn.channels().is_empty());
    }

    #[test]
    fn private_channels_need_the_signature_of_socket_id_and_channel() {
        let mut t = Test::new();
        let auth = t.auth(&format!("{}:private-a", t.socket_id));
        let out = t.subscribe("private-a", Some(&auth), None);
        assert!(matches!(&out[0], Effect::Subscribe { .. }));
        assert!(t.conn.authorized);

        for (auth, message) in [
            (None, "auth is missing"),
            (
                Some("no-colon".to_string()),
                "auth must be \"key:signature\"",
            ),
            (
                Some("other-key:00".to_string()),
                "auth key does not match the app key",
            ),
            (
                Some(format!("{KEY}:{}", "0".repeat(64))),
                "invalid signature: expected the hex HMAC-SHA256 of",
            ),
        ] {
            let mut t = Test::new();
            let out = t.subscribe("private-b", auth.as_deref(), None);
            let e = subscription_error_of(&out);
            assert_eq!(
                (e["type"].as_str(), e["status"].as_u64()),
                (Some("AuthError"), Some(401))
            );
            assert!(e["error"].as_str().unwrap().starts_with(message), "{e}");
            assert!(!t.conn.is_subscribed("private-b"));
        }
    }

    #[test]
    fn encrypted_channels_are_authorized_like_private_ones_and_relayed_as_is() {
        let mut t = Test::new();
        let e = subscription_error_of(&t.subscribe("private-encrypted-a", None, None));
        assert_eq!(
            (e["type"].as_str(), e["status"].as_u64()),
            (Some("AuthError"), Some(401))
        );
        let auth = t.auth(&format!("{}:private-encrypted-a", t.socket_id));
        let out = t.subscribe("private-encrypted-a", Some(&auth), None);
        assert!(matches!(
            out[0],
            Effect::Subscribe {
                kind: ChannelKind::PrivateEncrypted,
                ..
            }
        ));
    }

    #[test]
    fn every_kind_of_cache_channel_replays_its_last_event() {
        let mut t = Test::new();
        for name in ["cache-a", "private-cache-a", "private-encrypted-cache-a"] {
            let auth = t.auth(&format!("{}:{name}", t.socket_id));
            let out = t.subscribe(name, Some(&auth), None);
            assert_eq!(
                out[2],
                Effect::ReplayCache {
                    channel: name.into()
                },
                "{name}"
            );
        }
        // presence-cache- channels: presence_cache_channels_replay_after_the_members.
    }

    #[test]
    fn a_signature_for_another_socket_is_refused() {
        let mut t = Test::new();
        let auth = t.auth("1.1:private-a");
        let e = subscription_error_of(&t.subscribe("private-a", Some(&auth), None));
        assert_eq!(e["type"], "AuthError");
    }

    #[test]
    fn repeated_subscription_is_answered_again_without_joining_twice() {
        let mut t = Test::new();
        t.subscribe_public("news");
        let out = t.subscribe_public("news");
        assert_eq!(
            out,
            vec![Effect::Send(messages::subscription_succeeded("news"))]
        );
        assert_eq!(t.conn.channels().len(), 1);
        t.subscribe_presence("presence-a", "1");
        t.joined(
            "presence-a",
            Joined::First(Roster::of("presence-a", &[member("1")])),
        );
        let out = t.subscribe_presence("presence-a", "1");
        assert_eq!(
            out,
            vec![Effect::ListPresence {
                channel: "presence-a".into()
            }]
        );
    }

    #[test]
    fn the_connection_channel_limit_refuses_with_limit_reached_429() {
        let mut t = Test::new();
        t.limits.max_channels_per_connection = 2;
        t.subscribe_public("a");
        t.subscribe_public("b");
        let out = t.subscribe_public("c");
        assert_eq!(out[0], Effect::Limited(Limited::ConnectionChannels));
        let e = subscription_error_of(&out);
        assert_eq!(
            (e["type"].as_str(), e["status"].as_u64()),
            (Some("LimitReached"), Some(429))
        );
    }

    #[test]
    fn subscriptions_beyond_the_rate_get_limit_reached_429_and_the_bucket_refills() {
        let mut t = Test::new();
        t.limits.max_subscriptions_per_second = 2;
        t.limits.max_channels_per_connection = 3;
        // A burst up to the channel limit (a reconnect), repeated requests counted too.
        t.subscribe_public("a");
        t.subscribe_public("a");
        t.subscribe_public("b");
        let out = t.subscribe_public("c");
        assert_eq!(out[0], Effect::Limited(Limited::Subscriptions));
        let e = subscription_error_of(&out);
        assert_eq!(
            (e["type"].as_str(), e["status"].as_u64()),
            (Some("LimitReached"), Some(429))
        );
        // A second later, two more.
        t.now += TICKS_PER_SEC;
        assert!(matches!(
            t.subscribe_public("c")[0],
            Effect::Subscribe { .. }
        ));
        assert!(matches!(t.subscribe_public("c")[0], Effect::Send(_)));
        assert_eq!(
            t.subscribe_public("d")[0],
            Effect::Limited(Limited::Subscriptions)
        );
        // Off with 0.
        t.limits.max_subscriptions_per_second = 0;
        t.limits.max_channels_per_connection = 10;
        assert!(matches!(
            t.subscribe_public("d")[0],
            Effect::Subscribe { .. }
        ));
    }

    #[test]
    fn channel_limits_refuse_new_channels_but_not_occupied_ones() {
        let mut t = Test::new();
        t.limits.max_channels = 5;
        t.node.channels_open = 5;
        let out = t.subscribe_public("new");
        assert_eq!(out[0], Effect::Limited(Limited::Channels));
        assert_eq!(
            subscription_error_of(&out)["error"],
            "The server is at its limit of 5 channels"
        );
        t.node.occupied.insert("busy".into());
        assert!(matches!(
            t.subscribe_public("busy")[0],
            Effect::Subscribe { .. }
        ));

        let mut t = Test::new();
        t.app.max_channels = 1;
        t.app
            .counters
            .channels
            .store(1, std::sync::atomic::Ordering::Relaxed);
        let e = subscription_error_of(&t.subscribe_public("new"));
        assert_eq!(e["error"], "This app is at its limit of 1 channels");
        assert_eq!(e["status"], 429);
    }

    #[test]
    fn server_to_user_channels_are_only_for_the_signed_in_user() {
        let mut t = Test::new();
        let e = subscription_error_of(&t.subscribe_public("#server-to-user-ann"));
        assert_eq!(
            (e["type"].as_str(), e["status"].as_u64()),
            (Some("AuthError"), Some(403))
        );
        t.signin("ann", &[]);
        let e = subscription_error_of(&t.subscribe_public("#server-to-user-bob"));
        assert_eq!(e["status"], 403);
        let out = t.subscribe_public("#server-to-user-ann");
        assert!(matches!(
            out[0],
            Effect::Subscribe {
                kind: ChannelKind::ServerToUser,
                ..
            }
        ));
    }

    #[test]
    fn presence_subscriptions_subscribe_then_ask_the_broker_to_join() {
        let mut t = Test::new();
        let out = t.subscribe_presence("presence-room", "7");
        let seven = Member {
            user_id: "7".into(),
            user_info: r#"{"name":"7"}"#.into(),
        };
        assert_eq!(
            out,
            vec![
                Effect::Subscribe {
                    channel: "presence-room".into(),
                    kind: ChannelKind::Presence,
                    member: Some(seven.clone()),
                },
                Effect::JoinPresence {
                    channel: "presence-room".into(),
                    member: seven,
                    announce: messages::member_added("presence-room", "7", r#"{"name":"7"}"#),
                },
            ]
        );
        assert!(t.conn.authorized);
        assert_eq!(
            t.conn.presence_user("presence-room").map(|u| &**u),
            Some("7")
        );
    }

    #[test]
    fn presence_needs_channel_data_signed_with_the_channel() {
        let mut t = Test::new();
        let auth = t.auth(&format!("{}:presence-a", t.socket_id));
        let e = subscription_error_of(&t.subscribe("presence-a", Some(&auth), None));
        assert_eq!(
            (e["type"].as_str(), e["status"].as_u64()),
            (Some("AuthError"), Some(401))
        );
        assert_eq!(
            e["error"],
            "Presence channels need channel_data with the signed member"
        );
        let data = r#"{"user_id":"1"}"#;
        let e = subscription_error_of(&t.subscribe("presence-a", Some(&auth), Some(data)));
        assert_eq!(
            e["type"], "AuthError",
            "the signature must cover channel_data"
        );
    }

    #[test]
    fn presence_member_data_is_validated() {
        let mut t = Test::new();
        t.app.max_presence_user_info = 10;
        let data = r#"{"user_id":"1","user_info":{"name":"far too long"}}"#;
        let auth = t.auth(&format!("{}:presence-a:{data}", t.socket_id));
        let e = subscription_error_of(&t.subscribe("presence-a", Some(&auth), Some(data)));
        assert_eq!(
            (e["type"].as_str(), e["status"].as_u64()),
            (Some("InvalidChannelData"), Some(400))
        );
        assert!(
            e["error"].as_str().unwrap().contains("at most 10 bytes"),
            "{e}"
        );
    }

    #[test]
    fn first_join_answers_with_members_and_tells_the_others() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&[Kind::MemberAdded]);
        t.subscribe_presence("presence-room", "7");
        let out = t.joined(
            "presence-room",
            Joined::First(Roster::of("presence-room", &[member("3"), member("7")])),
        );
        // The others got member_added from the broker, which decided it.
        let [Effect::Send(answer), Effect::Webhook(hook)] = &out[..] else {
            panic!("{out:?}")
        };
        let data = frame_data(answer);
        assert_eq!(data["presence"]["ids"], serde_json::json!(["3", "7"]));
        assert_eq!(data["presence"]["count"], 2);
        assert_eq!(hook.kind, Kind::MemberAdded);
        assert_eq!(hook.user_id.as_deref(), Some("7"));
    }

    #[test]
    fn another_tab_of_a_member_is_answered_but_not_announced() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&[Kind::MemberAdded]);
        t.subscribe_presence("presence-room", "7");
        let out = t.joined(
            "presence-room",
            Joined::Again(Roster::of("presence-room", &[member("7")])),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(out[0], Effect::Send(_)));
    }

    #[test]
    fn a_member_back_within_the_debounce_is_answered_without_a_webhook() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&[Kind::MemberAdded]);
        t.subscribe_presence("presence-room", "7");
        let out = t.joined(
            "presence-room",
            Joined::Back(Roster::of("presence-room", &[member("7")])),
        );
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(matches!(out[0], Effect::Send(_)));
    }

    #[test]
    fn a_full_presence_channel_refuses_with_limit_reached_403_and_unsubscribes() {
        let mut t = Test::new();
        t.subscribe_presence("presence-room", "7");
        let out = t.joined("presence-room", Joined::Full);
        assert_eq!(
            out[0],
            Effect::Unsubscribe {
                channel: "presence-room".into(),
                kind: ChannelKind::Presence,
                leave: None
            }
        );
        assert_eq!(out[1], Effect::Limited(Limited::PresenceMembers));
        let e = subscription_error_of(&out);
        assert_eq!(
            (e["type"].as_str(), e["status"].as_u64()),
            (Some("LimitReached"), Some(403))
        );
        assert!(!t.conn.is_subscribed("presence-room"));
        assert!(t.conn.presence_user("presence-room").is_none());
    }

    #[test]
    fn a_join_answered_after_unsubscribing_does_nothing() {
        let mut t = Test::new();
        t.subscribe_presence("presence-room", "7");
        let left = t.text(r#"{"event":"pusher:unsubscribe","data":{"channel":"presence-room"}}"#);
        assert_eq!(
            left,
            vec![Effect::Unsubscribe {
                channel: "presence-room".into(),
                kind: ChannelKind::Presence,
                leave: Some(Leaving {
                    user: "7".into(),
                    announce: messages::member_removed("presence-room", "7"),
                }),
            }]
        );
        assert!(t
            .joined(
                "presence-room",
                Joined::First(Roster::of("presence-room", &[]))
            )
            .is_empty());
    }

    #[test]
    fn cache_channels_replay_the_last_event_or_report_a_miss() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&[Kind::CacheMiss]);
        let out = t.subscribe_public("cache-x");
        assert!(matches!(out[0], Effect::Subscribe { .. }));
        assert_eq!(
            frame_json(sent(&out[1]))["event"],
            "pusher_internal:subscription_succeeded"
        );
        assert_eq!(
            out[2],
            Effect::ReplayCache {
                channel: "cache-x".into()
            },
            "the last event comes after the answer"
        );
        let last = messages::event_frame("e", Some("cache-x"), "1");
        let mut out = Vec::new();
        on_cache(&t.ctx(), "cache-x", Some(last.clone()), false, &mut out);
        assert_eq!(out, vec![Effect::Send(last)]);

        let mut out = Vec::new();
        on_cache(&t.ctx(), "cache-x", None, true, &mut out);
        assert_eq!(frame_json(sent(&out[0]))["event"], "pusher:cache_miss");
        assert!(matches!(&out[1], Effect::Webhook(e) if e.kind == Kind::CacheMiss));
        let mut out = Vec::new();
        on_cache(&t.ctx(), "cache-x", None, false, &mut out);
        assert_eq!(out.len(), 1, "the webhook is for the first miss only");
    }

    #[test]
    fn presence_cache_channels_replay_after_the_members() {
        let mut t = Test::new();
        t.subscribe_presence("presence-cache-x", "1");
        let out = t.joined(
            "presence-cache-x",
            Joined::Again(Roster::of("presence-cache-x", &[member("1")])),
        );
        assert_eq!(
            out.last(),
            Some(&Effect::ReplayCache {
                channel: "presence-cache-x".into()
            })
        );
    }

    #[test]
    fn the_last_leave_is_the_webhook_and_its_event_goes_with_the_leave() {
        let mut t = Test::new();
        t.app.webhooks = webhooks_for(&[Kind::MemberRemoved]);
        let (channel, user) = (Arc::from("presence-room"), Arc::from("7"));
        let mut out = Vec::new();
        on_left(&t.ctx(), &channel, &user, false, &Verdict::Send, &mut out);
        assert!(out.is_empty(), "another tab of user 7 is still there");
        on_left(&t.ctx(), &channel, &user, true, &Verdict::Send, &mut out);
        assert!(matches!(&out[..], [Effect::Webhook(e)] if e.kind == Kind::MemberRemoved));
        // Decided by the cluster: the held webhook carries the decision to confirm.
        out.clear();
        let token = Verdict::Confirm(Arc::from("node-a#1\n7"));
        on_left(&t.ctx(), &channel, &user, true, &token, &mut out);
        assert!(
            matches!(&out[..], [Effect::Webhook(e)] if e.confirm.as_deref() == Some("node-a#1\n7"))
        );
        // The event the broker publishes on the last leave.
        let announce = leaving(&channel, &user).announce;
        assert_eq!(
            frame_json(&announce)["event"],
            "pusher_internal:member_removed"
        );
        assert_eq!(frame_data(&announce)["user_id"], "7");
    }

    #[test]
    fn a_subscription_is_answered_once_the_node_is_interested() {
        let mut t = Test::new();
        let out = t.text_unanswered(r#"{"event":"pusher:subscribe","data":{"channel":"news"}}"#);
        assert!(
            matches!(&out[..], [Effect::Subscribe { .. }]),
            "nothing sent yet"
        );
        assert!(t.conn.is_subscribed("news"));
        let mut answer = Vec::new();
        on_subscribed(&mut t.conn, &Arc::from("news"), None, &mut answer);
        assert_eq!(
            answer,
            vec![Effect::Send(messages::subscription_succeeded("news"))]
        );
        // A connection that left before the node was interested is not answered.
        t.text(r#"{"event":"pusher:unsubscribe","data":{"channel":"news"}}"#);
        let mut late = Vec::new();
        on_subscribed(&mut t.conn, &Arc::from("news"), None, &mut late);
        assert!(late.is_empty());
    }

    #[test]
    fn unsubscribing_from_a_channel_never_joined_does_nothing() {
        let mut t = Test::new();
        assert!(t
            .text(r#"{"event":"pusher:unsubscribe","data":{"channel":"news"}}"#)
            .is_empty());
    }

    #[test]
    fn members_take_string_or_numeric_ids_and_bounded_info() {
        let m = parse_member(
            r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#,
            1024,
        )
        .unwrap();
        assert_eq!(&*m.user_id, "10");
        assert_eq!(&*m.user_info, r#"{"name":"Mr. Channels"}"#);
        let m = parse_member(r#"{"user_id":"ann"}"#, 1024).unwrap();
        assert_eq!((&*m.user_id, &*m.user_info), ("ann", "null"));
        assert_eq!(
            parse_member(r#"{"user_info":{}}"#, 1024),
            Err(MemberError::UserIdType)
        );
        assert_eq!(
            parse_member(&format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129)), 1024),
            Err(MemberError::UserIdLength)
        );
        assert!(matches!(
            parse_member(r#"{"user_id":"a","user_info":{"n":"xxxxxxxxxx"}}"#, 10),
            Err(MemberError::InfoTooLarge { max: 10, .. })
        ));
        assert!(matches!(
            parse_member("{nope", 1024),
            Err(MemberError::NotJson(_))
        ));
        // Found by fuzzing: the struct's fields as an array were accepted as a member.
        assert_eq!(
            parse_member(r#"["< 4N", 33333E0420]"#, 1024),
            Err(MemberError::NotObject)
        );
        assert_eq!(parse_member("nope", 1024), Err(MemberError::NotObject));
    }
}
