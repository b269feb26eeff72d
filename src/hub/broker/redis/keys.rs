//! Where the cluster's state lives in Redis. Every key and pub/sub channel of one Pusher
//! channel shares the hash tag `{app id/channel}` (`/` can be in neither), so on a Redis
//! Cluster they live on one slot and one script can change them atomically.
//!
//! | Key | Type | What |
//! |---|---|---|
//! | `P:{A/C}:ev` | pub/sub channel | the channel's events, for nodes with subscribers of it |
//! | `P:{A/C}:n` | string | subscriptions over the cluster |
//! | `P:{A/C}:subs` | hash node → n | each node's share of them |
//! | `P:{A/C}:members` | hash user → user_info | presence members |
//! | `P:{A/C}:order` | sorted set user → join order | their joining order |
//! | `P:{A/C}:conns` | set of `user\nnode\nsocket` | each member connection |
//! | `P:{A/C}:uconns` | hash user → n | each member's connections |
//! | `P:{A/C}:seq` | string | the joining order counter |
//! | `P:{A/C}:cache` | string, with TTL | a cache channel's last event |
//! | `P:{A/C}:missed` | string, 60 s | a cache miss was reported |
//! | `P:{A/C}:vacated` | string, 60 s | a held `channel_vacated` webhook's decision |
//! | `P:{A/C}:left` | hash user → decision, 60 s | held `member_removed` webhooks' decisions |
//! | `P:app:{A}:channels` | set | an app's occupied channels (for listing) |
//! | `P:user:{A/U}` | set of `node\nsocket` | a user's signed-in connections |
//! | `P:control` | pub/sub channel | user messages for every node (terminate, watchlist) |
//! | `P:nodes` | sorted set session → lease expiry (ms) | the live nodes' leases |
//! | `P:node:{S}:held` | set | the channels and users session `S` registered something in |
//! | `P:node:{S}:reaper` | string, with TTL | the node clearing dead session `S` |
//! | `P:nodeid:{N}` | string | the current session of node id `N` |
//!
//! A session is one run of a node (`node-id#random`): every entry a node makes is under
//! its session, so a node restarted with the same id, or one that lost its lease, starts
//! afresh and what the old session held is cleared without touching the new one's.
//!
//! `P` is `--redis-prefix`.

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

/// The keys of one channel.
#[derive(Debug, Clone)]
pub struct ChannelKeys {
    /// Its pub/sub channel.
    pub events: String,
    /// Subscriptions over the cluster.
    pub total: String,
    /// Each node's subscriptions.
    pub subs: String,
    /// Presence members and their `user_info`.
    pub members: String,
    /// Members' joining order.
    pub order: String,
    /// Member connections.
    pub conns: String,
    /// Connections per member.
    pub uconns: String,
    /// The joining order counter.
    pub seq: String,
    /// The cached last event.
    pub cache: String,
    /// A reported cache miss.
    pub missed: String,
    /// The decision of a held `channel_vacated` webhook.
    pub vacated: String,
    /// The decisions of held `member_removed` webhooks, by user.
    pub left: String,
}

impl Keys {
    /// Keys under `prefix`.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    /// The keys of channel `channel` of the app with id `app_id`.
    pub fn channel(&self, app_id: &str, channel: &str) -> ChannelKeys {
        let base = format!("{}:{{{app_id}/{channel}}}", self.prefix);
        ChannelKeys {
            events: format!("{base}:ev"),
            total: format!("{base}:n"),
            subs: format!("{base}:subs"),
            members: format!("{base}:members"),
            order: format!("{base}:order"),
            conns: format!("{base}:conns"),
            uconns: format!("{base}:uconns"),
            seq: format!("{base}:seq"),
            cache: format!("{base}:cache"),
            missed: format!("{base}:missed"),
            vacated: format!("{base}:vacated"),
            left: format!("{base}:left"),
        }
    }

    /// The pub/sub channel of `channel`'s events.
    pub fn events(&self, app_id: &str, channel: &str) -> String {
        format!("{}:{{{app_id}/{channel}}}:ev", self.prefix)
    }

    /// The set of an app's occupied channels.
    pub fn app_channels(&self, app_id: &str) -> String {
        format!("{}:app:{{{app_id}}}:channels", self.prefix)
    }

    /// The set of a user's signed-in connections.
    pub fn user(&self, app_id: &str, user: &str) -> String {
        format!("{}:user:{{{app_id}/{user}}}", self.prefix)
    }

    /// The pub/sub channel every node listens to for user messages.
    pub fn control(&self) -> String {
        format!("{}:control", self.prefix)
    }

    /// The live sessions' leases.
    pub fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    /// What session `session` registered something in.
    pub fn held(&self, session: &str) -> String {
        format!("{}:node:{{{session}}}:held", self.prefix)
    }

    /// Who is clearing dead session `session`.
    pub fn reaper(&self, session: &str) -> String {
        format!("{}:node:{{{session}}}:reaper", self.prefix)
    }

    /// The current session of node id `node_id`.
    pub fn node_id(&self, node_id: &str) -> String {
        format!("{}:nodeid:{{{node_id}}}", self.prefix)
    }
}

/// An entry of a session's `held` set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Held {
    /// A channel (app id, name) the session counted subscriptions or members in.
    Channel(String, String),
    /// A user (app id, user id) the session signed connections in for.
    User(String, String),
}

impl Held {
    /// The set entry: `c` or `u`, the app id and the name, `\n`-separated (neither a kind
    /// nor an app id holds one).
    pub fn entry(&self) -> String {
        match self {
            Held::Channel(app, name) => format!("c\n{app}\n{name}"),
            Held::User(app, user) => format!("u\n{app}\n{user}"),
        }
    }

    /// Reads an entry back.
    pub fn parse(entry: &str) -> Option<Held> {
        let (kind, rest) = entry.split_once('\n')?;
        let (app, name) = rest.split_once('\n')?;
        match kind {
            "c" => Some(Held::Channel(app.into(), name.into())),
            "u" => Some(Held::User(app.into(), name.into())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_channels_keys_share_its_hash_tag() {
        let k = Keys::new("rc");
        let c = k.channel("1", "presence-room");
        for key in [&c.events, &c.total, &c.subs, &c.members, &c.cache] {
            assert!(key.starts_with("rc:{1/presence-room}:"), "{key}");
        }
        assert_eq!(k.events("1", "presence-room"), c.events);
        assert_eq!(k.user("1", "ann"), "rc:user:{1/ann}");
        assert_eq!(k.app_channels("1"), "rc:app:{1}:channels");
    }

    #[test]
    fn held_entries_round_trip_even_with_newlines_in_user_ids() {
        for h in [
            Held::Channel("1".into(), "presence-room".into()),
            Held::User("1".into(), "ann\nsmith".into()),
        ] {
            assert_eq!(Held::parse(&h.entry()), Some(h));
        }
        assert_eq!(Held::parse("x\n1\nroom"), None);
        assert_eq!(Held::parse("c"), None);
    }
}
