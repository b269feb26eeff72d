//! Applications: the credentials (id, key, secret) clients and publishers identify with,
//! each app's settings and live counters, and the key that names one of its channels.
//!
//! Apps are loaded by [`crate::config`] and replaced as a whole on reload (SIGHUP); the
//! apps in use are always those in [`LiveApps`].

pub mod console;
mod counters;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use serde::Deserialize;

pub use counters::AppCounters;

use crate::protocol::webhook;

/// Index of an app in [`Apps`]; cheap to copy and to send between workers.
pub type AppIdx = u32;

/// The demo credentials used when no app is configured. Only allowed on loopback.
pub const DEMO_APP_ID: &str = "app-id";
/// The demo app key.
pub const DEMO_APP_KEY: &str = "app-key";
/// The demo app secret.
pub const DEMO_APP_SECRET: &str = "app-secret";

/// One application.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id used in HTTP API paths (`/apps/{id}/…`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`) and publishers sign with.
    pub key: String,
    /// The secret that signs API requests, channel authorizations and sign-ins.
    pub secret: String,
    /// A disabled app refuses connections (4003) and API calls (403).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Whether clients may send `client-*` events on private and presence channels.
    #[serde(default)]
    pub client_events: bool,
    /// Client events one connection may send per second (4301 beyond).
    #[serde(default = "default_client_event_rate")]
    pub client_event_rate: u32,
    /// Most members (distinct users) of one presence channel.
    #[serde(default = "default_max_presence_members")]
    pub max_presence_members: usize,
    /// Largest presence `user_info`, in bytes of JSON.
    #[serde(default = "default_max_user_info")]
    pub max_presence_user_info: usize,
    /// Seconds a cache channel keeps its last event.
    #[serde(default = "default_cache_ttl")]
    pub cache_ttl: u64,
    /// Whether subscribers get `pusher_internal:subscription_count` events.
    #[serde(default)]
    pub subscription_count: bool,
    /// Seconds a connection has to sign in or subscribe to a private or presence channel
    /// before it is closed with 4009 (0: never).
    #[serde(default)]
    pub authorized_connections_timeout: u64,
    /// Webhook endpoints.
    #[serde(default, rename = "webhook")]
    pub webhooks: Vec<Webhook>,
    /// Whether webhook events are sent in batches (one request per app per batch window)
    /// rather than one request per event.
    #[serde(default)]
    pub webhook_batching: bool,
    /// Most concurrent WebSocket connections of this app (4004 beyond); 0: no limit.
    #[serde(default)]
    pub max_connections: usize,
    /// Most occupied channels of this app (subscriptions opening more are refused); 0: no
    /// limit.
    #[serde(default = "default_max_channels")]
    pub max_channels: usize,
    /// HTTP API requests this app may make per second (429 beyond); 0: no limit.
    #[serde(default = "default_max_api_rate")]
    pub max_api_requests_per_second: u32,
    /// Live counters, kept across configuration reloads.
    #[serde(skip)]
    pub counters: Arc<AppCounters>,
    /// The live console's log, rates and webhook deliveries, kept across reloads.
    #[serde(skip)]
    pub console: Arc<console::AppConsole>,
    /// Removed by a reload: its index stays, unreachable, and is never given back (an app
    /// added later with the same id gets a new index, so it inherits nothing: no cached
    /// events, channels or counters).
    #[serde(skip)]
    pub retired: bool,
}

/// A webhook endpoint of an app.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` URL to POST to.
    pub url: String,
    /// Event types sent there (default: all).
    #[serde(default = "webhook::Kind::all")]
    pub events: Vec<webhook::Kind>,
}

impl App {
    /// An app with the given credentials and every option at its default.
    pub fn new(id: &str, key: &str, secret: &str) -> Self {
        Self {
            id: id.into(),
            key: key.into(),
            secret: secret.into(),
            enabled: true,
            client_events: false,
            client_event_rate: default_client_event_rate(),
            max_presence_members: default_max_presence_members(),
            max_presence_user_info: default_max_user_info(),
            cache_ttl: default_cache_ttl(),
            subscription_count: false,
            authorized_connections_timeout: 0,
            webhooks: Vec::new(),
            webhook_batching: false,
            max_connections: 0,
            max_channels: default_max_channels(),
            max_api_requests_per_second: default_max_api_rate(),
            counters: Default::default(),
            console: Default::default(),
            retired: false,
        }
    }

    /// Whether any webhook wants `event`.
    pub fn wants_webhook(&self, event: webhook::Kind) -> bool {
        self.webhooks.iter().any(|w| w.events.contains(&event))
    }
}

fn default_true() -> bool {
    true
}

fn default_client_event_rate() -> u32 {
    10
}

fn default_max_presence_members() -> usize {
    100
}

fn default_max_user_info() -> usize {
    1024
}

/// One app cannot take the whole server's `--max-channels` (1,000,000) by default.
fn default_max_channels() -> usize {
    100_000
}

