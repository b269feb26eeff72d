//! The node's two ways into Redis, for one server or a Redis Cluster alike: [`Conn`] for
//! commands (scripts, pipelines; one multiplexed connection, reconnected by the client) and
//! [`Subscriber`] for pub/sub (`SUBSCRIBE` on one server; sharded `SSUBSCRIBE` on a
//! Cluster, so each channel's messages travel only through the shard that owns its slot).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionLike, ConnectionManager, PubSubSink, PubSubStream};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::Slot;
use redis::{Cmd, Pipeline, PushKind, RedisError, RedisFuture, RedisResult, Value};
use tokio::sync::mpsc::UnboundedReceiver;

/// Where the cluster's Redis is.
#[derive(Debug, Clone)]
pub enum Target {
    /// One server (or a primary behind a proxy).
    Single(String),
    /// A Redis Cluster, by seed nodes.
    Cluster(Vec<String>),
}

impl Target {
    /// The command that publishes from a script or a pipeline.
    pub fn publish(&self) -> &'static str {
        match self {
            Target::Single(_) => "PUBLISH",
            Target::Cluster(_) => "SPUBLISH",
        }
    }
}

/// A connection for commands. Cheap to clone: every clone shares one multiplexed
/// connection (per node of a Cluster).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    /// Set once the Cluster has been reached (commands fail fast until then).
    Cluster(Arc<OnceLock<ClusterConnection>>),
}

fn not_yet() -> RedisError {
    RedisError::from((redis::ErrorKind::Io, "Redis Cluster not reached yet"))
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(cell) => match cell.get().cloned() {
                Some(mut c) => Box::pin(async move { c.req_packed_command(cmd).await }),
                None => Box::pin(async { Err(not_yet()) }),
            },
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(cell) => match cell.get().cloned() {
                Some(mut c) => {
                    Box::pin(async move { c.req_packed_commands(pipeline, offset, count).await })
                }
                None => Box::pin(async { Err(not_yet()) }),
            },
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(_) => 0,
        }
    }
}

/// Publishes each payload to its pub/sub channel, pipelined: one pipeline on one server;
/// on a Cluster one per slot (a pipeline may not span slots), sent together. Each
/// channel's messages keep their order: one connection per shard carries them.
pub(super) async fn publish_all(
    conn: &mut Conn,
    publish: &str,
    events: Vec<(String, bytes::Bytes)>,
) -> RedisResult<()> {
    let pipe_of = |events: &[(String, bytes::Bytes)]| {
        let mut pipe = redis::pipe();
        for (channel, payload) in events {
            pipe.cmd(publish)
                .arg(channel)
                .arg(payload.as_ref())
                .ignore();
        }
        pipe
    };
    match conn {
        Conn::Single(_) => pipe_of(&events).query_async::<()>(conn).await,
        Conn::Cluster(_) => {
            let mut groups: HashMap<Slot, Vec<(String, bytes::Bytes)>> = HashMap::new();
            for e in events {
                groups.entry(Slot::for_key(&e.0)).or_default().push(e);
            }
            let sends = groups.into_values().map(|group| {
                let (pipe, mut c) = (pipe_of(&group), conn.clone());
                async move { pipe.query_async::<()>(&mut c).await }
            });
            futures_util::future::try_join_all(sends).await.map(drop)
        }
    }
}

/// Opens a Redis Cluster connection; `pushes` receives what subscriptions bring.
pub(super) async fn cluster(
    seeds: &[String],
    timeout: Duration,
    pushes: Option<tokio::sync::mpsc::UnboundedSender<redis::PushInfo>>,
) -> RedisResult<ClusterConnection> {
    let mut builder = ClusterClientBuilder::new(seeds.to_vec())
        .connection_timeout(timeout)
        .response_timeout(timeout)
        .retries(1)
        .use_protocol(redis::ProtocolVersion::RESP3);
    if let Some(tx) = pushes {
        builder = builder.push_sender(tx);
    }
    builder.build()?.get_async_connection().await
}

