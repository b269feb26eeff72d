//! Applications: the credentials (id, key, secret) clients and publishers identify with.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

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
    #[serde(default)]
    pub max_channels: usize,
    /// HTTP API requests this app may make per second (429 beyond); 0: no limit.
    #[serde(default = "default_max_api_rate")]
    pub max_api_requests_per_second: u32,
    /// Live counters, kept across configuration reloads.
    #[serde(skip)]
    pub counters: Arc<AppCounters>,
}

/// What an app is using now, over all workers (checked against its limits).
#[derive(Debug, Default)]
pub struct AppCounters {
    /// Open WebSocket connections.
    pub connections: std::sync::atomic::AtomicUsize,
    /// Occupied channels.
    pub channels: std::sync::atomic::AtomicUsize,
    /// API requests in the current second: `second << 32 | count`.
    api_window: std::sync::atomic::AtomicU64,
}

impl AppCounters {
    /// Counts an API request made in `second`; false when it is over `per_second`
    /// (0: unlimited).
    pub fn allow_api_request(&self, second: u64, per_second: u32) -> bool {
        use std::sync::atomic::Ordering;
        if per_second == 0 {
            return true;
        }
        let mut cur = self.api_window.load(Ordering::Relaxed);
        loop {
            let (sec, count) = (cur >> 32, cur & 0xffff_ffff);
            let next = if sec == second & 0xffff_ffff {
                if count >= u64::from(per_second) {
                    return false;
                }
                cur + 1
            } else {
                ((second & 0xffff_ffff) << 32) | 1
            };
            match self.api_window.compare_exchange_weak(
                cur,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// A webhook endpoint of an app.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// `http://` URL to POST to.
    pub url: String,
    /// Event types sent there (default: all).
    #[serde(default = "WebhookEvent::all")]
    pub events: Vec<WebhookEvent>,
}

/// Webhook event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookEvent {
    /// A channel got its first subscriber.
    ChannelOccupied,
    /// A channel lost its last subscriber (sent after 3 s, unless re-occupied).
    ChannelVacated,
    /// A user joined a presence channel (first connection).
    MemberAdded,
    /// A user left a presence channel (last connection; sent after 3 s, unless back).
    MemberRemoved,
    /// A client event was sent.
    ClientEvent,
    /// A cache channel was subscribed to with nothing cached.
    CacheMiss,
    /// A channel's subscription count changed.
    SubscriptionCount,
}

impl WebhookEvent {
    /// Every event type.
    pub fn all() -> Vec<Self> {
        vec![
            Self::ChannelOccupied,
            Self::ChannelVacated,
            Self::MemberAdded,
            Self::MemberRemoved,
            Self::ClientEvent,
            Self::CacheMiss,
            Self::SubscriptionCount,
        ]
    }

    /// The name used in webhook bodies.
    pub fn name(self) -> &'static str {
        match self {
            Self::ChannelOccupied => "channel_occupied",
            Self::ChannelVacated => "channel_vacated",
            Self::MemberAdded => "member_added",
            Self::MemberRemoved => "member_removed",
            Self::ClientEvent => "client_event",
            Self::CacheMiss => "cache_miss",
            Self::SubscriptionCount => "subscription_count",
        }
    }
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
            max_channels: 0,
            max_api_requests_per_second: default_max_api_rate(),
            counters: Default::default(),
        }
    }

    /// Whether any webhook wants `event`.
    pub fn wants_webhook(&self, event: WebhookEvent) -> bool {
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

/// A TOML error in `text` as "line L, column C: what is wrong". Unlike the error's own
/// Display it never quotes the source line, and it leaves out the value serde's messages
/// quote: either may be a secret (an unquoted `secret = 9f86…` is a TOML error).
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let message = without_value(e.message());
    let Some(before) = e.span().and_then(|span| text.get(..span.start)) else {
        return message;
    };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
    format!("line {line}, column {column}: {message}")
}

/// serde's "invalid type: integer `123`, expected a string" without the `123`.
fn without_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some((found, expected)) = message
            .strip_prefix(prefix)
            .and_then(|rest| rest.rsplit_once(", expected "))
        {
            let kind = found.split(['`', '"']).next().unwrap_or(found).trim_end();
            return format!("{prefix}{kind}, expected {expected}");
        }
    }
    message.to_string()
}

