//! The Lua scripts that change the cluster's state: each decision (a channel's first
//! subscription, a user's first and last connection) is made atomically in Redis, never
//! read-modify-written from a node; a member event is published by the script that decides
//! it, so every node receives member events in the order they were decided.
//!
//! Every script touches the keys of one channel (or one user) only: on a Redis Cluster they
//! share a slot.

use std::sync::LazyLock;

use redis::Script;

/// KEYS: subs, total, vacated. ARGV: node, delta, decision token. Adds `delta` to the
/// node's share and the total. Returns `{total after, verdict}`: verdict 1 when the channel
/// is occupied again while a `channel_vacated` webhook is held (its decision is taken
/// back: neither webhook is sent), 2 when this vacates it (the webhook is held under the
/// token), 0 otherwise.
pub static COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local delta = tonumber(ARGV[2])
local mine = redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
if mine <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
local n = redis.call('INCRBY', KEYS[2], delta)
if n <= 0 then
  redis.call('DEL', KEYS[2])
  n = 0
end
local verdict = 0
if delta > 0 and n == delta then
  verdict = redis.call('DEL', KEYS[3])
elseif delta < 0 and n == 0 then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', 60000)
  verdict = 2
end
return {n, verdict}
"#,
    )
});

/// KEYS: subs, total, vacated. ARGV: node, n. Sets the node's share to `n` (registering
/// anew after reaching Redis again), the total following; returns `{total before, total
/// after, quiet}`, `quiet` 1 when this occupies the channel again while a
/// `channel_vacated` webhook is held.
pub static SET_COUNT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[2])
if new > 0 then redis.call('HSET', KEYS[1], ARGV[1], new) else redis.call('HDEL', KEYS[1], ARGV[1]) end
local n = redis.call('INCRBY', KEYS[2], new - old)
if n <= 0 then
  redis.call('DEL', KEYS[2])
  n = 0
end
local quiet = 0
if before == 0 and n > 0 then quiet = redis.call('DEL', KEYS[3]) end
return {before, n, quiet}
"#,
    )
});

/// KEYS: members, order, conns, uconns, seq, events, left. ARGV: user, user_info,
/// `node\nsocket`, max members, member_added payload, PUBLISH or SPUBLISH.
///
/// Returns `{kind, id, info, id, info, …}`: kind 1 for the user's first connection (the
/// event is published), 3 for a first connection while the user's `member_removed`
/// webhook is held (published too; the held webhook's decision is taken back), 2 for
/// another connection, 0 when the channel is full (and the members are not listed).
pub static JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local user = ARGV[1]
local conn = user .. '\n' .. ARGV[3]
local kind
if redis.call('SADD', KEYS[3], conn) == 0 then
  kind = 2
elseif redis.call('HEXISTS', KEYS[4], user) == 1 then
  redis.call('HINCRBY', KEYS[4], user, 1)
  kind = 2
elseif redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[4]) then
  redis.call('SREM', KEYS[3], conn)
  return {0}
else
  redis.call('HSET', KEYS[1], user, ARGV[2])
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[5]), user)
  redis.call('HSET', KEYS[4], user, 1)
  redis.call(ARGV[6], KEYS[6], ARGV[5])
  kind = 1
  if redis.call('HDEL', KEYS[7], user) == 1 then kind = 3 end
end
local out = {kind}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[1], id)
end
return out
"#,
    )
});

/// KEYS: members, order, conns, uconns, seq, events, left. ARGV: user, `node\nsocket`,
/// member_removed payload, PUBLISH or SPUBLISH, decision token. Returns 1 if that was the
/// user's last connection (the event is published, the webhook held under the token), 0
/// otherwise (or if the connection had not joined).
pub static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local user = ARGV[1]
if redis.call('SREM', KEYS[3], user .. '\n' .. ARGV[2]) == 0 then return 0 end
if redis.call('HINCRBY', KEYS[4], user, -1) > 0 then return 0 end
redis.call('HDEL', KEYS[4], user)
redis.call('HDEL', KEYS[1], user)
redis.call('ZREM', KEYS[2], user)
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[5]) end
redis.call(ARGV[4], KEYS[6], ARGV[3])
redis.call('HSET', KEYS[7], user, ARGV[5])
redis.call('PEXPIRE', KEYS[7], 60000)
return 1
"#,
    )
});

/// KEYS: members, order. Returns `{id, info, …}` in joining order.
pub static MEMBERS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local out = {}
for _, id in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[1], id)
end
return out
"#,
    )
});

/// KEYS: the user's set. ARGV: `node\nsocket`. Returns 1 if this is the user's first
/// signed-in connection.
pub static SIGN_IN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SADD', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[1]) == 1 then return 1 end
return 0
"#,
    )
});

