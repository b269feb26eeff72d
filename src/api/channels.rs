//! `GET /apps/{id}/channels`, `/channels/{name}` and `/channels/{name}/users`.

use std::time::Instant;

use bytes::Bytes;

use super::{unavailable, ApiError};
use crate::app::{AppIdx, ChannelRef};
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::signature::Params;
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
pub(super) async fn list(worker: &Worker, app: AppIdx, params: &Params) -> Result<Bytes, ApiError> {
    let prefix = params.get("filter_by_prefix").map_or("", String::as_str);
    let attrs = info_attrs(params, &["user_count", "subscription_count"])?;
    if attrs.iter().any(|a| a == "user_count") && !prefix.starts_with("presence-") {
        return Err(ApiError::bad_request(
            "user_count is only available when filter_by_prefix limits the list to presence- channels",
        ));
    }
    let broker = &worker.shared.broker;
    let mut channels = serde_json::Map::new();
    let mut found = broker.channels(app, prefix).await.map_err(unavailable)?;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, subscription_count) in found {
        let mut v = serde_json::Map::new();
        for a in &attrs {
            match a.as_str() {
                "subscription_count" => {
                    v.insert(a.clone(), subscription_count.into());
                }
                _ => {
                    let r = ChannelRef { app, name: &name };
                    let users = broker.channel(r).await.map_err(unavailable)?.user_count;
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
pub(super) async fn info(
    worker: &Worker,
    app: AppIdx,
    name: &str,
    params: &Params,
) -> Result<Bytes, ApiError> {
    let kind = channel::parse(name)
        .map_err(|e| ApiError::bad_request(format!("invalid channel {name:?}: {e}")))?;
    let attrs = info_attrs(params, &["user_count", "subscription_count", "cache"])?;
    let key = ChannelRef { app, name };
    let broker = &worker.shared.broker;
    let state = broker.channel(key).await.map_err(unavailable)?;
    let mut out = serde_json::Map::new();
    out.insert("occupied".into(), (state.subscription_count > 0).into());
    for a in attrs {
        match a.as_str() {
            "subscription_count" => {
                out.insert(a, state.subscription_count.into());
            }
            "user_count" if kind.is_presence() => {
                out.insert(a, state.user_count.into());
            }
            "user_count" => {
                return Err(ApiError::bad_request(
                    "user_count is only available for presence channels",
                ))
            }
            _ if kind.is_cache() => {
                let cached = broker.cached(key).await.map_err(unavailable)?;
                let cached = cached.map(|c| {
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
pub(super) async fn users(worker: &Worker, app: AppIdx, name: &str) -> Result<Bytes, ApiError> {
    let kind = channel::parse(name)
        .map_err(|e| ApiError::bad_request(format!("invalid channel {name:?}: {e}")))?;
    if !matches!(kind, ChannelKind::Presence | ChannelKind::PresenceCache) {
        return Err(ApiError::bad_request(
            "users are only available for presence channels",
        ));
    }
    let members = worker
        .shared
        .broker
        .presence(ChannelRef { app, name })
        .await
        .map_err(unavailable)?;
    let users: Vec<serde_json::Value> = members
        .iter()
        .map(|m| serde_json::json!({ "id": &*m.user_id }))
        .collect();
    Ok(serde_json::json!({ "users": users }).to_string().into())
}
