//! The worker's connection table: admitting a WebSocket connection, answering its messages
//! through the protocol rules, and forgetting it when it ends.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering;

use super::{ConnsByUser, Worker};
use crate::app::console::Entry;
use crate::app::{AppIdx, ChannelRef};
use crate::hub::broker::ConnRef;
use crate::hub::Conn;
use crate::metrics::WorkerStats;
use crate::pusher::conn::{admit, established, on_close, Admission};

impl Worker {
    /// Registers a new WebSocket connection (of `app`, if a valid one was named; speaking
    /// Pusher or not). A connection the rules turn away (over capacity, over the app's
    /// quota, during a drain) is registered already closing with the code they chose.
    pub fn open_conn(&self, app: Option<AppIdx>, pusher: bool) -> Rc<Conn> {
        let socket_id = self.socket_ids.borrow_mut().next_id();
        let conn = {
            let mut conns = self.conns.borrow_mut();
            let entry = conns.vacant_entry();
            let conn = Rc::new(Conn::new(
                entry.key(),
                socket_id,
                app,
                pusher,
                self.config().limits.max_outbound_buffer,
            ));
            entry.insert(conn.clone());
            conn
        };
        let open = self.shared.connections.fetch_add(1, Ordering::Relaxed) + 1;
        WorkerStats::add(&self.stats.connections, 1);
        WorkerStats::add(&self.stats.connections_total, 1);
        let settings = app.map(|a| self.app(a));
        let admission = Admission {
            open,
            max: self.config().limits.max_connections,
            app_open: settings
                .as_ref()
                .map(|a| a.counters.connections.fetch_add(1, Ordering::Relaxed) + 1),
            app_max: settings.as_ref().map_or(0, |a| a.max_connections),
            shutting_down: self.is_shutting_down(),
        };
        match admit(admission) {
            Ok(()) if pusher && app.is_some() => {
                if let Some(app) = app {
                    self.note(app, || Entry::new("connection_opened").socket(socket_id));
                }
                let activity = self.config().activity_timeout.as_secs();
                self.run_rule(&conn, |_, _, out| established(socket_id, activity, out));
            }
            Ok(()) => {}
            Err(refusal) => {
                if let Some(why) = refusal.rejected {
                    self.stats.rejected(why);
                }
                if let Some(app) = app {
                    self.note(app, || {
                        Entry::new("connection_refused")
                            .socket(socket_id)
                            .detail(&format!("{}: {}", refusal.code, refusal.reason))
                    });
                }
                tracing::debug!(%socket_id, code = refusal.code, reason = %refusal.reason, "connection turned away");
                conn.close(refusal.code, &refusal.reason);
            }
        }
        conn
    }

    /// Answers a client's text message (Pusher connections).
    pub fn on_text(&self, conn: &Rc<Conn>, text: &str) {
        self.run_rule(conn, |state, ctx, out| {
            crate::pusher::on_text(state, ctx, conn.socket_id, text, self, out)
        });
    }

    /// Answers a client's binary message (Pusher connections).
    pub fn on_binary(&self, conn: &Rc<Conn>) {
        self.run_rule(conn, |_, _, out| crate::pusher::on_binary(out));
    }

    /// Forgets a finished connection: it leaves its channels, signs out, and frees its slot.
    pub fn close_conn(&self, conn: &Rc<Conn>) {
        if let Some(app) = conn.app {
            self.note(app, || {
                let detail = match conn.close_code() {
                    Some(code) => format!("code {code}"),
                    None => "lost: no close frame".into(),
                };
                Entry::new("connection_closed")
                    .socket(conn.socket_id)
                    .detail(&detail)
            });
            self.run_rule(conn, |state, _, out| on_close(state, out));
            self.app(app)
                .counters
                .connections
                .fetch_sub(1, Ordering::Relaxed);
        }
        self.conns.borrow_mut().try_remove(conn.id);
        self.shared.connections.fetch_sub(1, Ordering::Relaxed);
        WorkerStats::sub(&self.stats.connections, 1);
    }

    /// Open WebSocket connections on this worker.
    pub fn conn_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// The connection an answer names, if it is still open here.
    pub(super) fn conn(&self, r: ConnRef) -> Option<Rc<Conn>> {
        self.conns
            .borrow()
            .get(r.id)
            .filter(|c| c.socket_id == r.socket_id)
            .cloned()
    }

    /// How answers name `conn`.
    pub(super) fn conn_ref(conn: &Conn) -> ConnRef {
        ConnRef {
            id: conn.id,
            socket_id: conn.socket_id,
        }
    }

    /// The connections in `map` under `key`.
    pub(super) fn conns_of(
        &self,
        map: &RefCell<ConnsByUser>,
        key: ChannelRef<'_>,
    ) -> Vec<Rc<Conn>> {
        let map = map.borrow();
        let Some(ids) = map.get(&key) else {
            return Vec::new();
        };
        let conns = self.conns.borrow();
        ids.iter()
            .filter_map(|id| conns.get(*id).cloned())
            .collect()
    }

    /// Runs `f` on every connection (the table stays borrowed: `f` must not open or close
    /// connections).
    pub(super) fn each_conn(&self, mut f: impl FnMut(&Rc<Conn>)) {
        for (_, conn) in self.conns.borrow().iter() {
            f(conn);
        }
    }

    /// Starts the graceful close of every connection: queued frames drain first, then
    /// `pusher:error` and close 4200 (reconnect now).
    pub fn close_all_for_shutdown(&self) {
        self.each_conn(|conn| {
            conn.close(
                crate::protocol::codes::GENERIC_RECONNECT,
                "Server is shutting down",
            )
        });
    }

    /// Ends every connection task now.
    pub fn kill_all(&self) {
        self.each_conn(|conn| conn.kill());
    }
}

/// Adds connection `id` under `key`.
pub(super) fn add_conn(map: &RefCell<ConnsByUser>, key: ChannelRef<'_>, id: usize) {
    let mut map = map.borrow_mut();
    match map.get_mut(&key) {
        Some(ids) => ids.push(id),
        None => {
            map.insert(key.to_key(), vec![id]);
        }
    }
}

/// Removes connection `id` from under `key`.
pub(super) fn remove_conn(map: &RefCell<ConnsByUser>, key: ChannelRef<'_>, id: usize) {
    let mut map = map.borrow_mut();
    if let Some(ids) = map.get_mut(&key) {
        ids.retain(|&c| c != id);
        if ids.is_empty() {
            map.remove(&key);
        }
    }
}
