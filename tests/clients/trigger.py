"""The official Pusher Python server SDK (pusher-http-python) publishing to ringcast.

    python3 trigger.py <host> <port> <app-id> <key> <secret> <exclude-socket-id>

Prints one JSON object with what the SDK's queries returned."""

import json
import sys

import pusher

host, port, app_id, key, secret, exclude = sys.argv[1:7]
client = pusher.Pusher(app_id=app_id, key=key, secret=secret, host=host, port=int(port), ssl=False)

client.trigger("sdk-a", "single", {"message": "hello from python"})
client.trigger(["sdk-a", "sdk-b"], "multi", {"n": 2})
client.trigger_batch([
    {"channel": "sdk-b", "name": "batched", "data": {"i": 0}},
    {"channel": "sdk-b", "name": "batched", "data": {"i": 1}},
])
# Excluding the listener's own socket: it must not receive this one.
client.trigger("sdk-a", "excluded", {"x": 1}, socket_id=exclude)
client.trigger("sdk-a", "last", "plain string")

out = {
    "channels": client.channels_info(prefix_filter="sdk-", attributes=["subscription_count"]),
    "channel": client.channel_info("sdk-a", ["subscription_count"]),
}
try:
    pusher.Pusher(app_id=app_id, key=key, secret="wrong-secret", host=host, port=int(port), ssl=False).trigger("sdk-a", "x", {})
    out["wrong_secret"] = "accepted"
except pusher.errors.PusherBadAuth:
    out["wrong_secret"] = "refused"
print(json.dumps(out))
