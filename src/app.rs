//! Applications: the credentials (id, key, secret) clients and publishers identify with.

use std::collections::HashMap;
use std::path::Path;

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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct App {
    /// The app id used in HTTP API paths (`/apps/{id}/…`).
    pub id: String,
    /// The public key clients connect with (`/app/{key}`) and publishers sign with.
    pub key: String,
    /// The secret that signs API requests.
    pub secret: String,
    /// A disabled app refuses connections (4003) and API calls (403).
    #[serde(default = "default_true")]
    pub enabled: bool,
}

fn default_true() -> bool {
    true
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
    #[error("invalid apps file {path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// Why.
        source: toml::de::Error,
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

/// The immutable set of configured apps, shared by every worker.
#[derive(Debug, Clone)]
pub struct Apps {
    apps: Vec<App>,
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
        let file: AppsFile = toml::from_str(&text).map_err(|source| AppsError::Parse {
            path: path.display().to_string(),
            source,
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

    /// The app at `idx`. Panics on an index not produced by this registry.
    pub fn get(&self, idx: AppIdx) -> &App {
        &self.apps[idx as usize]
    }

    /// All apps.
    pub fn iter(&self) -> impl Iterator<Item = &App> {
        self.apps.iter()
    }

    /// Whether any app still uses the public demo secret.
    pub fn uses_demo_secret(&self) -> bool {
        self.apps.iter().any(|a| a.secret == DEMO_APP_SECRET)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(id: &str, key: &str) -> App {
        App {
            id: id.into(),
            key: key.into(),
            secret: "s".into(),
            enabled: true,
        }
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
    fn apps_file_parses() {
        let dir = std::env::temp_dir().join(format!("ringcast-apps-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("apps.toml");
        std::fs::write(
            &path,
            "[[app]]\nid = \"1\"\nkey = \"k1\"\nsecret = \"s1\"\n\n[[app]]\nid = \"2\"\nkey = \"k2\"\nsecret = \"s2\"\nenabled = false\n",
        )
        .unwrap();
        let apps = Apps::from_file(&path).unwrap();
        assert_eq!(apps.len(), 2);
        assert!(!apps[1].enabled);
    }
}
