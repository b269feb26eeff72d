//! The TOML configuration file (`--config`): every command-line flag as a top-level key
//! (dashes become underscores), plus `[[app]]` tables.
//!
//! Precedence, highest first: the command line, `RINGCAST_*` environment variables, the
//! file, the built-in defaults. The file's values are applied by re-parsing the command
//! line with them added for every flag that neither the command line nor the environment
//! set, so a value from the file is validated exactly as the same flag would be.
//!
//! `--apps-file` (a file of `[[app]]` tables alone) is read here too.
//!
//! `ringcast config check FILE` validates a file and prints the effective configuration
//! with secrets masked; `ringcast config example` prints a commented example.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::app::App;
use crate::config::{Cli, ConfigError};

/// The commented example printed by `ringcast config example`.
pub const EXAMPLE: &str = include_str!("../../deploy/ringcast.toml.example");

/// Keys a file may not set (they select the file, or are not configuration).
const NOT_IN_FILE: &[&str] = &["config", "help", "version"];

/// Parses the command line, applying the `--config` file (if any) under it.
///
/// Errors from the command line itself come back as [`ConfigError::Cli`] (print them with
/// clap's formatting); errors in the file name the file and the key.
pub fn parse(args: Vec<OsString>) -> Result<Cli, ConfigError> {
    let matches = Cli::command()
        .try_get_matches_from(args.clone())
        .map_err(ConfigError::Cli)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ConfigError::Cli)?;
    let Some(path) = cli.config.clone() else {
        return Ok(cli);
    };
    let (extra, apps) = file_args(&path, &matches)?;
    let mut all = args;
    all.extend(extra.iter().map(|(_, a)| a.clone()));
    let matches = Cli::command()
        .try_get_matches_from(all)
        .map_err(|e| blame_file(&path, &extra, e))?;
    let mut cli = Cli::from_arg_matches(&matches).map_err(|e| blame_file(&path, &extra, e))?;
    cli.file_apps = apps;
    Ok(cli)
}

/// Arguments a file adds to the command line, each with the key it came from.
type FileArgs = Vec<(String, OsString)>;

/// The extra arguments the file contributes (each with the key it came from), and its
/// apps.
fn file_args(
    path: &Path,
    matches: &clap::ArgMatches,
) -> Result<(FileArgs, Option<Vec<App>>), ConfigError> {
    let file = |key: &str, reason: String| file_error(path, key, reason);
    let (text, mut table) = read_table(path)?;

    let apps = match table.remove("app") {
        None => None,
        Some(_) => Some(file_apps(&text).map_err(|reason| file("app", reason))?),
    };

    let command = Cli::command();
    let mut extra = Vec::new();
    for (key, value) in table {
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == key.as_str() && !NOT_IN_FILE.contains(&key.as_str()))
            .ok_or_else(|| {
                file(
                    &key,
                    "unknown key (keys are the command-line flags with underscores, plus [[app]] tables)"
                        .into(),
                )
            })?;
        let set_elsewhere = matches!(
            matches.value_source(&key),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if set_elsewhere {
            continue;
        }
        let flag = format!("--{}", arg.get_long().unwrap_or(&key));
        let takes_value = arg.get_action().takes_values();
        let values: Vec<toml::Value> = match value {
            toml::Value::Array(items) => items,
            other => vec![other],
        };
        for v in values {
            let text = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) if !takes_value => {
                    if b {
                        extra.push((key.clone(), OsString::from(&flag)));
                    }
                    continue;
                }
                toml::Value::Boolean(b) => b.to_string(),
                other => {
                    return Err(file(
                        &key,
                        format!("expected a string, number or boolean, found {other}"),
                    ))
                }
            };
            if !takes_value {
                return Err(file(&key, "expected true or false".into()));
            }
            extra.push((key.clone(), OsString::from(format!("{flag}={text}"))));
        }
    }
    Ok((extra, apps))
}

/// The `[[app]]` tables of a configuration file (for reloads).
pub fn apps_of(path: &Path) -> Result<Vec<App>, ConfigError> {
    let file = |key: &str, reason: String| file_error(path, key, reason);
    let (text, table) = read_table(path)?;
    if !table.contains_key("app") {
        return Err(file("app", "no [[app]] table".into()));
    }
    file_apps(&text).map_err(|reason| file("app", reason))
}

/// An error in the configuration file at `path`, at `key` (`-`: the file as a whole).
fn file_error(path: &Path, key: &str, reason: String) -> ConfigError {
    ConfigError::File {
        path: path.display().to_string(),
        key: key.to_string(),
        reason,
    }
}

/// The file's text and its top-level table.
fn read_table(path: &Path) -> Result<(String, toml::Table), ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| file_error(path, "-", format!("cannot read: {e}")))?;
    let table = text.parse().map_err(|e: toml::de::Error| {
        file_error(
            path,
            "-",
            format!("invalid TOML: {}", toml_error(&text, &e)),
        )
    })?;
    Ok((text, table))
}

