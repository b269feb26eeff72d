//! Client events (`client-*`): relayed to the channel's other subscribers when the app allows
//! them, on private and presence channels only, from a subscriber, within the name, size and
//! rate limits; on presence channels with the sender's `user_id`.

use std::sync::Arc;

use super::{ClientEventError, ConnState, Ctx, Effect};
use crate::metrics::Limited;
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::webhook::{Detail, Kind};
use crate::protocol::{messages, SocketId, MAX_EVENT_NAME_LEN};

/// A `client-*` event from the connection.
pub fn client_event(
    conn: &mut ConnState,
    ctx: &Ctx<'_>,
    socket_id: SocketId,
    event: &str,
    channel: Option<&str>,
    data: Option<&str>,
    out: &mut Vec<Effect>,
) {
    let channel = match check(conn, ctx, event, channel, data) {
        Ok(channel) => channel,
        Err(e) => {
            if matches!(e, ClientEventError::RateLimited(_)) {
                out.push(Effect::Limited(Limited::ClientEvents));
            }
            out.push(Effect::Send(messages::error(
                e.code(),
                &format!("Client event rejected: {e}"),
            )));
            return;
        }
    };
    out.push(Effect::ClientEventRelayed);
    let user = conn.presence_user(&channel).cloned();
    out.push(Effect::Publish {
        frame: messages::client_event(event, &channel, data, user.as_deref()),
        channel: channel.clone(),
        except: Some(socket_id),
    });
    if let Some(mut e) = ctx.webhook(Kind::ClientEvent, &channel) {
        let data = data.unwrap_or("null");
        // Webhooks carry `data` as a string: a string as sent, anything else as JSON text.
        let data = serde_json::from_str::<String>(data).unwrap_or_else(|_| data.to_string());
        e.user_id = user;
        e.detail = Detail::ClientEvent {
            event: event.to_string(),
            data,
            socket_id,
        };
        out.push(Effect::Webhook(e));
    }
}

