//! `POST /apps/{id}/events` and `POST /apps/{id}/batch_events`.

use std::rc::Rc;

use bytes::Bytes;
use hyper::StatusCode;
use serde::Deserialize;

use super::json::{from_body, string_or_json, Shape};
use super::ApiError;
use crate::app::console::Entry;
use crate::app::{AppIdx, ChannelKey, ChannelRef};
use crate::config::Limits;
use crate::hub::Delivery;
use crate::protocol::channel::{self, ChannelKind};
use crate::protocol::{messages, SocketId, MAX_EVENT_NAME_LEN};
use crate::runtime::Runtime;
use crate::worker::Worker;

#[derive(Deserialize)]
struct EventBody {
    name: Option<String>,
    #[serde(default, deserialize_with = "optional_string_or_json")]
    data: Option<String>,
    channels: Option<Vec<String>>,
    channel: Option<String>,
    socket_id: Option<String>,
    info: Option<String>,
}

#[derive(Deserialize)]
struct BatchBody {
    batch: Vec<EventBody>,
}

fn optional_string_or_json<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<String>, D::Error> {
    string_or_json(d).map(Some)
}

/// A checked event, ready to encode.
struct Event {
    name: String,
    data: String,
    channels: Vec<String>,
    except: Option<SocketId>,
    info: Info,
}

#[derive(Default, Clone, Copy)]
struct Info {
    user_count: bool,
    subscription_count: bool,
}

impl Info {
    fn any(self) -> bool {
        self.user_count || self.subscription_count
    }
}

fn parse_info(info: Option<&str>) -> Result<Info, ApiError> {
    let mut out = Info::default();
    for attr in info
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        match attr {
            "user_count" => out.user_count = true,
            "subscription_count" => out.subscription_count = true,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown info attribute {other:?}: use user_count, subscription_count"
                )))
            }
        }
    }
    Ok(out)
}

fn check(limits: &Limits, body: EventBody, batch: bool) -> Result<Event, ApiError> {
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_request("missing event name"))?;
    if name.is_empty() || name.len() > MAX_EVENT_NAME_LEN {
        return Err(ApiError::bad_request(format!(
            "event name must be 1 to {MAX_EVENT_NAME_LEN} characters"
        )));
    }
    let data = body
        .data
        .ok_or_else(|| ApiError::bad_request("missing data"))?;
    if data.len() > limits.max_event_size {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "event data is {} bytes; at most {} bytes are allowed",
                data.len(),
                limits.max_event_size
            ),
        ));
    }
    let channels = match (body.channels, body.channel) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "give either channels or channel, not both",
            ))
        }
        (Some(_), None) if batch => {
            return Err(ApiError::bad_request("batch events name one channel each"))
        }
        (Some(c), None) => c,
        (None, Some(c)) => vec![c],
        (None, None) => return Err(ApiError::bad_request("missing channels")),
    };
    if channels.is_empty() || channels.len() > limits.max_event_channels {
        return Err(ApiError::bad_request(format!(
            "an event names 1 to {} channels",
            limits.max_event_channels
        )));
    }
    let mut encrypted = false;
    for c in &channels {
        let kind = channel::parse(c)
            .map_err(|e| ApiError::bad_request(format!("invalid channel {c:?}: {e}")))?;
        encrypted |= kind.is_encrypted();
    }
    if encrypted && channels.len() > 1 {
        return Err(ApiError::bad_request(
            "cannot trigger to multiple channels if any are encrypted",
        ));
    }
    let except = match body.socket_id {
        None => None,
        Some(s) => Some(
            SocketId::parse(&s)
                .ok_or_else(|| ApiError::bad_request(format!("invalid socket_id {s:?}")))?,
        ),
    };
    let info = parse_info(body.info.as_deref())?;
    Ok(Event {
        name,
        data,
        channels,
        except,
        info,
    })
}

fn deliveries(worker: &Worker, app: AppIdx, events: &[Event]) -> Vec<Delivery> {
    // Accepted now: the publish latency runs from here to each subscriber's write.
    let published_at = crate::clock::now_ns();
    let ttl = std::time::Duration::from_secs(worker.app(app).cache_ttl);
    events
        .iter()
        .flat_map(|e| {
            e.channels.iter().map(move |c| {
                // Encoded once; every subscriber on every worker gets these bytes.
                let frame = messages::event_frame(&e.name, Some(c), &e.data);
                let channel = ChannelKey::new(app, c);
                if channel::parse(c).is_ok_and(ChannelKind::is_cache) {
                    // Kept before it is published, so a subscriber arriving meanwhile may
                    // get it twice (cached, then live) but never misses it.
                    worker.shared.broker.remember(
                        channel.clone(),
                        frame.clone(),
                        &e.name,
                        &e.data,
                        ttl,
                    );
                }
                Delivery {
                    channel,
                    frame,
                    except: e.except,
                    published_at,
                }
            })
        })
        .collect()
}

