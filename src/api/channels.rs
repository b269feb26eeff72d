//! `GET /apps/{id}/channels`, `/channels/{name}` and `/channels/{name}/users`.

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
                // No presence members can exist on this server yet.
                _ => {
                    v.insert(a.clone(), 0.into());
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
    let occupancy = worker.shared.index.get(ChannelRef { app, name });
    let mut out = serde_json::Map::new();
    out.insert("occupied".into(), occupancy.is_some().into());
    for a in attrs {
        match a.as_str() {
            "subscription_count" => {
                out.insert(a, occupancy.map_or(0, |o| o.subscription_count).into());
            }
            "user_count" if kind.is_presence() => {
                out.insert(a, 0.into());
            }
            "user_count" => {
                return Err(ApiError::bad_request(
                    "user_count is only available for presence channels",
                ))
            }
            _ => {
                return Err(ApiError::bad_request(
                    "cache is only available for cache channels, which this server does not support yet",
                ))
            }
        }
    }
    Ok(serde_json::Value::from(out).to_string().into())
}

/// `GET /apps/{id}/channels/{name}/users`.
pub(super) fn users(name: &str) -> Result<Bytes, ApiError> {
    let kind = channel::parse(name)
        .map_err(|e| ApiError::bad_request(format!("invalid channel {name:?}: {e}")))?;
    if !matches!(kind, ChannelKind::Presence | ChannelKind::PresenceCache) {
        return Err(ApiError::bad_request(
            "users are only available for presence channels",
        ));
    }
    // Presence channels cannot be joined on this server yet.
    Ok(Bytes::from_static(br#"{"users":[]}"#))
}
