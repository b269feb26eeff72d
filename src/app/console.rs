//! What the live console shows of an app that the rest of the server does not keep: the
//! event log (recorded only while a console watches the app), the messages in and out
//! counted for its rates (the same), and the app's recent webhook deliveries (always; they
//! are few).
//!
//! Nothing here costs anything while no console is open beyond one relaxed load of
//! [`watching`]: every recording site checks it first.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;

/// Log entries kept per app; a console that falls further behind is told what it missed.
pub const LOG_CAPACITY: usize = 1_000;
/// Webhook deliveries kept per app.
pub const DELIVERIES_KEPT: usize = 100;
/// Longest `detail` of a log entry, in bytes.
pub const DETAIL_MAX: usize = 1_024;

/// Consoles watching any app on this node.
static WATCHERS: AtomicUsize = AtomicUsize::new(0);

/// Whether any console is watching any app: the one check on every recording path.
#[inline]
pub fn watching() -> bool {
    WATCHERS.load(Ordering::Relaxed) != 0
}

/// Counts `n` deliveries to `app`'s subscribers for its console's rates, if a console
/// watches: what every fan-out does after queueing a frame (one relaxed load otherwise).
#[inline]
pub fn count_delivered(apps: &super::LiveApps, app: super::AppIdx, n: u64) {
    if watching() {
        apps.load().get(app).console.count_out(n);
    }
}

/// One happening, as the console's event log shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Entry {
    /// Its place in the app's log (from 1, never reused).
    pub seq: u64,
    /// When, in milliseconds since the Unix epoch.
    pub at: u64,
    /// What happened (`connection_opened`, `api_message`, `webhook_failed`, …).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The channel, if it concerns one.
    pub channel: Option<Arc<str>>,
    /// The event name, if it concerns one.
    pub event: Option<String>,
    /// The connection, if it concerns one.
    pub socket_id: Option<String>,
    /// The rest (data, close code, error), at most [`DETAIL_MAX`] bytes.
    pub detail: String,
}

impl Entry {
    /// An entry of `kind` with nothing else set (the log numbers and times it).
    pub fn new(kind: &'static str) -> Self {
        Self {
            seq: 0,
            at: 0,
            kind,
            channel: None,
            event: None,
            socket_id: None,
            detail: String::new(),
        }
    }

    /// With a channel.
    pub fn channel(mut self, channel: &Arc<str>) -> Self {
        self.channel = Some(channel.clone());
        self
    }

    /// With an event name.
    pub fn event(mut self, event: &str) -> Self {
        self.event = Some(event.to_string());
        self
    }

    /// With a connection.
    pub fn socket(mut self, socket_id: impl std::fmt::Display) -> Self {
        self.socket_id = Some(socket_id.to_string());
        self
    }

    /// With a detail, cut to [`DETAIL_MAX`] bytes.
    pub fn detail(mut self, detail: &str) -> Self {
        self.detail = cut(detail, DETAIL_MAX);
        self
    }
}

/// `s`, cut at a character boundary to at most `max` bytes, ending with `…` when cut.
pub fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A webhook URL as the console shows it: a password and the query (which may carry a
/// token) masked.
pub fn masked_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{user}:…@{host}")
        }
        None => authority.to_string(),
    };
    let path = match path.split_once('?') {
        Some((p, _)) => format!("{p}?…"),
        None => path.to_string(),
    };
    match scheme {
        "" => format!("{authority}{path}"),
        s => format!("{s}://{authority}{path}"),
    }
}

/// How a webhook delivery stands.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// The first attempt is under way.
    Sending,
    /// Answered with a 2xx.
    Delivered,
    /// An attempt failed; another is due at `next_retry_at`.
    Retrying,
    /// Retried for as long as the server retries, and given up.
    Failed,
    /// Never sent: the receiver's share or the sender's memory budget was full.
    Dropped,
}

/// One webhook request and its attempts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Delivery {
    /// Its number on this node.
    pub id: u64,
    /// When it was first sent, in milliseconds since the Unix epoch.
    pub at: u64,
    /// The receiver.
    pub url: String,
    /// The names of the events it carries.
    pub events: Vec<String>,
    /// How it stands.
    pub state: DeliveryState,
    /// The last answer's HTTP status, if there was one.
    pub http_status: Option<u16>,
    /// Why the last attempt failed.
    pub error: Option<String>,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due, in milliseconds since the Unix epoch.
    pub next_retry_at: Option<u64>,
}

