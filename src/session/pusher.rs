//! The Pusher protocol on an open connection: answering each client message.

use std::rc::Rc;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::conn::{tick_now, Conn};
use super::Handler;
use crate::app::{App, AppIdx, WebhookEvent};
use crate::hub::{ChannelKey, ChannelRef, Joined};
use crate::metrics::{Limited, WorkerStats};
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::client::{self, ClientMessage, Subscribe};
use crate::protocol::{codes, messages};
use crate::worker::{Worker, MAX_WATCHLIST};
use crate::ws::codec::{self, close_code, OpCode};
use crate::ws::Message;

/// Sends `pusher:connection_established`.
pub(super) fn on_open(worker: &Worker, conn: &Conn) {
    conn.push(messages::connection_established(
        conn.socket_id,
        worker.config().activity_timeout.as_secs(),
    ));
}

/// A connection of a valid app.
pub(super) struct Pusher {
    pub app: AppIdx,
}

impl Handler for Pusher {
    fn on_message(&mut self, worker: &Worker, conn: &Rc<Conn>, msg: Message) {
        match msg {
            Message::Text(text) => {
                let text = std::str::from_utf8(&text).expect("the decoder validated UTF-8");
                self.on_text(worker, conn, text);
            }
            Message::Binary(_) => {
                conn.close(
                    close_code::UNSUPPORTED_DATA,
                    "Binary frames are not supported: send JSON text messages",
                );
            }
            Message::Ping(payload) => {
                conn.push(codec::encode(OpCode::Pong, &payload));
            }
            Message::Pong(_) | Message::Close(_) => {}
        }
    }
}

impl Pusher {
    fn on_text(&self, worker: &Worker, conn: &Rc<Conn>, text: &str) {
        let msg = match client::parse(text) {
            Ok(m) => m,
            Err(e) => {
                conn.push(messages::error(None, &e.to_string()));
                return;
            }
        };
        match msg {
            ClientMessage::Ping => {
                conn.push(messages::pong());
            }
            ClientMessage::Pong => {}
            ClientMessage::Subscribe(s) => self.subscribe(worker, conn, s),
            ClientMessage::Unsubscribe(u) => {
                worker.unsubscribe(conn, self.app, &u.channel);
            }
            ClientMessage::Signin(s) => self.signin(worker, conn, s),
            ClientMessage::ClientEvent {
                event,
                channel,
                data,
            } => self.client_event(worker, conn, &event, channel.as_deref(), data),
            ClientMessage::Unknown(event) => {
                conn.push(messages::error(
                    None,
                    &format!("Unsupported event: {event}"),
                ));
            }
        }
    }

