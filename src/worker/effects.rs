//! Carrying out what the protocol rules decide, and feeding the broker's answers back to
//! them.
//!
//! A rule runs with the connection's state borrowed and returns its effects; they are
//! carried out after the borrow ends, in order. An effect that asks the broker (a presence
//! join, a count) gets its answer at once from a one-node broker, or later through the
//! inbox from a networked one: either way the answer goes through [`Worker::answer`] to the
//! rule that finishes the job.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::conns::{add_conn, remove_conn};
use super::Worker;
use crate::app::console::Entry;
use crate::app::{AppIdx, ChannelKey, ChannelRef};
use crate::clock::tick_now;
use crate::hub::broker::{Count, ForConn, Join, Leave, Replay, SignIn, SignOut, UserMsg};
use crate::hub::{Answer, Conn, Delivery};
use crate::metrics::WorkerStats;
use crate::protocol::channel::ChannelKind;
use crate::protocol::SocketId;
use crate::pusher::occupancy::{self, Change};
use crate::pusher::{subscribe, user, ConnState, Ctx, Effect, Joined, Leaving, Member};

impl Worker {
    /// Runs a protocol rule for `conn` (of a valid app) and carries out its effects.
    pub(super) fn run_rule(
        &self,
        conn: &Rc<Conn>,
        rule: impl FnOnce(&mut ConnState, &Ctx<'_>, &mut Vec<Effect>),
    ) {
        if let Some(app) = conn.app {
            // The state is borrowed by the rule only: its effects are carried out after.
            self.run_app_rule(app, Some(conn), |ctx, out| {
                rule(&mut conn.state.borrow_mut(), ctx, out)
            });
        }
    }

    /// Runs a rule of `app` that needs no connection state (`conn`, if still open, gets any
    /// frames it decides).
    fn run_app_rule(
        &self,
        app: AppIdx,
        conn: Option<&Rc<Conn>>,
        rule: impl FnOnce(&Ctx<'_>, &mut Vec<Effect>),
    ) {
        let settings = self.app(app);
        let ctx = Ctx {
            app,
            settings: &settings,
            limits: &self.config().limits,
            now: tick_now(),
        };
        let mut out = Vec::new();
        rule(&ctx, &mut out);
        self.carry_out(conn, &ctx, out);
    }

    fn carry_out(&self, conn: Option<&Rc<Conn>>, ctx: &Ctx<'_>, effects: Vec<Effect>) {
        let app = ctx.app;
        for effect in effects {
            match (effect, conn) {
                (Effect::Send(frame), Some(conn)) => {
                    self.note_refusal(app, conn, &frame);
                    conn.push(frame);
                }
                (Effect::Close { code, reason }, Some(conn)) => conn.close(code, &reason),
                (Effect::Kill, Some(conn)) => conn.kill(),
                (
                    Effect::Subscribe {
                        channel,
                        kind,
                        member,
                    },
                    Some(conn),
                ) => self.subscribed(conn, app, channel, kind, member),
                (
                    Effect::Unsubscribe {
                        channel,
                        kind,
                        leave,
                    },
                    Some(conn),
                ) => self.unsubscribed(conn, app, channel, kind, leave),
                (
                    Effect::JoinPresence {
                        channel,
                        member,
                        announce,
                    },
                    Some(conn),
                ) => {
                    let req = Join {
                        conn: Self::conn_ref(conn),
                        channel: ChannelKey { app, name: channel },
                        member,
                        max_members: ctx.settings.max_presence_members,
                        announce,
                    };
                    self.then(self.shared.broker.join(self.index, req));
                }
                (Effect::ListPresence { channel }, Some(conn)) => {
                    let req = ForConn {
                        conn: Self::conn_ref(conn),
                        channel: ChannelKey { app, name: channel },
                    };
                    self.then(self.shared.broker.members(self.index, req));
                }
                (Effect::ReplayCache { channel }, Some(conn)) => {
                    let req = ForConn {
                        conn: Self::conn_ref(conn),
                        channel: ChannelKey { app, name: channel },
                    };
                    self.then(self.shared.broker.replay(self.index, req));
                }
                (Effect::SignIn { user, watchlist }, Some(conn)) => {
                    self.signed_in(conn, app, user, watchlist)
                }
                (Effect::SignOut { user, watchlist }, Some(conn)) => {
                    self.signed_out(conn, app, user, watchlist)
                }
                (
                    Effect::Publish {
                        channel,
                        frame,
                        except,
                    },
                    _,
                ) => {
                    self.note_client_event(app, &channel, &frame, except);
                    self.publish_now(vec![Delivery {
                        channel: ChannelKey { app, name: channel },
                        frame,
                        except,
                        published_at: 0,
                    }])
                }
                (Effect::Webhook(event), _) => self.shared.webhooks.send(app, event),
                (Effect::Limited(limit), _) => self.stats.limited(limit),
                (Effect::ClientEventRelayed, _) => WorkerStats::add(&self.stats.client_events, 1),
                (Effect::Watchlist { user, online }, _) => {
                    self.tell_users(UserMsg::Watchlist { app, user, online })
                }
                // Frames for a connection that closed before the broker answered.
                (_, None) => {}
            }
        }
    }

    /// Carries on with the broker's answer, if it came at once (otherwise it comes through
    /// the inbox).
    /// Asks the broker to say when it has answered everything this worker asked
    /// ([`Worker::settled`]).
    pub fn settle(&self) {
        self.then(self.shared.broker.barrier(self.index));
    }

    fn then(&self, answer: Option<Answer>) {
        if let Some(answer) = answer {
            self.answer(answer);
        }
    }

    /// Feeds a broker's answer to the rule waiting for it.
    pub(super) fn answer(&self, answer: Answer) {
        match answer {
            Answer::Barrier => self.settled.set(true),
            Answer::Interested(channel) => {
                let waiting = self.waiting.borrow_mut().remove(&channel);
                for (conn, member) in waiting.into_iter().flatten() {
                    if let Some(conn) = self.conn(conn) {
                        self.run_rule(&conn, |state, _, out| {
                            subscribe::on_subscribed(state, &channel.name, member, out)
                        });
                    }
                }
            }
            Answer::Joined(req, joined) => {
                if matches!(joined, Joined::First(_) | Joined::Back(_)) {
                    self.note(req.channel.app, || {
                        Entry::new("member_added")
                            .channel(&req.channel.name)
                            .socket(req.conn.socket_id)
                            .detail(&req.member.user_id)
                    });
                }
                if let Some(conn) = self.conn(req.conn) {
                    let (channel, member) = (req.channel.name, req.member);
                    self.run_rule(&conn, |state, ctx, out| {
                        subscribe::on_joined(state, ctx, &channel, &member, joined, out)
                    });
                }
            }
            Answer::Left(req, last, verdict) => {
                if last {
                    self.note(req.channel.app, || {
                        Entry::new("member_removed")
                            .channel(&req.channel.name)
                            .socket(req.socket_id)
                            .detail(&req.user)
                    });
                }
                self.run_app_rule(req.channel.app, None, |ctx, out| {
                    subscribe::on_left(ctx, &req.channel.name, &req.user, last, &verdict, out)
                });
            }
            Answer::Counted(req, count, verdict) => {
                self.run_app_rule(req.channel.app, None, |ctx, out| {
                    let mut throttle = self.counts.borrow_mut();
                    let counted = occupancy::Counted {
                        channel: &req.channel.name,
                        kind: req.kind,
                        change: req.change,
                        count,
                        verdict: &verdict,
                    };
                    occupancy::on_count(ctx, &mut throttle, counted, out)
                });
            }
            Answer::Members(req, roster) => {
                if let Some(conn) = self.conn(req.conn) {
                    self.run_app_rule(req.channel.app, Some(&conn), |_, out| {
                        subscribe::on_members(&roster, out)
                    });
                }
            }
            Answer::Replayed(req, replay) => {
                if let Some(conn) = self.conn(req.conn) {
                    let (cached, first_miss) = match replay {
                        Replay::Hit(frame) => (Some(frame), false),
                        Replay::Miss { first } => (None, first),
                    };
                    self.run_app_rule(req.channel.app, Some(&conn), |ctx, out| {
                        subscribe::on_cache(ctx, &req.channel.name, cached, first_miss, out)
                    });
                }
            }
            Answer::SignedIn {
                req,
                came_online,
                watched_online,
            } => {
                self.note(req.app, || {
                    Entry::new("signed_in")
                        .socket(req.conn.socket_id)
                        .detail(&req.user)
                });
                // Watchers are told even if the connection has gone meanwhile (its sign-out
                // follows this sign-in to the broker).
                let conn = self.conn(req.conn);
                self.run_app_rule(req.app, conn.as_ref(), |_, out| {
                    user::on_signed_in(&req.user, came_online, &watched_online, out)
                });
            }
            Answer::SignedOut(req, went_offline) => {
                self.run_app_rule(req.app, None, |_, out| {
                    user::on_signed_out(&req.user, went_offline, out)
                });
            }
        }
    }

    /// Makes `conn` a subscriber of `channel` on this worker.
    /// Makes `conn` a subscriber of `channel` on this worker. The subscription is answered
    /// ([`subscribe::on_subscribed`]) once this node receives the channel's events: at once
    /// if this worker has subscribers of it already, otherwise when the broker answers the
    /// worker's declaration of interest.
    fn subscribed(
        &self,
        conn: &Rc<Conn>,
        app: AppIdx,
        channel: Arc<str>,
        kind: ChannelKind,
        member: Option<Member>,
    ) {
        let key = ChannelKey { app, name: channel };
        let Some(first_here) = self.channels.add(&key, conn) else {
            return;
        };
        self.note(app, || {
            Entry::new("subscribed")
                .channel(&key.name)
                .socket(conn.socket_id)
        });
        // Mark this worker in the shared index before the client hears of success.
        let count = self.shared.index.add(key.clone(), self.index);
        self.stats.subscription(kind, 1);
        if count == 1 {
            self.stats.channel(kind, 1);
            self.app(app)
                .counters
                .channels
                .fetch_add(1, Ordering::Relaxed);
        }
        let waiting = (Self::conn_ref(conn), member);
        let mut pending = self.waiting.borrow_mut();
        if let Some(list) = pending.get_mut(&key) {
            list.push(waiting);
            drop(pending);
        } else if first_here {
            pending.insert(key.clone(), vec![waiting]);
            drop(pending);
            self.then(self.shared.broker.interest(self.index, key.as_ref(), true));
        } else {
            drop(pending);
            let (_, member) = waiting;
            self.run_rule(conn, |state, _, out| {
                subscribe::on_subscribed(state, &key.name, member, out)
            });
        }
        self.count(key, kind, Change::Subscribed, count);
    }

    /// Ends `conn`'s subscription of `channel` on this worker, leaving its presence
    /// membership first.
    fn unsubscribed(
        &self,
        conn: &Conn,
        app: AppIdx,
        channel: Arc<str>,
        kind: ChannelKind,
        leave: Option<Leaving>,
    ) {
        let key = ChannelKey { app, name: channel };
        let Some(last_here) = self.channels.remove(key.as_ref(), conn.id) else {
            return;
        };
        self.note(app, || {
            Entry::new("unsubscribed")
                .channel(&key.name)
                .socket(conn.socket_id)
        });
        if let Some(Leaving { user, announce }) = leave {
            let req = Leave {
                socket_id: conn.socket_id,
                channel: key.clone(),
                user,
                announce,
            };
            self.then(self.shared.broker.leave(self.index, req));
        }
        if last_here {
            self.then(self.shared.broker.interest(self.index, key.as_ref(), false));
        }
        let count = self.shared.index.remove(key.clone(), self.index, last_here);
        self.stats.subscription(kind, -1);
        if count == Some(0) {
            self.stats.channel(kind, -1);
            self.app(app)
                .counters
                .channels
                .fetch_sub(1, Ordering::Relaxed);
        }
        if let Some(count) = count {
            self.count(key, kind, Change::Unsubscribed, count);
        }
    }

    /// Asks the broker for `channel`'s count over the cluster after `change` (`node_count`
    /// on this node).
    pub(super) fn count(
        &self,
        channel: ChannelKey,
        kind: ChannelKind,
        change: Change,
        node_count: u64,
    ) {
        let req = Count {
            channel,
            kind,
            change,
            node_count,
        };
        self.then(self.shared.broker.count(self.index, req));
    }

    /// Records that `conn` signed in as `user`, watching `watchlist`.
    fn signed_in(&self, conn: &Rc<Conn>, app: AppIdx, user: Arc<str>, watchlist: Vec<Arc<str>>) {
        add_conn(&self.signed_in, ChannelRef { app, name: &user }, conn.id);
        for w in &watchlist {
            add_conn(&self.watchers, ChannelRef { app, name: w }, conn.id);
        }
        let req = SignIn {
            conn: Self::conn_ref(conn),
            app,
            user,
            watchlist,
        };
        self.then(self.shared.broker.sign_in(self.index, req));
    }

    /// Records that signed-in `conn` is going away.
    fn signed_out(&self, conn: &Conn, app: AppIdx, user: Arc<str>, watchlist: Vec<Arc<str>>) {
        for w in &watchlist {
            remove_conn(&self.watchers, ChannelRef { app, name: w }, conn.id);
        }
        remove_conn(&self.signed_in, ChannelRef { app, name: &user }, conn.id);
        let req = SignOut {
            socket_id: conn.socket_id,
            app,
            user,
        };
        self.then(self.shared.broker.sign_out(self.index, req));
    }

    /// Applies a user-level message to this worker's connections.
    pub(super) fn apply_user_msg(&self, msg: &UserMsg) {
        match msg {
            UserMsg::Terminate { app, user } => {
                let key = ChannelRef {
                    app: *app,
                    name: user,
                };
                for conn in self.conns_of(&self.signed_in, key) {
                    self.run_rule(&conn, |_, _, out| user::terminated(out));
                }
            }
            UserMsg::Watchlist { app, user, online } => {
                let key = ChannelRef {
                    app: *app,
                    name: user,
                };
                let watching = self.conns_of(&self.watchers, key);
                if !watching.is_empty() {
                    let frame = user::watchlist_changed(user, *online);
                    for conn in watching {
                        conn.push(frame.clone());
                    }
                }
            }
        }
    }
}

impl Worker {
    /// Logs a `pusher:subscription_error` or `pusher:error` sent to `conn`, if a console
    /// watches its app.
    fn note_refusal(&self, app: AppIdx, conn: &Conn, frame: &bytes::Bytes) {
        const SUBSCRIPTION_ERROR: &[u8] = br#"{"event":"pusher:subscription_error""#;
        const ERROR: &[u8] = br#"{"event":"pusher:error""#;
        if !crate::app::console::watching() {
            return;
        }
        let payload = crate::ws::codec::payload_of(frame);
        let kind = if payload.starts_with(SUBSCRIPTION_ERROR) {
            "subscription_error"
        } else if payload.starts_with(ERROR) {
            "error"
        } else {
            return;
        };
        self.note(app, || {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let mut e = Entry::new(kind).socket(conn.socket_id);
            if let Some(channel) = v["channel"].as_str() {
                e = e.channel(&Arc::from(channel));
            }
            e.detail(&data_text(&v))
        });
    }

    /// Logs and counts a client event a connection published, if a console watches its
    /// app (the rules also publish `pusher_internal:subscription_count`, which is not one).
    fn note_client_event(
        &self,
        app: AppIdx,
        channel: &Arc<str>,
        frame: &bytes::Bytes,
        except: Option<SocketId>,
    ) {
        const CLIENT_EVENT: &[u8] = br#"{"event":"client-"#;
        if !crate::app::console::watching() {
            return;
        }
        let payload = crate::ws::codec::payload_of(frame);
        if !payload.starts_with(CLIENT_EVENT) {
            return;
        }
        self.count_in(app, 1);
        self.note(app, || {
            let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
            let data = data_text(&v);
            let mut e = Entry::new("client_event")
                .channel(channel)
                .event(v["event"].as_str().unwrap_or(""))
                .detail(&data);
            if let Some(s) = except {
                e = e.socket(s);
            }
            e
        });
    }
}

/// A frame's `data` as the console shows it: a string as it is, anything else as JSON text.
fn data_text(frame: &serde_json::Value) -> String {
    match &frame["data"] {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
