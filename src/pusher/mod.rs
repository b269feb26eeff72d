//! The Pusher protocol rules, without IO.
//!
//! Every rule a connection or a broker's answer can trigger is decided here, by plain
//! functions that take an input — a client message, an answer from the broker, a timer tick
//! — with the state they need ([`ConnState`], the app's settings in [`Ctx`], what this node
//! knows through [`NodeView`]) and push [`Effect`]s: frames for the connection, subscriptions
//! to make, events to publish, webhooks to send, counters to bump, close codes. Nothing here
//! touches a socket, reads a clock, takes a lock or waits: the worker ([`crate::worker`])
//! carries the effects out, and the tests drive the rules directly.
//!
//! Where a rule needs an answer only the cluster can give — is this user already a member of
//! the presence channel? is this the channel's first subscriber anywhere? — it asks through
//! an effect, and the answer comes back as another input: [`subscribe::subscribe`] ends with
//! [`Effect::JoinPresence`], the broker decides, and [`subscribe::on_joined`] finishes the
//! subscription. Whether the answer comes at once (one node) or later (through the worker's
//! inbox) makes no difference to the rules.
//!
//! | Rule | Where |
//! |---|---|
//! | admission (4100, 4004, 4200), `connection_established`, what a closed connection leaves | [`conn`] |
//! | client messages: ping, parse errors, unknown events, binary frames | [`on_text`], [`on_binary`] |
//! | subscribe, unsubscribe, channel auth, channel limits, presence members, cache replay | [`subscribe`] |
//! | channel occupied / vacated, subscription counts | [`occupancy`] |
//! | client events | [`client_event`] |
//! | sign-in, watchlists, terminating a user's connections | [`user`] |
//! | pings, pong timeout (4201), authorization timeout (4009), disabled apps (4003) | [`liveness`] |

pub mod client_event;
pub mod conn;
mod error;
pub mod liveness;
pub mod occupancy;
pub mod subscribe;
pub mod user;

use std::sync::Arc;

use bytes::Bytes;

pub use conn::ConnState;
pub use error::{
    AuthError, ClientEventError, MemberError, SigninError, SubscriptionError, UserDataError,
};

use crate::app::{App, AppIdx, ChannelRef};
use crate::clock::Tick;
use crate::config::Limits;
use crate::metrics::Limited;
use crate::protocol::channel::ChannelKind;
use crate::protocol::client::{self, ClientMessage};
use crate::protocol::{messages, signature, webhook, SocketId};
use crate::ws::close_code;

/// What a rule knows about the app and the moment.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    /// The app.
    pub app: AppIdx,
    /// Its settings.
    pub settings: &'a App,
    /// The server's size and count limits.
    pub limits: &'a Limits,
    /// Now.
    pub now: Tick,
}

impl Ctx<'_> {
    /// A webhook event, if the app has a webhook that wants `kind`.
    fn webhook(&self, kind: webhook::Kind, channel: &str) -> Option<webhook::Event> {
        self.settings
            .wants_webhook(kind)
            .then(|| webhook::Event::new(kind, channel))
    }
}

/// What the rules may ask about this node's channels.
pub trait NodeView {
    /// Whether the channel has subscribers.
    fn occupied(&self, channel: ChannelRef<'_>) -> bool;
    /// Occupied channels over all apps.
    fn channels_open(&self) -> u64;
}

/// A presence channel member: a user id and its `user_info` (JSON text, `null` when absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// The user id.
    pub user_id: Arc<str>,
    /// `user_info` as JSON text.
    pub user_info: Arc<str>,
}

/// A presence membership being left.
#[derive(Debug, Clone, PartialEq)]
pub struct Leaving {
    /// The user id it was joined as.
    pub user: Arc<str>,
    /// `pusher_internal:member_removed`, published by the broker if it is the user's last
    /// connection.
    pub announce: Bytes,
}

/// A presence channel's members as a subscriber receives them: the encoded
/// `pusher_internal:subscription_succeeded` frame with the channel's `presence` data. The
/// broker builds it once per change of membership and hands the same bytes to every
/// subscription until the next change, so re-subscribing to a large channel costs a
/// reference count, not a rebuilt snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roster(Bytes);