    fn subscribe(&self, worker: &Worker, conn: &Rc<Conn>, s: Subscribe) {
        let name = s.channel.as_str();
        let refuse = |kind: &str, error: &str, status: u16| {
            conn.push(messages::subscription_error(name, kind, error, status));
        };
        let kind = match channel::parse(name) {
            Ok(k) => k,
            Err(e) => return refuse("InvalidChannelName", &e.to_string(), 400),
        };
        let key = ChannelRef {
            app: self.app,
            name,
        };
        if worker.channels.contains(key, conn.id) {
            // Already subscribed: answer again, joining nothing twice.
            let data = match kind.is_presence() {
                true => worker.shared.presence.snapshot(key),
                false => "{}".into(),
            };
            conn.push(messages::subscription_succeeded_with(name, &data));
            return;
        }
        let limit = worker.config().limits.max_channels_per_connection;
        if conn.channels.borrow().len() >= limit {
            worker.stats.limited(Limited::ConnectionChannels);
            return refuse(
                "LimitReached",
                &format!("A connection may subscribe to at most {limit} channels"),
                429,
            );
        }
        if let Err(e) = worker.channel_limit(self.app, name) {
            worker.stats.limited(Limited::Channels);
            tracing::debug!(channel = name, reason = %e, "subscription refused: channel limit");
            return refuse("LimitReached", &e, 429);
        }
        let app = worker.app(self.app);
        let member = match kind {
            ChannelKind::Public | ChannelKind::Cache => None,
            ChannelKind::ServerToUser => {
                let mine = conn
                    .user()
                    .is_some_and(|u| name.strip_prefix("#server-to-user-") == Some(&*u));
                if !mine {
                    return refuse(
                        "AuthError",
                        "Sign in as this user before subscribing to its #server-to-user- channel",
                        403,
                    );
                }
                None
            }
            k if k.is_presence() => {
                let Some(channel_data) = s.channel_data.as_deref() else {
                    return refuse(
                        "AuthError",
                        "Presence channels need channel_data with the signed member",
                        401,
                    );
                };
                let to_sign = format!("{}:{name}:{channel_data}", conn.socket_id);
                if let Err(e) = verify_auth(&app, s.auth.as_deref(), &to_sign) {
                    return refuse("AuthError", &e, 401);
                }
                match parse_member(channel_data, app.max_presence_user_info) {
                    Ok(m) => Some(m),
                    Err(e) => return refuse("InvalidChannelData", &e, 400),
                }
            }
            _ => {
                let to_sign = format!("{}:{name}", conn.socket_id);
                if let Err(e) = verify_auth(&app, s.auth.as_deref(), &to_sign) {
                    return refuse("AuthError", &e, 401);
                }
                None
            }
        };
        worker.subscribe(conn, self.app, name);
        if kind.requires_auth() {
            conn.authorized.set(true);
        }
        match member {
            None => {
                conn.push(messages::subscription_succeeded(name));
            }
            Some((user, info)) => {
                let key = ChannelKey::new(self.app, name);
                match worker
                    .shared
                    .presence
                    .join(&key, &user, &info, app.max_presence_members)
                {
                    Joined::Full => {
                        worker.stats.limited(Limited::PresenceMembers);
                        worker.unsubscribe(conn, self.app, name);
                        return refuse(
                            "LimitReached",
                            &format!(
                                "Presence channel {name} already has the maximum of {} members",
                                app.max_presence_members
                            ),
                            403,
                        );
                    }
                    Joined::First(data) => {
                        conn.with_extra(|e| e.presence.push((key.name.clone(), user.clone())));
                        conn.push(messages::subscription_succeeded_with(name, &data));
                        let frame = messages::member_added(name, &user, &info);
                        worker.publish_event(self.app, name, frame, Some(conn.socket_id));
                        worker.webhook(
                            self.app,
                            WebhookEvent::MemberAdded,
                            name,
                            Some(&user),
                            |_| {},
                        );
                    }
                    Joined::Again(data) => {
                        conn.with_extra(|e| e.presence.push((key.name.clone(), user.clone())));
                        conn.push(messages::subscription_succeeded_with(name, &data));
                    }
                }
            }
        }
        if kind.is_cache() {
            match worker.shared.cache.get(key) {
                Some(cached) => {
                    conn.push(cached.frame);
                }
                None => {
                    conn.push(messages::cache_miss(name));
                    if worker.shared.cache.note_miss(key) {
                        worker.webhook(self.app, WebhookEvent::CacheMiss, name, None, |_| {});
                    }
                }
            }
        }
    }