#[derive(Debug, Default)]
struct Log {
    entries: VecDeque<Entry>,
    next_seq: u64,
}

/// An app's console state, kept across configuration reloads.
#[derive(Debug, Default)]
pub struct AppConsole {
    watchers: AtomicUsize,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    log: Mutex<Log>,
    deliveries: Mutex<VecDeque<Delivery>>,
    next_delivery: AtomicU64,
    changed: tokio::sync::Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these cannot leave it inconsistent: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl AppConsole {
    /// Whether a console watches this app (check [`watching`] first: it is cheaper).
    #[inline]
    pub fn watched(&self) -> bool {
        self.watchers.load(Ordering::Relaxed) != 0
    }

    /// Starts watching: the log records until the returned guard is dropped.
    pub fn watch(self: &Arc<Self>) -> Watch {
        let before = self.watchers.fetch_add(1, Ordering::Relaxed);
        WATCHERS.fetch_add(1, Ordering::Relaxed);
        if before == 0 {
            // Marks where recording resumed: what happened before it was not recorded.
            self.record(Entry::new("log_started").detail(
                "a console opened: the log records from here (nothing is recorded while no \
                 console watches)",
            ));
        }
        Watch(self.clone())
    }

    /// Records `entry` (numbered and timed here) if a console watches.
    pub fn record(&self, entry: Entry) {
        if !self.watched() {
            return;
        }
        let mut entry = entry;
        entry.at = crate::clock::unix_ms();
        {
            let mut log = lock(&self.log);
            log.next_seq += 1;
            entry.seq = log.next_seq;
            if log.entries.len() == LOG_CAPACITY {
                log.entries.pop_front();
            }
            log.entries.push_back(entry);
        }
        self.changed.notify_waiters();
    }

    /// Counts messages received from publishers (API events, client events) while watched.
    #[inline]
    pub fn count_in(&self, n: u64) {
        if self.watched() {
            self.messages_in.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts messages delivered to connections while watched.
    #[inline]
    pub fn count_out(&self, n: u64) {
        if self.watched() {
            self.messages_out.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Messages in and out counted so far.
    pub fn messages(&self) -> (u64, u64) {
        (
            self.messages_in.load(Ordering::Relaxed),
            self.messages_out.load(Ordering::Relaxed),
        )
    }

    /// The entries after `seq`, and how many of those were already overwritten.
    pub fn since(&self, seq: u64) -> (Vec<Entry>, u64) {
        let log = lock(&self.log);
        let first = log.entries.front().map_or(log.next_seq + 1, |e| e.seq);
        let missed = first.saturating_sub(seq + 1);
        let entries = log
            .entries
            .iter()
            .skip_while(|e| e.seq <= seq)
            .cloned()
            .collect();
        (entries, missed)
    }

    /// The last entry's number (0 before any).
    pub fn last_seq(&self) -> u64 {
        lock(&self.log).next_seq
    }

    /// Resolves at the next recorded entry or delivery change. Create it before checking
    /// for news ([`AppConsole::since`]), then await it, so nothing in between is missed.
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Starts a webhook delivery record; returns its id.
    pub fn delivery_started(&self, url: &str, events: Vec<String>) -> u64 {
        let id = self.next_delivery.fetch_add(1, Ordering::Relaxed) + 1;
        let d = Delivery {
            id,
            at: crate::clock::unix_ms(),
            url: masked_url(url),
            events,
            state: DeliveryState::Sending,
            http_status: None,
            error: None,
            attempts: 0,
            next_retry_at: None,
        };
        let mut all = lock(&self.deliveries);
        if all.len() == DELIVERIES_KEPT {
            all.pop_back();
        }
        all.push_front(d);
        id
    }

    /// Records a webhook delivery that was never sent.
    pub fn delivery_dropped(&self, url: &str, events: Vec<String>, why: &str) {
        let id = self.delivery_started(url, events);
        self.delivery_update(id, |d| {
            d.state = DeliveryState::Dropped;
            d.error = Some(why.to_string());
        });
    }

    /// Updates delivery `id` (if still kept) and logs the change.
    pub fn delivery_update(&self, id: u64, f: impl FnOnce(&mut Delivery)) {
        let updated = {
            let mut all = lock(&self.deliveries);
            let Some(d) = all.iter_mut().find(|d| d.id == id) else {
                return;
            };
            f(d);
            // The record is kept regardless; the log line is for a console watching.
            if !self.watched() {
                return;
            }
            d.clone()
        };
        let kind = match updated.state {
            DeliveryState::Sending => return,
            DeliveryState::Delivered => "webhook_sent",
            DeliveryState::Retrying => "webhook_retrying",
            DeliveryState::Failed => "webhook_failed",
            DeliveryState::Dropped => "webhook_dropped",
        };
        let mut detail = format!("{} → {}", updated.events.join(", "), updated.url);
        if let Some(status) = updated.http_status {
            detail.push_str(&format!(": HTTP {status}"));
        }
        if let Some(e) = &updated.error {
            detail.push_str(&format!(": {e}"));
        }
        if let Some(next) = updated.next_retry_at {
            let secs = next.saturating_sub(crate::clock::unix_ms()) as f64 / 1000.0;
            detail.push_str(&format!(
                "; attempt {} failed, retry in {secs:.0} s",
                updated.attempts
            ));
        }
        self.record(Entry::new(kind).detail(&detail));
    }

    /// The recent webhook deliveries, newest first.
    pub fn deliveries(&self) -> Vec<Delivery> {
        lock(&self.deliveries).iter().cloned().collect()
    }
}

/// A console watching an app; dropping it stops watching (the log stops recording when
/// nobody watches).
#[derive(Debug)]
pub struct Watch(Arc<AppConsole>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
        WATCHERS.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_is_recorded_while_nobody_watches() {
        let c = Arc::new(AppConsole::default());
        c.record(Entry::new("api_message"));
        c.count_out(5);
        assert_eq!(c.since(0).0.len(), 0);
        assert_eq!(c.messages(), (0, 0));
        let w = c.watch();
        assert!(watching() && c.watched());
        c.record(Entry::new("api_message").detail("x"));
        c.count_out(5);
        let kinds: Vec<_> = c.since(0).0.iter().map(|e| (e.seq, e.kind)).collect();
        assert_eq!(kinds, [(1, "log_started"), (2, "api_message")]);
        assert_eq!(c.messages(), (0, 5));
        drop(w);
        assert!(!c.watched());
        c.record(Entry::new("api_message"));
        assert_eq!(c.last_seq(), 2);
    }

    #[test]
    fn the_log_is_a_bounded_ring_and_says_what_a_late_reader_missed() {
        let c = Arc::new(AppConsole::default());
        let _w = c.watch();
        for _ in 0..LOG_CAPACITY + 10 {
            c.record(Entry::new("client_event"));
        }
        // One more: the log_started mark.
        let (entries, missed) = c.since(0);
        assert_eq!(entries.len(), LOG_CAPACITY);
        assert_eq!(missed, 11);
        assert_eq!(entries[0].seq, 12);
        let (entries, missed) = c.since(LOG_CAPACITY as u64 + 6);
        assert_eq!((entries.len(), missed), (5, 0));
    }

    #[test]
    fn webhook_urls_are_shown_without_secrets() {
        assert_eq!(masked_url("http://h:80/hooks"), "http://h:80/hooks");
        assert_eq!(
            masked_url("http://ann:pw@h/hooks?token=x"),
            "http://ann:…@h/hooks?…"
        );
    }

    #[test]
    fn details_are_cut_at_a_character_boundary() {
        let long = "é".repeat(DETAIL_MAX);
        let e = Entry::new("api_message").detail(&long);
        assert!(e.detail.len() <= DETAIL_MAX && e.detail.ends_with('…'));
        assert_eq!(cut("short", 10), "short");
    }

    #[test]
    fn deliveries_are_kept_newest_first_and_bounded() {
        let c = AppConsole::default();
        let first = c.delivery_started("http://a/", vec!["channel_occupied".into()]);
        c.delivery_update(first, |d| {
            d.state = DeliveryState::Retrying;
            d.http_status = Some(500);
            d.attempts = 1;
        });
        for _ in 0..DELIVERIES_KEPT {
            c.delivery_started("http://a/", vec![]);
        }
        let all = c.deliveries();
        assert_eq!(all.len(), DELIVERIES_KEPT);
        assert!(all.iter().all(|d| d.id != first), "the oldest went first");
        assert!(all[0].id > all[1].id);
    }
}
