"""An app backend built on the official Pusher Python server SDK (pusher-http-python), for
the integration tests: what a real app runs next to a Pusher-compatible server.

    python3 backend.py <app-id> <key> <secret>

It serves, on 127.0.0.1 (a free port, printed first as {"type": "listening", "port": N}):

  POST /pusher/auth       pusher-js channel authorization: the SDK's
                          authenticate(channel, socket_id, custom_data); the user comes from
                          the form fields user_id / user_name pusher-js is configured to send.
                          Channels named private-forged-* are signed with a wrong secret (a
                          misconfigured backend), so the server must refuse them. For
                          private-encrypted-* the answer carries the shared secret.
  POST /pusher/user-auth  pusher-js user authentication: the SDK's
                          authenticate_user(socket_id, user_data).
  POST /webhook           webhook receiver: validates each request with the SDK's
                          validate_webhook(key, signature, body) and prints
                          {"type": "webhook", "events": [...]} when valid, or
                          {"type": "webhook_rejected", ...} when not.

And it reads commands from stdin, one JSON object a line, answering each with
{"type": "result", "id": …, "ok": true, "result": …} or {"ok": false, "error": …}:

  {"id": 1, "op": "target", "host": h, "port": p}   point the SDK at the server under test
  {"id": 2, "op": "call", "method": "trigger", "args": [...], "kwargs": {...}}
                                                    call any pusher.Pusher method
  {"id": 3, "op": "request", "method": "POST", "path": "/apps/…", "params": {...}}
                                                    a request the SDK has no method for, signed
                                                    and sent by the SDK's own Request machinery

It exits when stdin closes.
"""

import base64
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pusher
from pusher.http import Request

app_id, key, secret = sys.argv[1:4]
# For private-encrypted-* channels: the SDK encrypts what it triggers and hands each
# authorized client the channel's shared secret.
MASTER_KEY = base64.b64encode(b"ringcast-e2e-test-master-key-32b").decode()
lock = threading.Lock()
state = {"client": None}


def emit(obj):
    with lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def sdk(host="127.0.0.1", port=80, wrong_secret=False):
    return pusher.Pusher(
        app_id=app_id,
        key=key,
        secret="not-the-secret" if wrong_secret else secret,
        host=host,
        port=int(port),
        ssl=False,
        encryption_master_key_base64=MASTER_KEY,
    )


# Auth and webhook validation need no server address.
signer = sdk()
forger = sdk(wrong_secret=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        # authenticate() returns an encrypted channel's shared_secret as bytes.
        data = json.dumps(body, default=lambda b: b.decode()).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            if self.path == "/webhook":
                return self.webhook(raw)
            form = {k: v[0] for k, v in urllib.parse.parse_qs(raw.decode()).items()}
            user = {"id": form.get("user_id", ""), "user_info": {"name": form.get("user_name", "")}}
            if self.path == "/pusher/auth":
                channel = form["channel_name"]
                auth = forger if channel.startswith("private-forged-") else signer
                custom = None
                if channel.startswith("presence-"):
                    custom = {"user_id": user["id"], "user_info": user["user_info"]}
                return self.reply(200, auth.authenticate(channel, form["socket_id"], custom))
            if self.path == "/pusher/user-auth":
                return self.reply(200, signer.authenticate_user(form["socket_id"], user))
            return self.reply(404, {"error": "no such endpoint"})
        except Exception as e:  # an auth request the SDK refused: tell the client
            emit({"type": "backend_error", "path": self.path, "error": repr(e)})
            return self.reply(403, {"error": repr(e)})

    def webhook(self, raw):
        body = raw.decode()
        sig = self.headers.get("X-Pusher-Signature") or ""
        got_key = self.headers.get("X-Pusher-Key") or ""
        valid = signer.validate_webhook(got_key, sig, body)
        if valid is None:
            emit({"type": "webhook_rejected", "key": got_key, "signature": sig, "body": body})
            return self.reply(401, {"error": "invalid webhook"})
        emit({"type": "webhook", "time_ms": valid["time_ms"], "events": valid["events"]})
        return self.reply(200, {})


def run(cmd):
    op = cmd["op"]
    if op == "target":
        state["client"] = sdk(cmd["host"], cmd["port"])
        return None
    client = state["client"]
    if op == "call":
        return getattr(client, cmd["method"])(*cmd.get("args", []), **cmd.get("kwargs", {}))
    if op == "request":
        inner = client._pusher_client
        return inner.http.send_request(Request(inner, cmd["method"], cmd["path"], cmd.get("params", {})))
    raise ValueError("unknown op %r" % op)


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
threading.Thread(target=server.serve_forever, daemon=True).start()
emit({"type": "listening", "port": server.server_address[1]})

for line in sys.stdin:
    if not line.strip():
        continue
    cmd = json.loads(line)
    try:
        emit({"type": "result", "id": cmd["id"], "ok": True, "result": run(cmd)})
    except Exception as e:
        emit({"type": "result", "id": cmd["id"], "ok": False, "error": type(e).__name__, "message": str(e)})
server.shutdown()