/// The `[[app]]` tables of a file's `text`, read from the text itself so that errors carry
/// a line and column (and, from [`toml_error`], never the offending text).
fn file_apps(text: &str) -> Result<Vec<App>, String> {
    #[derive(serde::Deserialize)]
    struct FileApps {
        #[serde(default)]
        app: Vec<App>,
    }
    toml::from_str::<FileApps>(text)
        .map(|f| f.app)
        .map_err(|e| toml_error(text, &e))
}

/// Turns a clap error caused by a file value into one naming the file and key.
fn blame_file(path: &Path, extra: &[(String, OsString)], e: clap::Error) -> ConfigError {
    let message = e.to_string();
    let first = message
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ")
        .to_string();
    for (key, arg) in extra {
        let flag = arg.to_string_lossy();
        let flag = flag.split('=').next().unwrap_or_default();
        if message.contains(&format!("'{flag}")) || message.contains(&format!("{flag} ")) {
            return file_error(path, key, first);
        }
    }
    ConfigError::Cli(e)
}

/// `ringcast config check FILE`: the effective configuration as TOML, secrets masked.
pub fn describe(cli: &Cli, apps: &crate::app::Apps) -> String {
    let mut out = String::new();
    out.push_str("# Effective configuration (command line > environment > file > defaults).\n");
    out.push_str(&toml::to_string(&Effective::of(cli)).unwrap_or_default());
    let apps: Vec<MaskedApp<'_>> = apps.iter().map(MaskedApp).collect();
    #[derive(serde::Serialize)]
    struct Apps<'a> {
        app: Vec<MaskedApp<'a>>,
    }
    out.push('\n');
    out.push_str(&toml::to_string(&Apps { app: apps }).unwrap_or_default());
    out
}

/// What a secret looks like in printed configuration.
pub fn mask(secret: &str) -> String {
    format!("<{} characters, masked>", secret.chars().count())
}

struct MaskedApp<'a>(&'a App);

impl serde::Serialize for MaskedApp<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = toml::Value::try_from(self.0).map_err(serde::ser::Error::custom)?;
        if let Some(t) = v.as_table_mut() {
            t.insert("secret".into(), mask(&self.0.secret).into());
        }
        v.serialize(s)
    }
}

/// Every flag's effective value, for printing.
#[derive(serde::Serialize)]
struct Effective(toml::Table);

impl Effective {
    fn of(cli: &Cli) -> Self {
        let mut t = toml::Value::try_from(cli)
            .ok()
            .and_then(|v| v.as_table().cloned())
            .unwrap_or_default();
        if let Some(s) = cli.app_secret.as_deref() {
            t.insert("app_secret".into(), mask(s).into());
        }
        if let Some(url) = cli.redis_url.as_deref() {
            t.insert("redis_url".into(), mask_url_password(url).into());
        }
        if let Some(s) = cli.console_token.as_deref() {
            t.insert("console_token".into(), mask(s).into());
        }
        Effective(t)
    }
}

/// A Redis URL with its password (if any) masked.
pub fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, password)) => format!("{scheme}://{user}:{}@{host}", mask(password)),
        None => url.to_string(),
    }
}

/// Where `ringcast config check` reads from.
pub fn check_args(file: &Path) -> Vec<OsString> {
    vec![
        OsString::from("ringcast"),
        OsString::from("--config"),
        PathBuf::from(file).into_os_string(),
    ]
}

/// Loads apps from an `--apps-file`: one `[[app]]` table per app.
pub fn apps_file(path: &Path) -> Result<Vec<App>, ConfigError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct AppsFile {
        #[serde(default, rename = "app")]
        apps: Vec<App>,
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::AppsFileUnreadable {
        path: path.display().to_string(),
        source,
    })?;
    let file: AppsFile = toml::from_str(&text).map_err(|e| ConfigError::AppsFileInvalid {
        path: path.display().to_string(),
        reason: toml_error(&text, &e),
    })?;
    Ok(file.apps)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::webhook;

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
            let shown = file_apps(text).unwrap_err();
            assert!(shown.starts_with(want), "{shown}");
            assert!(!shown.contains("9f86d081884c7d65"), "{shown}");
            assert!(!shown.contains("9086081884"), "{shown}");
        }
    }

    #[test]
    fn redis_passwords_are_masked() {
        assert_eq!(
            mask_url_password("redis://ann:s3cret@10.0.0.1:6379/2"),
            "redis://ann:<6 characters, masked>@10.0.0.1:6379/2"
        );
        assert_eq!(
            mask_url_password("rediss://:s3cret@redis"),
            "rediss://:<6 characters, masked>@redis"
        );
        assert_eq!(
            mask_url_password("redis://redis:6379"),
            "redis://redis:6379"
        );
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
        let apps = apps_file(&path).unwrap();
        assert_eq!(apps.len(), 2);
        assert!(apps[0].client_events);
        assert!(apps[0].wants_webhook(webhook::Kind::MemberAdded));
        assert!(!apps[0].wants_webhook(webhook::Kind::ChannelVacated));
        assert_eq!(apps[0].max_presence_members, 100);
        assert!(!apps[1].enabled);
        assert!(!apps[1].client_events);
        let _ = crate::app::Apps::new(apps).unwrap();
    }
}