/// KEYS: the user's set. ARGV: `node\nsocket`. Returns 1 if that was the user's last
/// signed-in connection.
pub static SIGN_OUT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if redis.call('SREM', KEYS[1], ARGV[1]) == 0 then return 0 end
if redis.call('SCARD', KEYS[1]) == 0 then return 1 end
return 0
"#,
    )
});

/// KEYS: cache, missed. ARGV: the encoded event, TTL in ms. Keeps the event; a miss may be
/// reported again after it expires.
pub static REMEMBER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1
"#,
    )
});

/// KEYS: cache, missed. Returns `{1, event}` for a cached event, `{0, first}` otherwise,
/// with `first` 1 for the first miss within a minute since the channel's last event.
pub static REPLAY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local event = redis.call('GET', KEYS[1])
if event then return {1, event} end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', 60000) then return {0, 1} end
return {0, 0}
"#,
    )
});

/// KEYS: nodes. ARGV: session, lease in ms, register (`1` or `0`). Extends the session's
/// lease if it still holds one (or `register` is `1`); returns `{held, dead…}`: `held` 1 if
/// the lease had not expired, then up to 16 sessions whose leases have. Redis's clock is
/// the only one read, so the nodes' clocks need not agree.
pub static HEARTBEAT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
local held = 0
if score and tonumber(score) > now then held = 1 end
if held == 1 or ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
end
local out = {held}
for _, s in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. now, 'LIMIT', 0, 16)) do
  if s ~= ARGV[1] then out[#out + 1] = s end
end
return out
"#,
    )
});

/// KEYS: subs, total, members, order, conns, uconns, seq, events, vacated, left. ARGV:
/// dead session, channel name, PUBLISH or SPUBLISH, decision token (the held webhooks'
/// decisions are recorded as for a leave). Removes what the session held in the channel: its
/// share of the count and its member connections, publishing `member_removed` (as JSON,
/// framed by each receiving node) for each user who had no other connection. Returns
/// `{total before, total after, removed user…}`. Idempotent: a second run finds nothing.
pub static REAP_CHANNEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local s = ARGV[1]
local before = tonumber(redis.call('GET', KEYS[2]) or '0')
local total = before
local mine = tonumber(redis.call('HGET', KEYS[1], s) or '0')
if mine ~= 0 then
  redis.call('HDEL', KEYS[1], s)
  total = redis.call('DECRBY', KEYS[2], mine)
  if total <= 0 then
    redis.call('DEL', KEYS[2])
    total = 0
  end
end
local out = {before, total}
for _, conn in ipairs(redis.call('SMEMBERS', KEYS[5])) do
  local user, session = string.match(conn, '^(.*)\n([^\n]*)\n[^\n]*$')
  if session == s then
    redis.call('SREM', KEYS[5], conn)
    if redis.call('HINCRBY', KEYS[6], user, -1) <= 0 then
      redis.call('HDEL', KEYS[6], user)
      redis.call('HDEL', KEYS[3], user)
      redis.call('ZREM', KEYS[4], user)
      local data = cjson.encode({user_id = user})
      local event = cjson.encode({event = 'pusher_internal:member_removed', channel = ARGV[2], data = data})
      redis.call(ARGV[3], KEYS[8], '\2' .. event)
      redis.call('HSET', KEYS[10], user, ARGV[4])
      redis.call('PEXPIRE', KEYS[10], 60000)
      out[#out + 1] = user
    end
  end
end
if redis.call('HLEN', KEYS[3]) == 0 then redis.call('DEL', KEYS[7]) end
if before > 0 and total == 0 then redis.call('SET', KEYS[9], ARGV[4], 'PX', 60000) end
return out
"#,
    )
});

/// KEYS: the user's set. ARGV: `session\n` of a dead session. Removes its connections;
/// returns 1 if the user has none left anywhere (and had some of that session's).
pub static REAP_USER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local n = 0
for _, e in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if string.sub(e, 1, #ARGV[1]) == ARGV[1] then
    redis.call('SREM', KEYS[1], e)
    n = n + 1
  end
end
if n > 0 and redis.call('SCARD', KEYS[1]) == 0 then return 1 end
return 0
"#,
    )
});

/// KEYS: vacated, or left. ARGV: token, user (for left). At the end of a held leave's
/// debounce: returns 1 (and forgets the decision) if it still stands, 0 if a return on
/// some node took it back (or a later leave replaced it), so the webhook is dropped.
pub static CONFIRM: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
if ARGV[2] == nil or ARGV[2] == '' then
  if redis.call('GET', KEYS[1]) == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if redis.call('HGET', KEYS[1], ARGV[2]) == ARGV[1] then
  redis.call('HDEL', KEYS[1], ARGV[2])
  return 1
end
return 0
"#,
    )
});