impl Roster {
    /// Encodes `members` (in joining order) for `channel`.
    pub fn of(channel: &str, members: &[Member]) -> Self {
        let data = messages::presence_data(members.iter().map(|m| (&*m.user_id, &*m.user_info)));
        Self(messages::subscription_succeeded_with(channel, &data))
    }

    /// The frame.
    pub fn frame(&self) -> &Bytes {
        &self.0
    }
}

/// The broker's answer to a presence join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joined {
    /// The user's first connection in the channel: the others are told `member_added`.
    /// Carries the members now, in joining order.
    First(Roster),
    /// Another connection of a member already there. Carries the members now.
    Again(Roster),
    /// The user's first connection again, within the webhook debounce of their leaving
    /// (decided on another node, which drops its held `member_removed`): the others are
    /// told `member_added`, the app nothing.
    Back(Roster),
    /// The channel has its maximum of members and this user is not one of them.
    Full,
}

/// How the cluster decided a change that has a webhook (`channel_occupied`/`vacated`,
/// `member_removed`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Send the webhook (a leave after the debounce): the decision is this node's alone.
    #[default]
    Send,
    /// A return within the debounce of a leave decided on another node: no webhook, and
    /// that node drops its held leave.
    Quiet,
    /// A leave whose webhook the debounce holds; at its end the webhook goes out only if
    /// the cluster confirms that no return, on any node, cancelled it. The token names the
    /// decision.
    Confirm(Arc<str>),
}

impl Verdict {
    /// `event` as this verdict sends it: `None` when quiet.
    pub fn apply(&self, mut event: webhook::Event) -> Option<webhook::Event> {
        match self {
            Verdict::Send => Some(event),
            Verdict::Quiet => None,
            Verdict::Confirm(token) => {
                event.confirm = Some(token.clone());
                Some(event)
            }
        }
    }
}

/// What a rule decided. The worker carries effects out in the order they were pushed.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Queue a frame for the connection the input came from.
    Send(Bytes),
    /// Close that connection with `code` (after what is queued; a Pusher connection gets a
    /// `pusher:error` with the code, if it is a 4xxx, and `reason` first).
    Close {
        /// The close code.
        code: u16,
        /// Why.
        reason: String,
    },
    /// End that connection now, whatever is queued.
    Kill,
    /// Make the connection a subscriber of `channel` on this node; once the node receives
    /// the channel's events from everywhere, [`subscribe::on_subscribed`] answers the client.
    Subscribe {
        /// The channel.
        channel: Arc<str>,
        /// Its kind.
        kind: ChannelKind,
        /// The presence member it joins as, once subscribed.
        member: Option<Member>,
    },
    /// End the connection's subscription of `channel`.
    Unsubscribe {
        /// The channel.
        channel: Arc<str>,
        /// Its kind.
        kind: ChannelKind,
        /// The presence membership it leaves, if it had joined as a member.
        leave: Option<Leaving>,
    },
    /// Ask the broker to add the connection to `channel`'s presence members (publishing
    /// `announce` if it is the user's first); the answer goes to [`subscribe::on_joined`].
    JoinPresence {
        /// The channel.
        channel: Arc<str>,
        /// Who joins.
        member: Member,
        /// `pusher_internal:member_added` for the other subscribers.
        announce: Bytes,
    },
    /// Ask the broker for `channel`'s members, to answer a repeated subscription; the
    /// answer goes to [`subscribe::on_members`].
    ListPresence {
        /// The channel.
        channel: Arc<str>,
    },
    /// Ask the broker for the cache channel's last event; the answer goes to
    /// [`subscribe::on_cache`].
    ReplayCache {
        /// The channel.
        channel: Arc<str>,
    },
    /// Deliver `frame` to `channel`'s subscribers on every worker and node.
    Publish {
        /// The channel.
        channel: Arc<str>,
        /// The encoded frame.
        frame: Bytes,
        /// A connection that must not get it (the sender).
        except: Option<SocketId>,
    },
    /// Send a webhook event.
    Webhook(webhook::Event),
    /// Count something a limit refused.
    Limited(Limited),
    /// Count a client event relayed.
    ClientEventRelayed,
    /// Record that the connection signed in as `user`, watching `watchlist`; the broker's
    /// answer goes to [`user::on_signed_in`].
    SignIn {
        /// The user id.
        user: Arc<str>,
        /// The user ids it watches.
        watchlist: Vec<Arc<str>>,
    },
    /// Record that a signed-in connection is going away; the broker's answer goes to
    /// [`user::on_signed_out`].
    SignOut {
        /// The user id.
        user: Arc<str>,
        /// The user ids it watched.
        watchlist: Vec<Arc<str>>,
    },
    /// Tell the connections watching `user`, on every worker and node, that it came online
    /// or went offline.
    Watchlist {
        /// The user id.
        user: Arc<str>,
        /// Online or offline.
        online: bool,
    },
}

