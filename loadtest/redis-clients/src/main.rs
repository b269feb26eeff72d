//! Pipelined commands, Lua scripts and pub/sub throughput of the `redis` and `fred` crates
//! against one Redis, on a current-thread runtime (as ringcast's broker thread runs):
//! `cargo run --release --manifest-path loadtest/redis-clients/Cargo.toml -- REDIS_URL [N]`.

use std::time::{Duration, Instant};

use futures::stream::{self, StreamExt};

const WINDOW: usize = 256;
const PAYLOAD: usize = 200;

fn rate(n: usize, d: Duration) -> String {
    format!("{:>10.0}/s", n as f64 / d.as_secs_f64())
}

mod with_redis {
    use super::*;
    use redis::AsyncCommands;

    pub async fn run(url: &str, n: usize) {
        let client = redis::Client::open(url).unwrap();
        let conn = client.get_multiplexed_async_connection().await.unwrap();
        let payload = vec![b'x'; PAYLOAD];

        let t = Instant::now();
        stream::iter(0..n)
            .for_each_concurrent(WINDOW, |_| {
                let mut c = conn.clone();
                let p = payload.clone();
                async move {
                    let _: i64 = c.publish("nobody", p).await.unwrap();
                }
            })
            .await;
        println!("redis  publish, pipelined      {}", rate(n, t.elapsed()));

        let script = redis::Script::new("return redis.call('INCR', KEYS[1])");
        let t = Instant::now();
        stream::iter(0..n)
            .for_each_concurrent(WINDOW, |i| {
                let mut c = conn.clone();
                let s = script.clone();
                async move {
                    let _: i64 = s
                        .key(format!("k{}", i % 1000))
                        .invoke_async(&mut c)
                        .await
                        .unwrap();
                }
            })
            .await;
        println!("redis  script, pipelined       {}", rate(n, t.elapsed()));

        let mut sub = client.get_async_pubsub().await.unwrap();
        sub.subscribe("bench").await.unwrap();
        let mut messages = sub.into_on_message();
        let t = Instant::now();
        let publisher = async {
            stream::iter(0..n)
                .for_each_concurrent(WINDOW, |_| {
                    let mut c = conn.clone();
                    let p = payload.clone();
                    async move {
                        let _: i64 = c.publish("bench", p).await.unwrap();
                    }
                })
                .await;
        };
        let receiver = async {
            for _ in 0..n {
                messages.next().await.unwrap();
            }
        };
        tokio::join!(publisher, receiver);
        println!("redis  pub/sub, end to end     {}", rate(n, t.elapsed()));

        let mut sub = client.get_async_pubsub().await.unwrap();
        let channels: Vec<String> = (0..10_000).map(|i| format!("ch{i}")).collect();
        let t = Instant::now();
        for chunk in channels.chunks(512) {
            sub.subscribe(chunk).await.unwrap();
        }
        println!(
            "redis  subscribe 10,000 channels in 512s: {:?}",
            t.elapsed()
        );
    }
}

mod with_fred {
    use super::*;
    use fred::prelude::*;

    pub async fn run(url: &str, n: usize) {
        let config = Config::from_url(url).unwrap();
        let client = Builder::from_config(config.clone()).build().unwrap();
        client.init().await.unwrap();
        let payload = vec![b'x'; PAYLOAD];

        let t = Instant::now();
        stream::iter(0..n)
            .for_each_concurrent(WINDOW, |_| {
                let c = client.clone();
                let p = payload.clone();
                async move {
                    let _: i64 = c.publish("nobody", p).await.unwrap();
                }
            })
            .await;
        println!("fred   publish, pipelined      {}", rate(n, t.elapsed()));

        let script = fred::types::scripts::Script::from_lua("return redis.call('INCR', KEYS[1])");
        let t = Instant::now();
        stream::iter(0..n)
            .for_each_concurrent(WINDOW, |i| {
                let c = client.clone();
                let s = &script;
                async move {
                    let _: i64 = s
                        .evalsha_with_reload(
                            &c,
                            vec![format!("k{}", i % 1000)],
                            Vec::<String>::new(),
                        )
                        .await
                        .unwrap();
                }
            })
            .await;
        println!("fred   script, pipelined       {}", rate(n, t.elapsed()));

        let subscriber = Builder::from_config(config.clone())
            .with_performance_config(|p| p.broadcast_channel_capacity = 1 << 20)
            .build_subscriber_client()
            .unwrap();
        subscriber.init().await.unwrap();
        let mut messages = subscriber.message_rx();
        subscriber.subscribe("bench").await.unwrap();
        let t = Instant::now();
        let publisher = async {
            stream::iter(0..n)
                .for_each_concurrent(WINDOW, |_| {
                    let c = client.clone();
                    let p = payload.clone();
                    async move {
                        let _: i64 = c.publish("bench", p).await.unwrap();
                    }
                })
                .await;
        };
        let receiver = async {
            for _ in 0..n {
                messages.recv().await.unwrap();
            }
        };
        tokio::join!(publisher, receiver);
        println!("fred   pub/sub, end to end     {}", rate(n, t.elapsed()));

        let sub2 = Builder::from_config(config)
            .build_subscriber_client()
            .unwrap();
        sub2.init().await.unwrap();
        let channels: Vec<String> = (0..10_000).map(|i| format!("ch{i}")).collect();
        let t = Instant::now();
        for chunk in channels.chunks(512) {
            sub2.subscribe(chunk.to_vec()).await.unwrap();
        }
        println!(
            "fred   subscribe 10,000 channels in 512s: {:?}",
            t.elapsed()
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let n: usize = args.next().map_or(200_000, |s| s.parse().unwrap());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 1..=3 {
        println!("round {round}");
        rt.block_on(with_redis::run(&url, n));
        rt.block_on(with_fred::run(&url, n));
    }
}