/// `{"name":{"subscription_count":N,…},…}` for the attributes asked for.
async fn channel_info(
    worker: &Worker,
    app: AppIdx,
    channels: &[String],
    info: Info,
) -> Result<serde_json::Value, ApiError> {
    let mut out = serde_json::Map::new();
    for c in channels {
        let mut attrs = serde_json::Map::new();
        let state = worker
            .shared
            .broker
            .channel(ChannelRef { app, name: c })
            .await
            .map_err(super::unavailable)?;
        if info.subscription_count {
            attrs.insert("subscription_count".into(), state.subscription_count.into());
        }
        if info.user_count && channel::parse(c).is_ok_and(ChannelKind::is_presence) {
            attrs.insert("user_count".into(), state.user_count.into());
        }
        out.insert(c.clone(), attrs.into());
    }
    Ok(out.into())
}

/// Publishes in a task of its own, so a publisher that disconnects mid-request cannot
/// leave an event delivered to some workers and not others.
async fn publish<R: Runtime>(
    worker: &Rc<Worker>,
    app: AppIdx,
    events: &[Event],
) -> Result<(), ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let deliveries = deliveries(worker, app, events);
    // Made now and recorded by the task: a publisher that hangs up does not lose them.
    let notes = console_notes(events);
    let publisher = worker.clone();
    R::spawn(async move {
        let res = publisher.publish(deliveries).await;
        if res.is_ok() {
            if let Some((n, entries)) = notes {
                publisher.count_in(app, n);
                for entry in entries {
                    publisher.note(app, || entry);
                }
            }
        }
        let _ = tx.send(res);
    });
    match rx.await {
        Ok(res) => res.map_err(ApiError::from),
        // Only when the worker itself is going away.
        Err(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server is shutting down",
        )),
    }
}

/// The console's log entries for published events, and how many messages they count,
/// if a console watches (nothing is made otherwise).
fn console_notes(events: &[Event]) -> Option<(u64, Vec<Entry>)> {
    if !crate::app::console::watching() {
        return None;
    }
    let count = events.iter().map(|e| e.channels.len() as u64).sum();
    let mut entries = Vec::new();
    for e in events {
        for c in &e.channels {
            let mut entry = Entry::new("api_message")
                .channel(&std::sync::Arc::from(c.as_str()))
                .event(&e.name)
                .detail(&e.data);
            if let Some(s) = e.except {
                entry = entry.socket(s);
            }
            entries.push(entry);
        }
    }
    Some((count, entries))
}

/// `POST /apps/{id}/events`.
pub(super) async fn trigger<R: Runtime>(
    worker: &Rc<Worker>,
    app: AppIdx,
    body: &Bytes,
) -> Result<Bytes, ApiError> {
    let body: EventBody = from_body(body, Shape::Event)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let event = check(&worker.config().limits, body, false)?;
    let events = [event];
    publish::<R>(worker, app, &events).await?;
    let [event] = events;
    if event.info.any() {
        let channels = channel_info(worker, app, &event.channels, event.info).await?;
        return Ok(serde_json::json!({ "channels": channels })
            .to_string()
            .into());
    }
    Ok(Bytes::from_static(b"{}"))
}