/// The channel a client event may go to, or why it may not.
fn check(
    conn: &mut ConnState,
    ctx: &Ctx<'_>,
    event: &str,
    channel: Option<&str>,
    data: Option<&str>,
) -> Result<Arc<str>, ClientEventError> {
    if !ctx.settings.client_events {
        return Err(ClientEventError::NotEnabled);
    }
    let name = channel.ok_or(ClientEventError::NoChannel)?;
    match channel::parse(name) {
        Ok(k) if k.is_encrypted() => return Err(ClientEventError::Encrypted),
        Ok(k) if k.requires_auth() && k != ChannelKind::ServerToUser => {}
        _ => return Err(ClientEventError::NotPrivate),
    }
    let Some(channel) = conn.subscription(name).cloned() else {
        return Err(ClientEventError::NotSubscribed(name.to_string()));
    };
    if event.len() > MAX_EVENT_NAME_LEN {
        return Err(ClientEventError::NameTooLong);
    }
    let size = data.map_or(0, str::len);
    let max = ctx.limits.max_event_size;
    if size > max {
        return Err(ClientEventError::TooLarge { size, max });
    }
    let rate = ctx.settings.client_event_rate;
    if !conn.allow_client_event(ctx.now, rate) {
        return Err(ClientEventError::RateLimited(rate));
    }
    Ok(channel)
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::clock::TICKS_PER_SEC;

    fn send(t: &mut Test, channel: &str, data: &str) -> Vec<Effect> {
        t.text(&format!(
            r#"{{"event":"client-typing","channel":"{channel}","data":{data}}}"#
        ))
    }

    fn rejection(out: &[Effect]) -> (serde_json::Value, String) {
        let v = frame_json(sent(out.last().unwrap()));
        assert_eq!(v["event"], "pusher:error");
        (
            v["data"]["code"].clone(),
            v["data"]["message"].as_str().unwrap().to_string(),
        )
    }

    fn subscribed_private() -> Test {
        let mut t = Test::new();
        t.app.client_events = true;
        let auth = t.auth(&format!("{}:private-chat", t.socket_id));
        t.subscribe("private-chat", Some(&auth), None);
        t
    }

    #[test]
    fn client_events_reach_the_others_but_not_the_sender() {
        let mut t = subscribed_private();
        let out = send(&mut t, "private-chat", r#"{"x":1}"#);
        let [Effect::ClientEventRelayed, Effect::Publish {
            channel,
            frame,
            except,
        }] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(&**channel, "private-chat");
        assert_eq!(*except, Some(t.socket_id));
        let v = frame_json(frame);
        assert_eq!(v["data"]["x"], 1, "data is relayed as the sender wrote it");
        assert!(v.get("user_id").is_none());
    }

    #[test]
    fn client_events_need_the_app_to_enable_them() {
        let mut t = subscribed_private();
        t.app.client_events = false;
        let (code, message) = rejection(&send(&mut t, "private-chat", "{}"));
        assert!(code.is_null());
        assert_eq!(
            message,
            "Client event rejected: client events are not enabled for this app"
        );
    }

    #[test]
    fn client_events_only_go_to_private_and_presence_channels_subscribed_to() {
        let mut t = subscribed_private();
        for (channel, why) in [
            (
                "news",
                "client events are only supported on private and presence channels",
            ),
            (
                "private-encrypted-x",
                "client events are not supported on encrypted channels",
            ),
            (
                "#server-to-user-1",
                "client events are only supported on private and presence channels",
            ),
            ("private-other", "not subscribed to private-other"),
        ] {
            let (_, message) = rejection(&send(&mut t, channel, "{}"));
            assert_eq!(message, format!("Client event rejected: {why}"));
        }
        let (_, message) = rejection(&t.text(r#"{"event":"client-x","data":{}}"#));
        assert_eq!(message, "Client event rejected: no channel given");
    }

    #[test]
    fn client_event_names_and_data_are_bounded() {
        let mut t = subscribed_private();
        t.limits.max_event_size = 8;
        let (_, message) = rejection(&send(&mut t, "private-chat", r#""123456789""#));
        assert_eq!(
            message,
            "Client event rejected: data is 11 bytes; at most 8 bytes are allowed"
        );
        let long = format!(
            r#"{{"event":"client-{}","channel":"private-chat","data":{{}}}}"#,
            "x".repeat(200)
        );
        let (_, message) = rejection(&t.text(&long));
        assert!(
            message.contains("event name is longer than 200"),
            "{message}"
        );
    }

    #[test]
    fn client_events_over_the_rate_get_4301() {
        let mut t = subscribed_private();
        t.app.client_event_rate = 2;
        t.now = 50 * TICKS_PER_SEC;
        for _ in 0..2 {
            assert!(matches!(
                send(&mut t, "private-chat", "{}")[0],
                Effect::ClientEventRelayed
            ));
        }
        let out = send(&mut t, "private-chat", "{}");
        assert_eq!(out[0], Effect::Limited(Limited::ClientEvents));
        let (code, message) = rejection(&out);
        assert_eq!(code, 4301);
        assert_eq!(
            message,
            "Client event rejected: at most 2 client events per second"
        );
        t.now += TICKS_PER_SEC;
        assert!(matches!(
            send(&mut t, "private-chat", "{}")[0],
            Effect::ClientEventRelayed
        ));
    }

    #[test]
    fn presence_client_events_carry_the_sender_and_the_webhook_has_data_as_a_string() {
        let mut t = Test::new();
        t.app.client_events = true;
        t.app.webhooks = webhooks_for(&[Kind::ClientEvent]);
        t.subscribe_presence("presence-room", "7");
        t.joined(
            "presence-room",
            super::super::Joined::First(super::super::Roster::of("presence-room", &[])),
        );
        let out = send(&mut t, "presence-room", r#"{"typing":true}"#);
        let [_, Effect::Publish { frame, .. }, Effect::Webhook(w)] = &out[..] else {
            panic!("{out:?}")
        };
        assert_eq!(frame_json(frame)["user_id"], "7");
        assert_eq!(w.user_id.as_deref(), Some("7"));
        assert_eq!(
            w.detail,
            Detail::ClientEvent {
                event: "client-typing".into(),
                data: r#"{"typing":true}"#.into(),
                socket_id: t.socket_id,
            }
        );
        let out = send(&mut t, "presence-room", r#""plain text""#);
        let Effect::Webhook(w) = out.last().unwrap() else {
            panic!("{out:?}")
        };
        assert!(matches!(&w.detail, Detail::ClientEvent { data, .. } if data == "plain text"));
    }
}
