// A pusher-js client (Node build) for the integration tests: subscribes to the channels
// named on the command line and prints one JSON line per thing it sees. It disconnects and
// exits when its stdin closes (so the test decides when the channels are vacated).
//   node listen.cjs <host> <port> <app-key> <events-to-wait-for> <channel>...
const Pusher = require('pusher-js');

const [host, port, key, expected, ...channels] = process.argv.slice(2);
const print = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

const pusher = new Pusher(key, {
  wsHost: host,
  wsPort: Number(port),
  forceTLS: false,
  enabledTransports: ['ws'],
  disableStats: true,
  cluster: 'local',
});

let received = 0;
pusher.connection.bind('connected', () => print({ type: 'connected', socket_id: pusher.connection.socket_id }));
pusher.connection.bind('error', (err) => print({ type: 'error', error: JSON.stringify(err) }));
for (const name of channels) {
  const channel = pusher.subscribe(name);
  channel.bind('pusher:subscription_succeeded', () => print({ type: 'subscribed', channel: name }));
  channel.bind('pusher:subscription_error', (e) => print({ type: 'subscription_error', channel: name, error: e }));
  channel.bind_global((event, data) => {
    if (event.startsWith('pusher:')) return;
    print({ type: 'event', channel: name, event, data });
    received += 1;
    if (received === Number(expected)) print({ type: 'done', received });
  });
}

process.stdin.on('end', () => {
  pusher.disconnect();
  setTimeout(() => process.exit(received >= Number(expected) ? 0 : 1), 50);
});
process.stdin.resume();

setTimeout(() => {
  print({ type: 'timeout', received });
  process.exit(1);
}, 60000);
