// A pusher-js client (Node build) the integration tests steer over stdin, for private and
// presence channels, client events and user sign-in. Authorization and user
// authentication go through pusher-js's own 'ajax' transport (the Node build's bundled
// XMLHttpRequest) to the endpoints of tests/clients/backend.py — no custom handler.
//   node client.cjs <host> <port> <app-key> <auth-base-url> <user-id> <user-name>
//
// Prints one JSON line per thing it sees: {"type": "connected" | "state" | "error" |
// "subscribed" | "subscription_error" | "member_added" | "member_removed" | "event" |
// "user_event" | "signin_success" | "user_channel_subscribed" | "members" | "triggered"}.
// Commands on stdin, one JSON object a line:
//   {"op": "subscribe", "channel": c, "bind": ["client-x", ...]}
//       events named in `bind` are printed from channel.bind(name, (data, metadata)), so
//       with metadata.user_id; every other event from channel.bind_global
//   {"op": "unsubscribe", "channel": c}
//   {"op": "trigger", "channel": c, "event": e, "data": d}   a client event
//   {"op": "members", "channel": c}                          the presence members pusher-js holds
//   {"op": "signin"}
//   {"op": "disconnect"}
// It disconnects and exits when stdin closes.
const Pusher = require('pusher-js');

const [host, port, key, authBase, userId, userName] = process.argv.slice(2);
const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');
const params = { user_id: userId, user_name: userName };

const pusher = new Pusher(key, {
  wsHost: host,
  wsPort: Number(port),
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  cluster: 'local',
  channelAuthorization: { endpoint: `${authBase}/pusher/auth`, transport: 'ajax', params },
  userAuthentication: { endpoint: `${authBase}/pusher/user-auth`, transport: 'ajax', params },
});

const membersOf = (members) => {
  const list = [];
  members.each((m) => list.push({ id: m.id, info: m.info }));
  list.sort((a, b) => (a.id < b.id ? -1 : 1));
  return { count: members.count, me: members.me, list };
};

pusher.connection.bind('connected', () => print({ type: 'connected', socket_id: pusher.connection.socket_id }));
pusher.connection.bind('state_change', (s) => print({ type: 'state', previous: s.previous, current: s.current }));
pusher.connection.bind('error', (err) => print({ type: 'error', error: err }));
pusher.connection.bind('message', (m) => {
  if (m.event === 'pusher:signin_success') print({ type: 'signin_success', user_data: JSON.parse(m.data.user_data) });
  if (m.event === 'pusher_internal:subscription_succeeded' && m.channel && m.channel.startsWith('#server-to-user-')) {
    print({ type: 'user_channel_subscribed', channel: m.channel });
  }
});
pusher.user.bind('pusher:signin_error', (e) => print({ type: 'signin_error', error: e }));
pusher.user.bind_global((event, data) => {
  if (!event.startsWith('pusher')) print({ type: 'user_event', event, data });
});

function subscribe(name, bind) {
  const channel = pusher.subscribe(name);
  channel.bind('pusher:subscription_succeeded', (members) => {
    const out = { type: 'subscribed', channel: name };
    if (name.startsWith('presence-')) out.members = membersOf(channel.members);
    print(out);
  });
  channel.bind('pusher:subscription_error', (e) => print({ type: 'subscription_error', channel: name, error: e }));
  channel.bind('pusher:member_added', (m) =>
    print({ type: 'member_added', channel: name, member: { id: m.id, info: m.info }, count: channel.members.count }));
  channel.bind('pusher:member_removed', (m) =>
    print({ type: 'member_removed', channel: name, member: { id: m.id, info: m.info }, count: channel.members.count }));
  for (const event of bind) {
    channel.bind(event, (data, metadata) =>
      print({ type: 'event', channel: name, event, data, user_id: (metadata && metadata.user_id) || null }));
  }
  channel.bind_global((event, data) => {
    if (event.startsWith('pusher:') || bind.includes(event)) return;
    print({ type: 'event', channel: name, event, data, user_id: null });
  });
}

function run(cmd) {
  switch (cmd.op) {
    case 'subscribe':
      return subscribe(cmd.channel, cmd.bind || []);
    case 'unsubscribe':
      return pusher.unsubscribe(cmd.channel);
    case 'trigger': {
      const ok = pusher.channel(cmd.channel).trigger(cmd.event, cmd.data);
      return print({ type: 'triggered', channel: cmd.channel, event: cmd.event, ok });
    }
    case 'members':
      return print({ type: 'members', channel: cmd.channel, members: membersOf(pusher.channel(cmd.channel).members) });
    case 'signin':
      return pusher.signin();
    case 'disconnect':
      return pusher.disconnect();
    default:
      throw new Error(`unknown op ${cmd.op}`);
  }
}

let buffered = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  buffered += chunk;
  let nl;
  while ((nl = buffered.indexOf('\n')) >= 0) {
    const line = buffered.slice(0, nl).trim();
    buffered = buffered.slice(nl + 1);
    if (line) run(JSON.parse(line));
  }
});
process.stdin.on('end', () => {
  pusher.disconnect();
  setTimeout(() => process.exit(0), 50);
});

setTimeout(() => {
  print({ type: 'timeout' });
  process.exit(1);
}, 60000);