/// `POST /apps/{id}/batch_events`.
pub(super) async fn trigger_batch<R: Runtime>(
    worker: &Rc<Worker>,
    app: AppIdx,
    body: &Bytes,
) -> Result<Bytes, ApiError> {
    let body: BatchBody = from_body(body, Shape::Batch)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let max = worker.config().limits.max_batch_events;
    if body.batch.len() > max {
        return Err(ApiError::bad_request(format!(
            "a batch carries at most {max} events, not {}",
            body.batch.len()
        )));
    }
    // Check every event before publishing any: a batch is accepted or refused whole.
    let events = body
        .batch
        .into_iter()
        .enumerate()
        .map(|(i, e)| {
            check(&worker.config().limits, e, true).map_err(|mut err| {
                err.message = format!("batch[{i}]: {}", err.message);
                err
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    publish::<R>(worker, app, &events).await?;
    if events.iter().any(|e| e.info.any()) {
        let mut batch = Vec::with_capacity(events.len());
        for e in &events {
            let info = channel_info(worker, app, &e.channels, e.info).await?;
            batch.push(info.get(&e.channels[0]).cloned().unwrap_or_default());
        }
        return Ok(serde_json::json!({ "batch": batch }).to_string().into());
    }
    Ok(Bytes::from_static(b"{}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_event_size: 10,
            max_event_channels: 3,
            ..Limits::defaults()
        }
    }

    fn checked(body: serde_json::Value, batch: bool) -> Result<Event, ApiError> {
        let body: EventBody = serde_json::from_value(body).unwrap();
        check(&limits(), body, batch)
    }

    fn refused(body: serde_json::Value, batch: bool) -> (StatusCode, String) {
        let e = checked(body, batch).err().expect("refused");
        (e.status, e.message)
    }

    #[test]
    fn an_event_names_one_or_more_channels_and_carries_data() {
        let e = checked(
            serde_json::json!({"name": "e", "data": "{}", "channels": ["a", "b"], "socket_id": "1.2"}),
            false,
        )
        .unwrap();
        assert_eq!(e.channels, ["a", "b"]);
        assert_eq!(e.except, Some(SocketId { random: 1, seq: 2 }));
        let e = checked(
            serde_json::json!({"name": "e", "data": {"x": 1}, "channel": "a"}),
            false,
        )
        .unwrap();
        assert_eq!(
            e.data, r#"{"x":1}"#,
            "data given as JSON is sent as its text"
        );
    }

    #[test]
    fn names_data_and_channels_are_checked() {
        let bad = StatusCode::BAD_REQUEST;
        for (body, want) in [
            (
                serde_json::json!({"data": "d", "channel": "a"}),
                "missing event name",
            ),
            (
                serde_json::json!({"name": "x".repeat(201), "data": "d", "channel": "a"}),
                "event name must be 1 to 200 characters",
            ),
            (
                serde_json::json!({"name": "e", "channel": "a"}),
                "missing data",
            ),
            (
                serde_json::json!({"name": "e", "data": "d"}),
                "missing channels",
            ),
            (
                serde_json::json!({"name": "e", "data": "d", "channel": "a", "channels": ["b"]}),
                "give either channels or channel, not both",
            ),
            (
                serde_json::json!({"name": "e", "data": "d", "channels": []}),
                "an event names 1 to 3 channels",
            ),
            (
                serde_json::json!({"name": "e", "data": "d", "channels": ["a", "b", "c", "d"]}),
                "an event names 1 to 3 channels",
            ),
            (
                serde_json::json!({"name": "e", "data": "d", "channel": "a b"}),
                "invalid channel \"a b\"",
            ),
            (
                serde_json::json!({"name": "e", "data": "d", "channels": ["private-encrypted-a", "b"]}),
                "cannot trigger to multiple channels if any are encrypted",
            ),
            (
                serde_json::json!({"name": "e", "data": "d", "channel": "a", "socket_id": "x"}),
                "invalid socket_id \"x\"",
            ),
            (
                serde_json::json!({"name": "e", "data": "d", "channel": "a", "info": "nope"}),
                "unknown info attribute \"nope\"",
            ),
        ] {
            let (status, message) = refused(body, false);
            assert_eq!(status, bad, "{message}");
            assert!(
                message.starts_with(want),
                "{message} does not start with {want}"
            );
        }
    }

    #[test]
    fn data_over_the_event_size_is_413() {
        let (status, message) = refused(
            serde_json::json!({"name": "e", "data": "12345678901", "channel": "a"}),
            false,
        );
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            message,
            "event data is 11 bytes; at most 10 bytes are allowed"
        );
    }

    #[test]
    fn batch_events_name_one_channel_each() {
        let (_, message) = refused(
            serde_json::json!({"name": "e", "data": "d", "channels": ["a"]}),
            true,
        );
        assert_eq!(message, "batch events name one channel each");
        assert!(checked(
            serde_json::json!({"name": "e", "data": "d", "channel": "a"}),
            true
        )
        .is_ok());
    }

    #[test]
    fn info_asks_for_user_and_subscription_counts() {
        let info = parse_info(Some("user_count, subscription_count")).unwrap();
        assert!(info.user_count && info.subscription_count);
        assert!(!parse_info(None).unwrap().any());
    }
}
