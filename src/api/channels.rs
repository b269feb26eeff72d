//! `GET /apps/{id}/channels`, `/channels/{name}` and `/channels/{name}/users`.

use std::time::Instant;

use bytes::Bytes;

use super::auth::Params;
use super::ApiError;
use crate::app::AppIdx;
use crate::hub::ChannelRef;
use crate::protocol::channel::{self, ChannelKind};
use crate::worker::Worker;

fn info_attrs(params: &Params, allowed: &[&str]) -> Result<Vec<String>, ApiError> {
    let mut out = Vec::new();
    for attr in params
        .get("info")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        if !allowed.contains(&attr) {
            return Err(ApiError::bad_request(format!(
                "info attribute {attr:?} is not available here; available: {}",
                allowed.join(", ")
            )));
        }
        out.push(attr.to_string());
    }
    Ok(out)
}

/// `GET /apps/{id}/channels?filter_by_prefix=…&info=…`: occupied channels.
pub(super) fn list(worker: &Worker, app: AppIdx, params: &Params) -> Result<Bytes, ApiError> {
    let prefix = params.get("filter_by_prefix").map_or("", String::as_str);
    let attrs = info_attrs(params, &["user_count", "subscription_count"])?;
    if attrs.iter().any(|a| a == "user_count") && !prefix.starts_with("presence-") {
        return Err(ApiError::bad_request(
            "user_count is only available when filter_by_prefix limits the list to presence- channels",
        ));
    }
    let mut channels = serde_json::Map::new();
    let mut found = worker.shared.index.channels(app, prefix);
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, occupancy) in found {
        let mut v = serde_json::Map::new();
        for a in &attrs {
            match a.as_str() {
                "subscription_count" => {
                    v.insert(a.clone(), occupancy.subscription_count.into());
                }
                _ => {
                    let users = worker
                        .shared
                        .presence
                        .user_count(ChannelRef { app, name: &name });
                    v.insert(a.clone(), users.into());
                }
            }
        }
        channels.insert(name.to_string(), v.into());
    }
    Ok(serde_json::json!({ "channels": channels })
        .to_string()
        .into())
}

/// `GET /apps/{id}/channels/{name}?info=…`.
pub(super) fn info(
    worker: &Worker,
    app: AppIdx,
    name: &str,
    params: &Params,
) -> Result<Bytes, ApiError> {
    let kind = channel::parse(name)
        .map_err(|e| ApiError::bad_request(format!("invalid channel {name:?}: {e}")))?;
    let attrs = info_attrs(params, &["user_count", "subscription_count", "cache"])?;
    let key = ChannelRef { app, name };
    let occupancy = worker.shared.index.get(key);
    let mut out = serde_json::Map::new();
    out.insert("occupied".into(), occupancy.is_some().into());
    for a in attrs {
        match a.as_str() {
            "subscription_count" => {
                out.insert(a, occupancy.map_or(0, |o| o.subscription_count).into());
            }
            "user_count" if kind.is_presence() => {
                let users = worker.shared.presence.user_count(key);
                out.insert(a, users.into());
            }
            "user_count" => {
                return Err(ApiError::bad_request(
                    "user_count is only available for presence channels",
                ))
            }
            _ if kind.is_cache() => {
                let cached = worker.shared.cache.get(key).map(|c| {
                    let ttl = c
                        .expires
                        .saturating_duration_since(Instant::now())
                        .as_secs();
                    serde_json::json!({ "data": &*c.data, "ttl": ttl })
                });
                out.insert(a, cached.unwrap_or(serde_json::Value::Null));
            }
            _ => {
                return Err(ApiError::bad_request(
                    "cache is only available for cache channels",
                ))
            }
        }
    }
    Ok(serde_json::Value::from(out).to_string().into())
}

/// `GET /apps/{id}/channels/{name}/users`.
pub(super) fn users(worker: &Worker, app: AppIdx, name: &str) -> Result<Bytes, ApiError> {
    let kind = channel::parse(name)
        .map_err(|e| ApiError::bad_request(format!("invalid channel {name:?}: {e}")))?;
    if !matches!(kind, ChannelKind::Presence | ChannelKind::PresenceCache) {
        return Err(ApiError::bad_request(
            "users are only available for presence channels",
        ));
    }
    let users: Vec<serde_json::Value> = worker
        .shared
        .presence
        .members(ChannelRef { app, name })
        .iter()
        .map(|id| serde_json::json!({ "id": &**id }))
        .collect();
    Ok(serde_json::json!({ "users": users }).to_string().into())
}
