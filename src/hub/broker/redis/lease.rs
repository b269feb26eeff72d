//! Leases, and clearing what dead nodes held — without a leader.
//!
//! Each run of a node is a *session* (`node-id#random`) holding a lease in `P:nodes`, renewed
//! every third of `--node-timeout` by [`heartbeat`], which also returns the sessions whose
//! leases have expired (by Redis's clock: the nodes' clocks never matter). Any live node may
//! then clear one with [`Reaper::reap`]: it claims the session (`SET … NX PX`, so one node
//! does the work while others skip it; a claim left by a node that died mid-way expires and
//! another takes over), then, for every channel and user the session registered something
//! in (its `held` set), runs a script that removes that session's entries and publishes
//! `member_removed` for each user left with no connection. The scripts are idempotent, so a
//! session cleared twice is cleared once: each `member_removed`, `channel_vacated` and
//! watchlist `offline` is decided exactly once.

use std::sync::Arc;
use std::time::Duration;

use redis::{RedisResult, Value};

use super::conn::Conn;
use super::keys::{Held, Keys};
use super::wire::{self, UserKind, UserMessage};
use super::{scripts, BrokerStatus};
use crate::app::LiveApps;
use crate::protocol::webhook::{Event, Kind};
use crate::webhooks::Webhooks;

/// What a heartbeat found.
#[derive(Debug)]
pub(super) struct Beat {
    /// Whether the session's lease was still valid (and is now extended).
    pub held: bool,
    /// Other sessions whose leases have expired.
    pub dead: Vec<String>,
}

/// Renews `session`'s lease (or, with `register`, takes one even if it had none).
pub(super) async fn heartbeat(
    conn: &mut Conn,
    keys: &Keys,
    session: &str,
    lease: Duration,
    register: bool,
) -> RedisResult<Beat> {
    let out: Vec<Value> = scripts::HEARTBEAT
        .key(keys.nodes())
        .arg(session)
        .arg(lease.as_millis() as u64)
        .arg(if register { "1" } else { "0" })
        .invoke_async(conn)
        .await?;
    let mut it = out.into_iter();
    let held = matches!(it.next(), Some(Value::Int(1)));
    let dead = it
        .filter_map(|v| match v {
            Value::BulkString(b) => String::from_utf8(b).ok(),
            _ => None,
        })
        .collect();
    Ok(Beat { held, dead })
}

/// A new session id for node `node_id`.
pub(super) fn new_session(node_id: &str) -> String {
    format!("{node_id}#{:08x}", rand::random::<u32>())
}

/// Clears dead sessions.
#[derive(Clone)]
pub(super) struct Reaper {
    pub keys: Keys,
    pub apps: LiveApps,
    pub webhooks: Webhooks,
    pub status: Arc<BrokerStatus>,
    /// How long a claim on a dead session lasts.
    pub lease: Duration,
    /// `PUBLISH`, or `SPUBLISH` on a Redis Cluster.
    pub publish: &'static str,
}

/// What clearing one session removed.
#[derive(Debug, Default)]
pub(super) struct Reaped {
    pub channels: usize,
    pub members: usize,
    pub users: usize,
}