/// The pub/sub side of a node.
pub(super) enum Subscriber {
    Single(PubSubSink, PubSubStream),
    Cluster {
        conn: ClusterConnection,
        pushes: UnboundedReceiver<redis::PushInfo>,
    },
}

impl Subscriber {
    /// Connects to `target`.
    pub async fn connect(target: &Target, timeout: Duration) -> RedisResult<Subscriber> {
        let timed_out = || RedisError::from((redis::ErrorKind::Io, "connect timed out"));
        match target {
            Target::Single(url) => {
                let client = redis::Client::open(url.as_str())?;
                let pubsub = tokio::time::timeout(timeout, client.get_async_pubsub())
                    .await
                    .map_err(|_| timed_out())??;
                let (sink, stream) = pubsub.split();
                Ok(Subscriber::Single(sink, stream))
            }
            Target::Cluster(seeds) => {
                let (tx, pushes) = tokio::sync::mpsc::unbounded_channel();
                let conn = tokio::time::timeout(timeout, cluster(seeds, timeout, Some(tx)))
                    .await
                    .map_err(|_| timed_out())??;
                Ok(Subscriber::Cluster { conn, pushes })
            }
        }
    }

    /// Subscribes to `names`: one `SUBSCRIBE`, or on a Cluster one `SSUBSCRIBE` per slot
    /// (a sharded subscription may not span slots), sent together.
    pub async fn subscribe(&mut self, names: &[&str]) -> RedisResult<()> {
        match self {
            Subscriber::Single(sink, _) => sink.subscribe(names).await,
            Subscriber::Cluster { conn, .. } => {
                let calls = by_slot(names).into_values().map(|group| {
                    let mut c = conn.clone();
                    async move { c.ssubscribe(group).await }
                });
                futures_util::future::try_join_all(calls).await.map(drop)
            }
        }
    }

    /// Unsubscribes from `names`, batched as [`Subscriber::subscribe`].
    pub async fn unsubscribe(&mut self, names: &[&str]) -> RedisResult<()> {
        match self {
            Subscriber::Single(sink, _) => sink.unsubscribe(names).await,
            Subscriber::Cluster { conn, .. } => {
                let calls = by_slot(names).into_values().map(|group| {
                    let mut c = conn.clone();
                    async move { c.sunsubscribe(group).await }
                });
                futures_util::future::try_join_all(calls).await.map(drop)
            }
        }
    }

    /// The next message: its pub/sub channel and payload; `None` when the connection is
    /// gone.
    pub async fn next(&mut self) -> Option<(String, Vec<u8>)> {
        match self {
            Subscriber::Single(_, stream) => {
                let msg = stream.next().await?;
                Some((
                    msg.get_channel_name().to_string(),
                    msg.get_payload_bytes().to_vec(),
                ))
            }
            Subscriber::Cluster { pushes, .. } => loop {
                let push = pushes.recv().await?;
                if !matches!(push.kind, PushKind::SMessage | PushKind::Message) {
                    continue;
                }
                let mut data = push.data.into_iter();
                if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
                    (data.next(), data.next())
                {
                    if let Ok(channel) = String::from_utf8(channel) {
                        return Some((channel, payload));
                    }
                }
            },
        }
    }
}

/// `names` grouped by their cluster slot.
fn by_slot<'a>(names: &[&'a str]) -> HashMap<Slot, Vec<&'a str>> {
    let mut groups: HashMap<Slot, Vec<&str>> = HashMap::new();
    for n in names {
        groups.entry(Slot::for_key(n)).or_default().push(n);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_channels_pubsub_and_keys_share_a_slot() {
        let keys = super::super::keys::Keys::new("rc");
        let k = keys.channel("app", "presence-room");
        let slot = Slot::for_key(&k.events);
        for key in [&k.total, &k.members, &k.conns, &k.left, &k.vacated] {
            assert_eq!(Slot::for_key(key), slot, "{key}");
        }
        let other = keys.events("app", "other");
        let groups = by_slot(&[&k.events, &other, &k.events]);
        assert_eq!(groups[&slot].len(), 2);
    }
}
