//! `GET /apps/{id}/channels`, `/channels/{name}` and `/channels/{name}/users`: which `info`
//! attributes each may ask for (checked first, without IO), then the broker's answers.

use std::time::Instant;

use bytes::Bytes;

use super::{unavailable, ApiError};
use crate::app::{AppIdx, ChannelRef};
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::signature::Params;
use crate::worker::Worker;

/// An `info` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attr {
    SubscriptionCount,
    UserCount,
    Cache,
}

impl Attr {
    fn name(self) -> &'static str {
        match self {
            Self::SubscriptionCount => "subscription_count",
            Self::UserCount => "user_count",
            Self::Cache => "cache",
        }
    }
}

/// The `info` attributes asked for, each one of `allowed`.
fn info_attrs(params: &Params, allowed: &[Attr]) -> Result<Vec<Attr>, ApiError> {
    let mut out = Vec::new();
    for name in params
        .get("info")
        .map(String::as_str)
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        let Some(attr) = allowed.iter().find(|a| a.name() == name) else {
            let names: Vec<&str> = allowed.iter().map(|a| a.name()).collect();
            return Err(ApiError::bad_request(format!(
                "info attribute {name:?} is not available here; available: {}",
                names.join(", ")
            )));
        };
        out.push(*attr);
    }
    Ok(out)
}

/// What a channel list may report: `user_count` only for a list of presence channels.
fn list_query(params: &Params) -> Result<(&str, Vec<Attr>), ApiError> {
    let prefix = params.get("filter_by_prefix").map_or("", String::as_str);
    let attrs = info_attrs(params, &[Attr::UserCount, Attr::SubscriptionCount])?;
    if attrs.contains(&Attr::UserCount) && !prefix.starts_with("presence-") {
        return Err(ApiError::bad_request(
            "user_count is only available when filter_by_prefix limits the list to presence- channels",
        ));
    }
    Ok((prefix, attrs))
}

/// What a channel's info may report: `user_count` for presence channels, `cache` for cache
/// channels.
fn info_query(name: &str, params: &Params) -> Result<Vec<Attr>, ApiError> {
    let kind = parse(name)?;
    let attrs = info_attrs(
        params,
        &[Attr::UserCount, Attr::SubscriptionCount, Attr::Cache],
    )?;
    if attrs.contains(&Attr::UserCount) && !kind.is_presence() {
        return Err(ApiError::bad_request(
            "user_count is only available for presence channels",
        ));
    }
    if attrs.contains(&Attr::Cache) && !kind.is_cache() {
        return Err(ApiError::bad_request(
            "cache is only available for cache channels",
        ));
    }
    Ok(attrs)
}

/// Members can be listed of presence channels only.
fn users_query(name: &str) -> Result<(), ApiError> {
    if !matches!(
        parse(name)?,
        ChannelKind::Presence | ChannelKind::PresenceCache
    ) {
        return Err(ApiError::bad_request(
            "users are only available for presence channels",
        ));
    }
    Ok(())
}

fn parse(name: &str) -> Result<ChannelKind, ApiError> {
    channel::parse(name)
        .map_err(|e| ApiError::bad_request(format!("invalid channel {name:?}: {e}")))
}

/// `GET /apps/{id}/channels?filter_by_prefix=…&info=…`: occupied channels.
pub(super) async fn list(worker: &Worker, app: AppIdx, params: &Params) -> Result<Bytes, ApiError> {
    let (prefix, attrs) = list_query(params)?;
    let broker = &worker.shared.broker;
    let mut channels = serde_json::Map::new();
    let mut found = broker.channels(app, prefix).await.map_err(unavailable)?;
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, subscription_count) in found {
        let mut v = serde_json::Map::new();
        for a in &attrs {
            let value = match a {
                Attr::SubscriptionCount => subscription_count.into(),
                _ => {
                    let r = ChannelRef { app, name: &name };
                    broker
                        .channel(r)
                        .await
                        .map_err(unavailable)?
                        .user_count
                        .into()
                }
            };
            v.insert(a.name().into(), value);
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
    let attrs = info_query(name, params)?;
    let key = ChannelRef { app, name };
    let broker = &worker.shared.broker;
    let state = broker.channel(key).await.map_err(unavailable)?;
    let mut out = serde_json::Map::new();
    out.insert("occupied".into(), (state.subscription_count > 0).into());
    for a in attrs {
        let value = match a {
            Attr::SubscriptionCount => state.subscription_count.into(),
            Attr::UserCount => state.user_count.into(),
            Attr::Cache => {
                let cached = broker.cached(key).await.map_err(unavailable)?;
                cached.map_or(serde_json::Value::Null, |c| {
                    let ttl = c
                        .expires
                        .saturating_duration_since(Instant::now())
                        .as_secs();
                    serde_json::json!({ "data": &*c.data, "ttl": ttl })
                })
            }
        };
        out.insert(a.name().into(), value);
    }
    Ok(serde_json::Value::from(out).to_string().into())
}

/// `GET /apps/{id}/channels/{name}/users`.
pub(super) async fn users(worker: &Worker, app: AppIdx, name: &str) -> Result<Bytes, ApiError> {
    users_query(name)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn params(query: &str) -> Params {
        crate::protocol::signature::parse_query(Some(query)).unwrap()
    }

    fn message<T: std::fmt::Debug>(r: Result<T, ApiError>) -> String {
        r.unwrap_err().message
    }

    #[test]
    fn lists_report_user_count_only_for_presence_prefixes() {
        let presence = params("filter_by_prefix=presence-&info=user_count");
        let (prefix, attrs) = list_query(&presence).unwrap();
        assert_eq!((prefix, attrs), ("presence-", vec![Attr::UserCount]));
        assert!(message(list_query(&params("info=user_count"))).contains("filter_by_prefix"));
        assert_eq!(
            list_query(&params("info=subscription_count")).unwrap().1,
            [Attr::SubscriptionCount]
        );
        assert!(message(list_query(&params("info=cache"))).contains("not available here"));
    }

    #[test]
    fn channel_info_offers_user_count_for_presence_and_cache_for_cache_channels() {
        assert_eq!(
            info_query(
                "presence-cache-a",
                &params("info=user_count,cache,subscription_count")
            )
            .unwrap(),
            [Attr::UserCount, Attr::Cache, Attr::SubscriptionCount]
        );
        assert_eq!(
            message(info_query("news", &params("info=user_count"))),
            "user_count is only available for presence channels"
        );
        assert_eq!(
            message(info_query("presence-a", &params("info=cache"))),
            "cache is only available for cache channels"
        );
        assert!(message(info_query("a b", &params(""))).starts_with("invalid channel"));
    }

    #[test]
    fn members_are_listed_for_presence_channels_only() {
        assert!(users_query("presence-a").is_ok());
        assert!(users_query("presence-cache-a").is_ok());
        assert_eq!(
            message(users_query("private-a")),
            "users are only available for presence channels"
        );
    }
}