/// Checks an `auth` value (`key:hex signature`) against what should have been signed, in
/// constant time.
fn authorize(settings: &App, auth: Option<&str>, signed: &str) -> Result<(), AuthError> {
    let auth = auth.filter(|a| !a.is_empty()).ok_or(AuthError::Missing)?;
    let (key, signature) = auth.split_once(':').ok_or(AuthError::Malformed)?;
    if key != settings.key {
        return Err(AuthError::WrongKey);
    }
    if !signature::verify_hmac(&settings.secret, signed, signature) {
        return Err(AuthError::BadSignature {
            signed: signed.to_string(),
        });
    }
    Ok(())
}

/// Answers a client's text message.
pub fn on_text(
    conn: &mut ConnState,
    ctx: &Ctx<'_>,
    socket_id: SocketId,
    text: &str,
    node: &impl NodeView,
    out: &mut Vec<Effect>,
) {
    let msg = match client::parse(text) {
        Ok(m) => m,
        Err(e) => return out.push(Effect::Send(messages::error(None, &e.to_string()))),
    };
    match msg {
        ClientMessage::Ping => out.push(Effect::Send(messages::pong())),
        ClientMessage::Pong => {}
        ClientMessage::Subscribe(s) => subscribe::subscribe(conn, ctx, socket_id, &s, node, out),
        ClientMessage::Unsubscribe(u) => subscribe::unsubscribe(conn, &u.channel, out),
        ClientMessage::Signin(s) => user::signin(conn, ctx, socket_id, &s, out),
        ClientMessage::ClientEvent {
            event,
            channel,
            data,
        } => {
            client_event::client_event(conn, ctx, socket_id, &event, channel.as_deref(), data, out)
        }
        ClientMessage::Unknown(event) => out.push(Effect::Send(messages::error(
            None,
            &format!("Unsupported event: {event}"),
        ))),
    }
}

/// Answers a binary message: the Pusher protocol is JSON text only.
pub fn on_binary(out: &mut Vec<Effect>) {
    out.push(Effect::Close {
        code: close_code::UNSUPPORTED_DATA,
        reason: "Binary frames are not supported: send JSON text messages".into(),
    });
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::*;
    use super::*;

    #[test]
    fn ping_is_answered_with_pong() {
        let mut t = Test::new();
        let out = t.text(r#"{"event":"pusher:ping","data":{}}"#);
        assert_eq!(out, vec![Effect::Send(messages::pong())]);
        assert!(t.text(r#"{"event":"pusher:pong","data":{}}"#).is_empty());
    }

    #[test]
    fn malformed_and_unknown_messages_get_pusher_error_with_null_code() {
        let mut t = Test::new();
        for (text, message) in [
            (
                "not json",
                "Invalid message format: expected a JSON object with a string \"event\"",
            ),
            ("{\"event\":\"whatever\"}", "Unsupported event: whatever"),
        ] {
            let out = t.text(text);
            let [Effect::Send(frame)] = &out[..] else {
                panic!("{out:?}")
            };
            let v = frame_json(frame);
            assert_eq!(v["event"], "pusher:error");
            assert!(v["data"]["code"].is_null());
            assert_eq!(v["data"]["message"], message);
        }
    }

    #[test]
    fn binary_frames_close_with_1003() {
        let mut out = Vec::new();
        on_binary(&mut out);
        assert!(matches!(&out[..], [Effect::Close { code: 1003, .. }]));
    }
}