/// Errors in the app configuration.
#[derive(Debug, thiserror::Error)]
pub enum AppsError {
    /// The apps file could not be read.
    #[error("cannot read apps file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The apps file is not valid TOML for the expected shape.
    #[error("invalid apps file {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// Why, from [`toml_error`] (never the offending text).
        reason: String,
    },
    /// Two apps share an id or a key, or a field is empty.
    #[error("invalid app configuration: {0}")]
    Invalid(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppsFile {
    #[serde(default, rename = "app")]
    apps: Vec<App>,
}

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
    pub fn new(apps: Vec<App>) -> Result<Self, AppsError> {
        if apps.is_empty() {
            return Err(AppsError::Invalid("no app configured".into()));
        }
        let mut by_key = HashMap::new();
        let mut by_id = HashMap::new();
        for (idx, app) in apps.iter().enumerate() {
            if app.id.is_empty() || app.key.is_empty() || app.secret.is_empty() {
                return Err(AppsError::Invalid(format!(
                    "app #{} has an empty id, key or secret",
                    idx + 1
                )));
            }
            if app.key.contains('/') || app.id.contains('/') {
                return Err(AppsError::Invalid(format!(
                    "app {:?}: id and key may not contain '/'",
                    app.id
                )));
            }
            if by_key.insert(app.key.clone(), idx as AppIdx).is_some() {
                return Err(AppsError::Invalid(format!(
                    "duplicate app key {:?}",
                    app.key
                )));
            }
            if by_id.insert(app.id.clone(), idx as AppIdx).is_some() {
                return Err(AppsError::Invalid(format!("duplicate app id {:?}", app.id)));
            }
            for w in &app.webhooks {
                if !w.url.starts_with("http://") {
                    return Err(AppsError::Invalid(format!(
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
                    return Err(AppsError::Invalid(format!(
                        "app {:?}: {key} is {value} seconds; at most {max} are allowed",
                        app.id
                    )));
                }
            }
            if app.client_event_rate == 0 || app.max_presence_members == 0 {
                return Err(AppsError::Invalid(format!(
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
    pub fn reloaded(&self, new: Vec<App>) -> Result<Self, AppsError> {
        // Validate the new set on its own first.
        Self::new(new.clone())?;
        let mut new: HashMap<String, App> = new.into_iter().map(|a| (a.id.clone(), a)).collect();
        let mut apps = Vec::with_capacity(self.apps.len() + new.len());
        let mut removed = Vec::new();
        for old in &self.apps {
            match new.remove(&old.id) {
                Some(mut app) => {
                    app.counters = old.counters.clone();
                    apps.push(Arc::new(app));
                }
                None => {
                    let mut gone = (**old).clone();
                    gone.enabled = false;
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

    /// Loads apps from a TOML file with one `[[app]]` table per app.
    pub fn from_file(path: &Path) -> Result<Vec<App>, AppsError> {
        let text = std::fs::read_to_string(path).map_err(|source| AppsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: AppsFile = toml::from_str(&text).map_err(|e| AppsError::Parse {
            path: path.display().to_string(),
            reason: toml_error(&text, &e),
        })?;
        Ok(file.apps)
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
    }

    #[test]
    fn api_rate_window_is_per_second() {
        let c = AppCounters::default();
        assert!((0..3).all(|_| c.allow_api_request(100, 3)));
        assert!(!c.allow_api_request(100, 3));
        assert!(c.allow_api_request(101, 3));
        assert!(
            (0..10).all(|_| c.allow_api_request(102, 0)),
            "0 is no limit"
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

    #[test]
    fn toml_errors_give_the_place_not_the_text() {
        for (text, want) in [
            (
                "[[app]]\nid = \"1\"\nkey = \"k\"\nsecret = 9f86d081884c7d65\n",
                "line 4, column 10: ",
            ),
            (
                "[[app]]\nid = \"1\"\nkey = \"k\"\nsecret = 9086081884\n",
                "line 4, column 10: invalid type: integer, expected a string",
            ),
            (
                "[[app]]\nid = \"é\"\nkey = \"k\"\nsecret = \"s\"\ncache_ttl = \"9086081884\"\n",
                "line 5, column 13: invalid type: string, expected u64",
            ),
        ] {
            let e = toml::from_str::<AppsFile>(text).err().unwrap();
            let shown = toml_error(text, &e);
            assert!(shown.starts_with(want), "{shown}");
            assert!(!shown.contains("9f86d081884c7d65"), "{shown}");
            assert!(!shown.contains("9086081884"), "{shown}");
        }
    }

    #[test]
    fn apps_file_parses() {
        let dir = std::env::temp_dir().join(format!("ringcast-apps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("apps.toml");
        std::fs::write(
            &path,
            "[[app]]\nid = \"1\"\nkey = \"k1\"\nsecret = \"s1\"\nclient_events = true\n\n\
             [[app.webhook]]\nurl = \"http://127.0.0.1:9/hooks\"\nevents = [\"channel_occupied\", \"member_added\"]\n\n\
             [[app]]\nid = \"2\"\nkey = \"k2\"\nsecret = \"s2\"\nenabled = false\n",
        )
        .unwrap();
        let apps = Apps::from_file(&path).unwrap();
        assert_eq!(apps.len(), 2);
        assert!(apps[0].client_events);
        assert!(apps[0].wants_webhook(WebhookEvent::MemberAdded));
        assert!(!apps[0].wants_webhook(WebhookEvent::ChannelVacated));
        assert_eq!(apps[0].max_presence_members, 100);
        assert!(!apps[1].enabled);
        assert!(!apps[1].client_events);
        let _ = Apps::new(apps).unwrap();
    }
}