    fn client_event(
        &self,
        worker: &Worker,
        conn: &Rc<Conn>,
        event: &str,
        channel: Option<&str>,
        data: Option<&str>,
    ) {
        let reject = |why: &str| {
            conn.push(messages::error(
                None,
                &format!("Client event rejected: {why}"),
            ));
        };
        let app = worker.app(self.app);
        if !app.client_events {
            return reject("client events are not enabled for this app");
        }
        let Some(name) = channel else {
            return reject("no channel given");
        };
        match channel::parse(name) {
            Ok(k) if k.is_encrypted() => {
                return reject("client events are not supported on encrypted channels")
            }
            Ok(k) if k.requires_auth() && k != ChannelKind::ServerToUser => {}
            _ => {
                return reject("client events are only supported on private and presence channels")
            }
        }
        let key = ChannelRef {
            app: self.app,
            name,
        };
        if !worker.channels.contains(key, conn.id) {
            return reject(&format!("not subscribed to {name}"));
        }
        if event.len() > MAX_EVENT_NAME_LEN {
            return reject(&format!(
                "event name is longer than {MAX_EVENT_NAME_LEN} characters"
            ));
        }
        let size = data.map_or(0, str::len);
        let max = worker.config().limits.max_event_size;
        if size > max {
            return reject(&format!(
                "data is {size} bytes; at most {max} bytes are allowed"
            ));
        }
        if !conn.allow_client_event(tick_now(), app.client_event_rate) {
            worker.stats.limited(Limited::ClientEvents);
            conn.push(messages::error(
                Some(codes::CLIENT_EVENT_RATE_LIMIT),
                &format!(
                    "Client event rejected: at most {} client events per second",
                    app.client_event_rate
                ),
            ));
            return;
        }
        WorkerStats::add(&worker.stats.client_events, 1);
        let user = conn.presence_user(name);
        let frame = messages::client_event(event, name, data, user.as_deref());
        worker.publish_event(self.app, name, frame, Some(conn.socket_id));
        worker.webhook(
            self.app,
            WebhookEvent::ClientEvent,
            name,
            user.as_ref(),
            |j| {
                let data = data.unwrap_or("null");
                // Webhooks carry `data` as a string: a string as sent, anything else as JSON text.
                let data =
                    serde_json::from_str::<String>(data).unwrap_or_else(|_| data.to_string());
                j.fields.insert("event".into(), event.into());
                j.fields.insert("data".into(), data.into());
                j.fields
                    .insert("socket_id".into(), conn.socket_id.to_string().into());
            },
        );
    }

    fn signin(&self, worker: &Worker, conn: &Rc<Conn>, s: client::Signin) {
        let app = worker.app(self.app);
        let to_sign = format!("{}::user::{}", conn.socket_id, s.user_data);
        if let Err(e) = verify_auth(&app, Some(&s.auth), &to_sign) {
            conn.push(messages::error(
                Some(codes::CONNECTION_UNAUTHORIZED),
                &format!("Sign-in refused: {e}"),
            ));
            return;
        }
        let user = match parse_user(&s.user_data) {
            Ok(u) => u,
            Err(e) => {
                conn.push(messages::error(None, &format!("Sign-in refused: {e}")));
                return;
            }
        };
        let id: Arc<str> = Arc::from(user.id.as_str());
        let success = messages::event_frame(
            "pusher:signin_success",
            None,
            &serde_json::json!({ "user_data": s.user_data }).to_string(),
        );
        match conn.user() {
            Some(current) if current == id => {
                conn.push(success);
                return;
            }
            Some(current) => {
                conn.push(messages::error(
                    Some(codes::CONNECTION_UNAUTHORIZED),
                    &format!(
                        "Sign-in refused: this connection is signed in as {current:?} already"
                    ),
                ));
                return;
            }
            None => {}
        }
        conn.authorized.set(true);
        conn.push(success);
        // Each watched user once (in the order given): a repeated id would otherwise get
        // one identical frame per repetition at every transition.
        let mut seen = std::collections::HashSet::with_capacity(user.watchlist.len());
        let mut watchlist: Vec<Arc<str>> = user
            .watchlist
            .iter()
            .filter(|w| seen.insert(w.as_str()))
            .map(|w| Arc::from(w.as_str()))
            .collect();
        if watchlist.len() > MAX_WATCHLIST {
            conn.push(messages::error(
                Some(codes::WATCHLIST_LIMIT_EXCEEDED),
                &format!(
                    "Watchlist has {} user ids; at most {MAX_WATCHLIST} are allowed, so it is ignored",
                    watchlist.len()
                ),
            ));
            watchlist.clear();
        }
        worker.sign_in(conn, self.app, id, watchlist);
    }
}

/// Longest client event name.
const MAX_EVENT_NAME_LEN: usize = 200;
/// Longest user id.
pub const MAX_USER_ID_LEN: usize = 128;

/// Checks an `auth` value (`key:hex signature`) against what should have been signed, in
/// constant time.
fn verify_auth(app: &App, auth: Option<&str>, to_sign: &str) -> Result<(), String> {
    let auth = auth.filter(|a| !a.is_empty()).ok_or("auth is missing")?;
    let (key, signature) = auth
        .split_once(':')
        .ok_or("auth must be \"key:signature\"")?;
    if key != app.key {
        return Err("auth key does not match the app key".into());
    }
    if !crate::api::auth::verify_hmac(&app.secret, to_sign, signature) {
        return Err(format!(
            "invalid signature: expected the hex HMAC-SHA256 of {to_sign:?} with the app secret"
        ));
    }
    Ok(())
}

