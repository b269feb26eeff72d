//! Soak: presence connections that join and leave presence channels over and over, from
//! the start of publishing to its end. Each cycle connects, subscribes (signed like an auth
//! endpoint) as its own user, checks that the member list it is given includes that user,
//! holds the membership for a random while (answering pings, reading the member events of
//! the others), then closes. The webhook receiver later checks that every join's
//! `member_added` has its `member_removed`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;

use crate::pusher::{self, Incoming};
use crate::stats::now_ns;
use crate::wsclient::{self, WsConn};

use super::connection::connect_established;
use super::schedule::Plan;

/// Presence channel `j` of the run `run`.
pub(super) fn channel_name(run: &str, j: usize) -> String {
    format!("presence-lt-{run}-{j}")
}

/// Presence connection `p`: cycles until publishing ends or the run stops.
pub(super) async fn churner(plan: Arc<Plan>, p: usize) {
    let Some(presence) = plan.presence.as_ref() else {
        return;
    };
    while plan.t0() == 0 || now_ns() < plan.t0() {
        if plan.stop.load(Relaxed) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hold = presence.hold.as_secs_f64();
    // Spread the first joins over one hold.
    tokio::time::sleep(Duration::from_secs_f64(rand::random::<f64>() * hold)).await;
    let channel = &presence.channels[p % presence.channels.len()];
    let user = format!("u{p}");
    while now_ns() < plan.publish_end() && !plan.stop.load(Relaxed) {
        let stay = Duration::from_secs_f64(hold * (0.5 + rand::random::<f64>()));
        if let Err(e) = cycle(&plan, p, channel, &user, stay).await {
            plan.error(
                "presence connection failed",
                format!("presence {p} ({user} on {channel}): {e:#}"),
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        // Back within the server's 3 s webhook debounce about half the time (no webhooks),
        // later the other half (member_removed, then member_added).
        tokio::time::sleep(Duration::from_secs_f64(rand::random::<f64>() * hold / 2.0)).await;
    }
}

/// One join, hold and leave.
async fn cycle(
    plan: &Plan,
    p: usize,
    channel: &str,
    user: &str,
    stay: Duration,
) -> anyhow::Result<()> {
    let presence = plan.presence.as_ref().expect("presence planned");
    let (mut conn, socket_id) = connect_established(plan, p).await?;
    let data = serde_json::json!({"user_id": user, "user_info": {"p": p}}).to_string();
    conn.send(&pusher::presence_subscribe(
        &plan.target,
        &socket_id,
        channel,
        &data,
    ))
    .await?;
    // The member list arrives JSON-encoded inside `data`: ids appear as \"u7\".
    let me = format!("\\\"{user}\\\"");
    let listed = subscribed(&mut conn, me.as_bytes()).await?;
    if !listed {
        bail!("the member list of {channel} did not include {user}");
    }
    presence.joins.fetch_add(1, Relaxed);
    let until = tokio::time::Instant::now() + stay;
    let end = plan.publish_end();
    loop {
        let mut reply = None;
        let mut closed = false;
        let res = tokio::time::timeout_at(
            until,
            conn.recv_frames(|op, payload| match op {
                0x1 => match pusher::classify(payload) {
                    Incoming::Ping => reply = Some(pusher::pong()),
                    Incoming::Error(e) => plan.error(
                        "server sent an error to a presence connection",
                        String::from_utf8_lossy(e).into_owned(),
                    ),
                    _ => {}
                },
                0x8 => closed = true,
                0x9 => reply = Some(wsclient::frame(0xA, payload)),
                _ => {}
            }),
        )
        .await;
        match res {
            Err(_) => break,
            Ok(Ok(true)) if !closed => {}
            Ok(other) => bail!("closed by the server while a member: {other:?}"),
        }
        if let Some(r) = reply {
            conn.send(&r).await?;
        }
        if now_ns() >= end || plan.stop.load(Relaxed) {
            break;
        }
    }
    // Leave by closing (1000), as a browser tab does.
    let _ = conn
        .send(&wsclient::frame(0x8, &1000u16.to_be_bytes()))
        .await;
    presence.leaves.fetch_add(1, Relaxed);
    Ok(())
}

/// Waits (up to 10 s) for `subscription_succeeded`; whether its member list has `me`.
async fn subscribed(conn: &mut WsConn, me: &[u8]) -> anyhow::Result<bool> {
    let finder = memchr::memmem::Finder::new(me);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut found: Option<anyhow::Result<bool>> = None;
        let open = tokio::time::timeout_at(
            deadline,
            conn.recv_frames(|op, p| {
                if op != 1 || found.is_some() {
                    return;
                }
                match pusher::classify(p) {
                    Incoming::Subscribed => found = Some(Ok(finder.find(p).is_some())),
                    Incoming::Error(e) => {
                        found = Some(Err(anyhow::anyhow!("{}", String::from_utf8_lossy(e))))
                    }
                    _ => {}
                }
            }),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no subscription_succeeded within 10 s"))??;
        if let Some(r) = found {
            return r;
        }
        if !open {
            bail!("connection closed before subscription_succeeded");
        }
    }
}
