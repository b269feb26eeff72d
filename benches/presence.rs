//! Answering a repeated subscription to a full presence channel (100 members, ~1 KB of
//! `user_info` each): the roster the registry keeps between changes of membership, against
//! building the `subscription_succeeded` frame from the members each time.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use ringcast::app::ChannelKey;
use ringcast::hub::broker::PresenceRegistry;
use ringcast::protocol::SocketId;
use ringcast::pusher::{Member, Roster};

fn presence(c: &mut Criterion) {
    let registry = PresenceRegistry::default();
    let key = ChannelKey::new(0, "presence-room");
    let info: Arc<str> = Arc::from(format!(r#"{{"bio":"{}"}}"#, "x".repeat(1000)));
    for u in 0..100u64 {
        let member = Member {
            user_id: Arc::from(u.to_string()),
            user_info: info.clone(),
        };
        let socket = SocketId { random: 1, seq: u };
        registry.join(&key, &member, socket, 100, || {});
    }
    let members = registry.members(key.as_ref());
    c.bench_function("presence_resubscribe_100_members_kept_roster", |b| {
        b.iter(|| registry.roster(key.as_ref()))
    });
    c.bench_function("presence_resubscribe_100_members_rebuilt", |b| {
        b.iter(|| Roster::of("presence-room", &registry.members(key.as_ref())))
    });
    assert_eq!(
        registry.roster(key.as_ref()),
        Roster::of("presence-room", &members)
    );
}

criterion_group!(benches, presence);
criterion_main!(benches);