#[derive(serde::Deserialize)]
struct ChannelData<'a> {
    user_id: Option<serde_json::Value>,
    #[serde(borrow, default)]
    user_info: Option<&'a RawValue>,
}

fn user_id(v: Option<serde_json::Value>, field: &str) -> Result<Arc<str>, String> {
    let id = match v {
        Some(serde_json::Value::String(s)) => s,
        Some(serde_json::Value::Number(n)) => n.to_string(),
        _ => return Err(format!("{field} must be a string or a number")),
    };
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(format!("{field} must be 1 to {MAX_USER_ID_LEN} characters"));
    }
    Ok(Arc::from(id))
}

/// The member a presence subscription joins as: user id and `user_info` JSON text.
fn parse_member(channel_data: &str, max_info: usize) -> Result<(Arc<str>, Arc<str>), String> {
    let d: ChannelData = serde_json::from_str(channel_data)
        .map_err(|e| format!("channel_data is not valid JSON: {e}"))?;
    let id = user_id(d.user_id, "channel_data.user_id")?;
    let info = d.user_info.map_or("null", RawValue::get);
    // An absent user_info (sent as `null`) is not counted against the limit.
    if d.user_info.is_some() && info.len() > max_info {
        return Err(format!(
            "user_info is {} bytes; at most {max_info} bytes are allowed",
            info.len()
        ));
    }
    Ok((id, Arc::from(info)))
}

#[derive(serde::Deserialize)]
struct UserData {
    id: serde_json::Value,
    #[serde(default)]
    watchlist: Vec<String>,
}

struct User {
    id: String,
    watchlist: Vec<String>,
}

fn parse_user(user_data: &str) -> Result<User, String> {
    let d: UserData =
        serde_json::from_str(user_data).map_err(|e| format!("user_data is not valid JSON: {e}"))?;
    let id = match d.id {
        serde_json::Value::String(s) => s,
        _ => return Err("user_data.id must be a string".into()),
    };
    if id.is_empty() || id.len() > MAX_USER_ID_LEN {
        return Err(format!(
            "user_data.id must be 1 to {MAX_USER_ID_LEN} characters"
        ));
    }
    if channel::parse(&format!("#server-to-user-{id}")).is_err() {
        return Err("user_data.id may only contain A-Z a-z 0-9 _ - = @ , . ;".into());
    }
    Ok(User {
        id,
        watchlist: d.watchlist,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_take_string_or_numeric_ids_and_bounded_info() {
        let (id, info) = parse_member(
            r#"{"user_id":10,"user_info":{"name":"Mr. Channels"}}"#,
            1024,
        )
        .unwrap();
        assert_eq!(&*id, "10");
        assert_eq!(&*info, r#"{"name":"Mr. Channels"}"#);
        let (id, info) = parse_member(r#"{"user_id":"ann"}"#, 1024).unwrap();
        assert_eq!((&*id, &*info), ("ann", "null"));
        assert!(parse_member(r#"{"user_info":{}}"#, 1024).is_err());
        assert!(parse_member(&format!(r#"{{"user_id":"{}"}}"#, "x".repeat(129)), 1024).is_err());
        assert!(parse_member(r#"{"user_id":"a","user_info":{"n":"xxxxxxxxxx"}}"#, 10).is_err());
        assert!(parse_member("nope", 1024).is_err());
    }

    #[test]
    fn user_data_needs_a_string_id() {
        assert_eq!(parse_user(r#"{"id":"12345"}"#).unwrap().id, "12345");
        let u = parse_user(r#"{"id":"a","watchlist":["b","c"],"user_info":{"x":1}}"#).unwrap();
        assert_eq!(u.watchlist, vec!["b", "c"]);
        assert!(parse_user(r#"{"id":12345}"#).is_err());
        assert!(parse_user(r#"{"id":""}"#).is_err());
        assert!(parse_user(r#"{"id":"a b"}"#).is_err());
    }
}
