//! The TOML configuration file (`--config`): every command-line flag as a top-level key
//! (dashes become underscores), plus `[[app]]` tables.
//!
//! Precedence, highest first: the command line, `RINGCAST_*` environment variables, the
//! file, the built-in defaults. The file's values are applied by re-parsing the command
//! line with them added for every flag that neither the command line nor the environment
//! set, so a value from the file is validated exactly as the same flag would be.
//!
//! `ringcast config check FILE` validates a file and prints the effective configuration
//! with secrets masked; `ringcast config example` prints a commented example.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches};

use crate::app::{toml_error, App};
use crate::config::{Cli, ConfigError};

/// The commented example printed by `ringcast config example`.
pub const EXAMPLE: &str = include_str!("../deploy/ringcast.toml.example");

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
pub fn describe(cli: &Cli, config: &crate::config::Config) -> String {
    let mut out = String::new();
    out.push_str("# Effective configuration (command line > environment > file > defaults).\n");
    out.push_str(&toml::to_string(&Effective::of(cli)).unwrap_or_default());
    let apps: Vec<MaskedApp<'_>> = config.apps.iter().map(MaskedApp).collect();
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
        Effective(t)
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
