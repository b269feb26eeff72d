//! Opening a Pusher connection for a subscriber or a client-event publisher: connect to its
//! WebSocket URL (round robin) from the planned source address, wait for the socket id,
//! subscribe to channels.

use std::time::Duration;

use anyhow::bail;

use crate::cli::source_for;
use crate::pusher::{self, Incoming};
use crate::wsclient::{self, WsConn};

use super::schedule::Plan;

/// Reads until `want` matches a message; fails on errors or after 10 s.
async fn wait_for<T>(
    conn: &mut WsConn,
    mut want: impl FnMut(Incoming<'_>) -> Option<anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut found = None;
        let open = tokio::time::timeout_at(
            deadline,
            conn.recv_frames(|op, p| {
                if op == 1 && found.is_none() {
                    found = want(pusher::classify(p));
                }
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer within 10 s"))??;
        if let Some(r) = found {
            return r;
        }
        if !open {
            bail!("connection closed");
        }
    }
}

/// Connection `i` of its kind (subscriber i, client-event publisher i, presence connection
/// i): connects to the WebSocket URL `i mod n` from the planned source address and waits
/// for the socket id.
pub(super) async fn connect_established(plan: &Plan, i: usize) -> anyhow::Result<(WsConn, String)> {
    let ws = plan.target.ws_for(i);
    let source = plan
        .source_ips
        .as_ref()
        .map(|ips| source_for(ips, plan.target.ws.len(), i));
    let stream = wsclient::tcp_connect(ws.addr, source).await?;
    let mut conn = wsclient::handshake(stream, ws, &pusher::ws_path(&plan.target, ws)).await?;
    let socket_id = wait_for(&mut conn, |m| match m {
        Incoming::Established(id) => Some(Ok(id)),
        Incoming::Error(e) => Some(Err(anyhow::anyhow!("{}", String::from_utf8_lossy(e)))),
        _ => None,
    })
    .await?;
    Ok((conn, socket_id))
}

/// [`connect_established`], then subscribes to `channels`.
pub(super) async fn connect_subscribed(
    plan: &Plan,
    i: usize,
    channels: &[&str],
) -> anyhow::Result<(WsConn, String)> {
    let (mut conn, socket_id) = connect_established(plan, i).await?;
    for ch in channels {
        conn.send(&pusher::subscribe(&plan.target, &socket_id, ch))
            .await?;
        wait_for(&mut conn, |m| match m {
            Incoming::Subscribed => Some(Ok(())),
            Incoming::Error(e) => Some(Err(anyhow::anyhow!(
                "subscribing to {ch}: {}",
                String::from_utf8_lossy(e)
            ))),
            _ => None,
        })
        .await?;
    }
    Ok((conn, socket_id))
}