impl Reaper {
    /// Clears session `dead` on behalf of session `me`; `None` if another node has claimed
    /// it. With `forget`, its lease and `held` set go too (otherwise they stay until the
    /// lease expires and another node clears it again, finding what is left, if anything).
    pub async fn reap(
        &self,
        mut conn: Conn,
        me: &str,
        dead: &str,
        forget: bool,
    ) -> RedisResult<Option<Reaped>> {
        let claimed: Option<String> = redis::cmd("SET")
            .arg(self.keys.reaper(dead))
            .arg(me)
            .arg("NX")
            .arg("PX")
            .arg(self.lease.as_millis() as u64)
            .query_async(&mut conn)
            .await?;
        if claimed.is_none() {
            return Ok(None);
        }
        let held: Vec<String> = redis::cmd("SMEMBERS")
            .arg(self.keys.held(dead))
            .query_async(&mut conn)
            .await?;
        let mut reaped = Reaped::default();
        // The webhooks this decides are held and confirmed like any leave's.
        let token: Arc<str> = Arc::from(format!("{me}\nclearing {dead}"));
        for entry in held.iter().filter_map(|e| Held::parse(e)) {
            match entry {
                Held::Channel(app_id, name) => {
                    self.channel(&mut conn, dead, &app_id, &name, &token, &mut reaped)
                        .await?
                }
                Held::User(app_id, user) => {
                    self.user(&mut conn, dead, &app_id, &user, &mut reaped)
                        .await?
                }
            }
        }
        // One command each: the keys are in different slots of a Redis Cluster.
        if forget {
            redis::cmd("DEL")
                .arg(self.keys.held(dead))
                .query_async::<()>(&mut conn)
                .await?;
            redis::cmd("ZREM")
                .arg(self.keys.nodes())
                .arg(dead)
                .query_async::<()>(&mut conn)
                .await?;
            self.status
                .reaped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        redis::cmd("DEL")
            .arg(self.keys.reaper(dead))
            .query_async::<()>(&mut conn)
            .await?;
        Ok(Some(reaped))
    }

    async fn channel(
        &self,
        conn: &mut Conn,
        dead: &str,
        app_id: &str,
        name: &str,
        token: &Arc<str>,
        reaped: &mut Reaped,
    ) -> RedisResult<()> {
        let k = self.keys.channel(app_id, name);
        let out: Vec<Value> = scripts::REAP_CHANNEL
            .key(&k.subs)
            .key(&k.total)
            .key(&k.members)
            .key(&k.order)
            .key(&k.conns)
            .key(&k.uconns)
            .key(&k.seq)
            .key(&k.events)
            .key(&k.vacated)
            .key(&k.left)
            .arg(dead)
            .arg(name)
            .arg(self.publish)
            .arg(&**token)
            .invoke_async(conn)
            .await?;
        let mut it = out.into_iter();
        let int = |v: Option<Value>| match v {
            Some(Value::Int(n)) => n,
            _ => 0,
        };
        let (before, after) = (int(it.next()), int(it.next()));
        let removed: Vec<Arc<str>> = it
            .filter_map(|v| match v {
                Value::BulkString(b) => std::str::from_utf8(&b).ok().map(Arc::from),
                _ => None,
            })
            .collect();
        reaped.channels += 1;
        reaped.members += removed.len();
        let vacated = before > 0 && after == 0;
        if vacated {
            redis::cmd("SREM")
                .arg(self.keys.app_channels(app_id))
                .arg(name)
                .query_async::<()>(conn)
                .await?;
        }
        // The webhooks this clearing decided, from this node (the one that decided them).
        let apps = self.apps.load();
        let Some(idx) = apps.by_id(app_id) else {
            return Ok(());
        };
        let app = apps.get(idx);
        if name.starts_with('#') {
            return Ok(());
        }
        for user in &removed {
            if app.wants_webhook(Kind::MemberRemoved) {
                let mut e = Event::new(Kind::MemberRemoved, name).with_user(user);
                e.confirm = Some(token.clone());
                self.webhooks.send(idx, e);
            }
        }
        if vacated && app.wants_webhook(Kind::ChannelVacated) {
            let mut e = Event::new(Kind::ChannelVacated, name);
            e.confirm = Some(token.clone());
            self.webhooks.send(idx, e);
        }
        Ok(())
    }

    async fn user(
        &self,
        conn: &mut Conn,
        dead: &str,
        app_id: &str,
        user: &str,
        reaped: &mut Reaped,
    ) -> RedisResult<()> {
        let offline: i64 = scripts::REAP_USER
            .key(self.keys.user(app_id, user))
            .arg(format!("{dead}\n"))
            .invoke_async(conn)
            .await?;
        if offline != 1 {
            return Ok(());
        }
        reaped.users += 1;
        // Watchers on every node, this one included (the message has no origin to skip).
        let msg = UserMessage {
            origin: wire::NOBODY,
            app_id: app_id.to_string(),
            user: user.to_string(),
            kind: UserKind::Offline,
        };
        redis::cmd(self.publish)
            .arg(self.keys.control())
            .arg(wire::user_message(&msg).as_ref())
            .query_async::<()>(conn)
            .await?;
        Ok(())
    }
}