fn default_max_api_rate() -> u32 {
    50_000
}

fn default_cache_ttl() -> u64 {
    30 * 60
}

/// Longest `cache_ttl`: 7 days, in seconds.
pub const MAX_CACHE_TTL: u64 = 7 * 86_400;
/// Longest `authorized_connections_timeout`: 1 day, in seconds.
pub const MAX_AUTHORIZED_CONNECTIONS_TIMEOUT: u64 = 86_400;

/// Apps that cannot be used together: a shared id or key, an empty credential, a value
/// out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid app configuration: {0}")]
pub struct InvalidApps(pub String);

/// The apps in use, shared by every thread: read with `load()`, replaced whole on reload.
pub type LiveApps = Arc<arc_swap::ArcSwap<Apps>>;

/// The set of configured apps. Replaced as a whole on reload (SIGHUP); an app keeps its
/// index for the life of the process.
#[derive(Debug, Clone)]
pub struct Apps {
    apps: Vec<Arc<App>>,
    by_key: HashMap<String, AppIdx>,
    by_id: HashMap<String, AppIdx>,
}

impl Apps {
    /// Builds the registry, refusing duplicate ids or keys and empty credentials.
    pub fn new(apps: Vec<App>) -> Result<Self, InvalidApps> {
        if apps.is_empty() {
            return Err(InvalidApps("no app configured".into()));
        }
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for (idx, app) in apps.iter().enumerate() {
            if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
                return Err(InvalidApps(format!(
                    "app #{} has an empty id, key or secret",
                    idx + 1
                )));
            }
            if app.key.contains('/') || app.id.contains('/') {
                return Err(InvalidApps(format!(
                    "app {:?}: id and key may not contain '/'",
                    app.id
                )));
            }
            if by_key.insert(app.key.clone(), idx as AppIdx).is_some() {
                return Err(InvalidApps(format!("duplicate app key {:?}", app.key)));
            }
            if by_id.insert(app.id.clone(), idx as AppIdx).is_some() {
                return Err(InvalidApps(format!("duplicate app id {:?}", app.id)));
            }
            for w in &app.webhooks {
                if !w.url.starts_with("http://") {
                    return Err(InvalidApps(format!(
                        "app {:?}: webhook URL {:?} must start with http:// (terminate TLS in \
                         a proxy in front of the receiver)",
                        app.id, w.url
                    )));
                }
            }
            for (key, value, max) in [
                ("cache_ttl", app.cache_ttl, MAX_CACHE_TTL),
                (
                    "authorized_connections_timeout",
                    app.authorized_connections_timeout,
                    MAX_AUTHORIZED_CONNECTIONS_TIMEOUT,
                ),
            ] {
                if value > max {
                    return Err(InvalidApps(format!(
                        "app {:?}: {key} is {value} seconds; at most {max} are allowed",
                        app.id
                    )));
                }
            }
            if app.client_event_rate == 0 || app.max_presence_members == 0 {
                return Err(InvalidApps(format!(
                    "app {:?}: client_event_rate and max_presence_members must be positive",
                    app.id
                )));
            }
        }
        Ok(Self {
            apps: apps.into_iter().map(Arc::new).collect(),
            by_key,
            by_id,
        })
    }

    /// The apps after a reload to `new`: every app keeps its index (matched by id) and its
    /// live counters; apps no longer configured stay disabled and unreachable; new apps
    /// are appended.
    pub fn reloaded(&self, new: Vec<App>) -> Result<Self, InvalidApps> {
        // Validate the new set on its own first.
        Self::new(new.clone())?;
        let mut new: HashMap<String, App> = new.into_iter().map(|a| (a.id.clone(), a)).collect();
        let mut apps = Vec::with_capacity(self.apps.len() + new.len());
        let mut removed = Vec::new();
        for old in &self.apps {
            if old.retired {
                removed.push(apps.len());
                apps.push(old.clone());
                continue;
            }
            match new.remove(&old.id) {
                Some(mut app) => {
                    app.counters = old.counters.clone();
                    app.console = old.console.clone();
                    apps.push(Arc::new(app));
                }
                None => {
                    let mut gone = (**old).clone();
                    gone.enabled = false;
                    gone.retired = true;
                    removed.push(apps.len());
                    apps.push(Arc::new(gone));
                }
            }
        }
        let mut added: Vec<App> = new.into_values().collect();
        added.sort_by(|a, b| a.id.cmp(&b.id));
        apps.extend(added.into_iter().map(Arc::new));
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for (idx, app) in apps.iter().enumerate() {
            if removed.contains(&idx) {
                continue;
            }
            by_key.insert(app.key.clone(), idx as AppIdx);
            by_id.insert(app.id.clone(), idx as AppIdx);
        }
        Ok(Self {
            apps,
            by_key,
            by_id,
        })
    }

    /// The app a WebSocket client names by key.
    pub fn by_key(&self, key: &str) -> Option<AppIdx> {
        self.by_key.get(key).copied()
    }

    /// The app an API request names by id.
    pub fn by_id(&self, id: &str) -> Option<AppIdx> {
        self.by_id.get(id).copied()
    }

    /// The app at `idx`. Panics on an index not produced by this registry (or an earlier
    /// one: reloads only append).
    pub fn get(&self, idx: AppIdx) -> &Arc<App> {
        &self.apps[idx as usize]
    }

    /// The app at `idx`, if this registry has one there.
    pub fn try_get(&self, idx: AppIdx) -> Option<&Arc<App>> {
        self.apps.get(idx as usize)
    }

    /// All apps.
    pub fn iter(&self) -> impl Iterator<Item = &App> {
        self.apps.iter().map(|a| &**a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, key: &str) -> App {
        App::new(id, key, "s")
    }

    #[test]
    fn reload_keeps_indices_and_counters() {
        let apps = Apps::new(vec![app("1", "a"), app("2", "b")]).unwrap();
        apps.get(0)
            .counters
            .connections
            .store(5, std::sync::atomic::Ordering::Relaxed);
        let mut changed = app("1", "a2");
        changed.enabled = false;
        let next = apps.reloaded(vec![app("3", "c"), changed]).unwrap();
        assert_eq!(next.by_key("a2"), Some(0));
        assert!(!next.get(0).enabled);
        assert_eq!(
            next.get(0)
                .counters
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            5
        );
        // App 2 is gone: unreachable, disabled, its index kept.
        assert_eq!(next.by_id("2"), None);
        assert!(!next.get(1).enabled);
        assert_eq!(next.by_id("3"), Some(2));
        assert!(apps.reloaded(vec![app("1", "x"), app("9", "x")]).is_err());
        // App 2 comes back: a new index, nothing of the old one's (cache, channels, counts).
        next.get(1)
            .counters
            .connections
            .store(7, std::sync::atomic::Ordering::Relaxed);
        let again = next
            .reloaded(vec![app("1", "a2"), app("2", "b2"), app("3", "c")])
            .unwrap();
        assert_eq!(again.by_id("2"), Some(3));
        assert_eq!(again.by_key("b2"), Some(3));
        assert!(!again.get(1).enabled);
        assert_eq!(
            again
                .get(3)
                .counters
                .connections
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    }

    #[test]
    fn durations_too_long_are_refused() {
        let mut a = app("1", "a");
        a.cache_ttl = MAX_CACHE_TTL;
        a.authorized_connections_timeout = MAX_AUTHORIZED_CONNECTIONS_TIMEOUT;
        Apps::new(vec![a.clone()]).unwrap();
        let mut long_ttl = a.clone();
        long_ttl.cache_ttl = i64::MAX as u64;
        let err = Apps::new(vec![long_ttl]).unwrap_err().to_string();
        assert!(err.contains("app \"1\": cache_ttl"), "{err}");
        a.authorized_connections_timeout += 1;
        let err = Apps::new(vec![a]).unwrap_err().to_string();
        assert!(
            err.contains("app \"1\": authorized_connections_timeout"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_keys_are_refused() {
        let err = Apps::new(vec![app("1", "k"), app("2", "k")]).unwrap_err();
        assert!(err.to_string().contains("duplicate app key"));
    }

    #[test]
    fn lookups_by_key_and_id() {
        let apps = Apps::new(vec![app("1", "a"), app("2", "b")]).unwrap();
        assert_eq!(apps.by_key("b"), Some(1));
        assert_eq!(apps.by_id("1"), Some(0));
        assert_eq!(apps.by_key("zz"), None);
    }
}

/// A channel of an app: what subscriptions, the channel index, presence and the cache are
/// keyed by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelKey {
    /// The app.
    pub app: AppIdx,
    /// The channel name.
    pub name: Arc<str>,
}

impl ChannelKey {
    /// A key for `name` in `app`.
    pub fn new(app: AppIdx, name: &str) -> Self {
        Self {
            app,
            name: Arc::from(name),
        }
    }

    /// The key, borrowed.
    pub fn as_ref(&self) -> ChannelRef<'_> {
        ChannelRef {
            app: self.app,
            name: &self.name,
        }
    }
}

impl Hash for ChannelKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_ref().hash(state)
    }
}

/// A borrowed [`ChannelKey`], for lookups without allocating.
#[derive(Debug, Clone, Copy)]
pub struct ChannelRef<'a> {
    /// The app.
    pub app: AppIdx,
    /// The channel name.
    pub name: &'a str,
}

impl ChannelRef<'_> {
    /// An owned key.
    pub fn to_key(self) -> ChannelKey {
        ChannelKey::new(self.app, self.name)
    }
}

impl Hash for ChannelRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u32(self.app);
        self.name.hash(state);
    }
}

// papaya and hashbrown share the `equivalent` crate's trait.
impl papaya::Equivalent<ChannelKey> for ChannelRef<'_> {
    fn equivalent(&self, key: &ChannelKey) -> bool {
        self.app == key.app && self.name == &*key.name
    }
}
