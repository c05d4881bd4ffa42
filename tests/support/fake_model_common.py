"""Plumbing shared by the scripted fake model servers (Python 3 stdlib only).

`fake-anthropic.py`, `fake-openai-responses.py` and `fake-openai-chat.py`
each speak just enough of one model API for one agent CLI to run a scripted
turn: the model asks the CLI to write a file and commit it, then says it is
done. This module holds what they share:

- the command line (`--port-file`, `--log`, `--cert`/`--key`, the script),
- an HTTP/1.1 server on 127.0.0.1 (TLS per connection, in the handler's
  thread, so a client that never finishes its handshake blocks nobody),
- request parsing (Content-Length or chunked, gzip/deflate bodies, an
  absolute-form target as a proxy would forward it),
- the record: one JSON line per request in `--log` with the method, path,
  every header (values included: the tests assert which API key arrived; the
  keys they use are throw-away), the body's size and an API-specific summary,
  and with `--bodies DIR` each body as `DIR/<n>.json`,
- replies: JSON, and Server-Sent Events with chunked transfer encoding.

Nothing here ever connects anywhere: the servers only answer.
"""

import argparse
import gzip
import http.server
import json
import os
import ssl
import threading
import time
import zlib

# The default script: what the fake model makes the agent do.
DEFAULT_FILE = "AGENT_NOTE.md"
DEFAULT_TEXT = "Written by the agent under agentd.\n"
DEFAULT_MESSAGE = "Add the agent's note"


def arg_parser(description):
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--port-file", required=True, help="written once listening")
    ap.add_argument("--port", type=int, default=0, help="default: a free port")
    ap.add_argument("--log", required=True, help="JSON lines, one per request")
    ap.add_argument("--bodies", help="folder: each request body as <n>.json")
    ap.add_argument("--cert", help="PEM certificate: serve HTTPS")
    ap.add_argument("--key", help="PEM key of --cert")
    ap.add_argument("--file", default=DEFAULT_FILE, help="the file the agent writes")
    ap.add_argument("--text", default=DEFAULT_TEXT, help="what it writes there")
    ap.add_argument("--commit-message", default=DEFAULT_MESSAGE)
    ap.add_argument("--model", default="fake-model", help="the model id served")
    return ap


class Recorder:
    """Appends one JSON line per request; numbers requests from 1."""

    def __init__(self, log_path, bodies_dir):
        self.lock = threading.Lock()
        self.n = 0
        self.log = open(log_path, "a", buffering=1, encoding="utf-8")
        self.bodies = bodies_dir
        if bodies_dir:
            os.makedirs(bodies_dir, exist_ok=True)

    def record(self, entry, body):
        with self.lock:
            self.n += 1
            entry = {"n": self.n, **entry}
            if self.bodies and body:
                with open(os.path.join(self.bodies, f"{self.n}.json"), "wb") as f:
                    f.write(body)
            self.log.write(json.dumps(entry, sort_keys=True) + "\n")
            return self.n


def sse_event(name, data):
    """One Server-Sent Event; `name` None for a data-only event."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {name}\n" if name else ""
    return (head + f"data: {text}\n\n").encode("utf-8")


class Reply:
    """What a route answers: a status, headers and a body or event stream."""

    def __init__(self, status=200, json_body=None, events=None, headers=None):
        self.status = status
        self.json_body = json_body
        self.events = events  # list of bytes chunks (sse_event), or None
        self.headers = headers or []


def make_handler(app, recorder):
    """A request handler class that asks `app.route(req)` for each Reply.

    `req` is a dict: method, path (origin-form, no query), query, headers
    (lower-case names), body (bytes), json (parsed body or None)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "fake-model/1"

        def log_message(self, fmt, *a):
            pass

        def read_body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    line = self.rfile.readline(1024)
                    size = int(line.strip().split(b";")[0] or b"0", 16)
                    if size == 0:
                        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                            pass
                        break
                    out += self.rfile.read(size)
                    self.rfile.readline(1024)
            else:
                n = int(self.headers.get("Content-Length") or 0)
                out = self.rfile.read(n) if n else b""
            enc = self.headers.get("Content-Encoding", "").lower()
            if enc == "gzip":
                out = gzip.decompress(out)
            elif enc == "deflate":
                out = zlib.decompress(out)
            return out

        def handle_any(self):
            started = time.time()
            target = self.path
            # Absolute form (what a client sends to an HTTP proxy, and what a
            # proxy may pass on): keep only the path.
            if target.startswith(("http://", "https://")):
                rest = target.split("://", 1)[1]
                target = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
            path, _, query = target.partition("?")
            try:
                body = self.read_body()
            except Exception as e:  # noqa: BLE001 - a test server reports, never dies
                body = b""
                self.close_connection = True
                decode_error = repr(e)
            else:
                decode_error = None
            try:
                parsed = json.loads(body) if body else None
            except ValueError:
                parsed = None
            req = {
                "method": self.command,
                "path": path,
                "query": query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "body": body,
                "json": parsed,
            }
            try:
                reply, summary = app.route(req)
            except Exception as e:  # noqa: BLE001
                reply = Reply(500, {"error": {"type": "fake_server_error", "message": repr(e)}})
                summary = {"error": repr(e)}
            entry = {
                "time": round(started, 3),
                "method": self.command,
                "path": path,
                "query": query,
                "target": self.path,
                "tls": isinstance(self.connection, ssl.SSLSocket),
                "sni": getattr(self.connection, "fake_sni", None),
                "headers": req["headers"],
                "body_bytes": len(body),
                "status": reply.status,
                "summary": summary,
            }
            if decode_error:
                entry["body_error"] = decode_error
            recorder.record(entry, body)
            self.send(reply)

        def send(self, reply):
            if self.headers.get("Connection", "").lower() == "close":
                self.close_connection = True
            self.send_response(reply.status)
            for name, value in reply.headers:
                self.send_header(name, value)
            if self.close_connection:
                self.send_header("Connection", "close")
            if reply.events is not None:
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for chunk in reply.events:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            else:
                data = b""
                if reply.json_body is not None:
                    data = json.dumps(reply.json_body).encode("utf-8")
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            self.wfile.flush()

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = handle_any

    return Handler


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    ssl_context = None
    recorder = None

    def finish_request(self, request, client_address):
        # TLS per connection in the handler's thread (never in accept()).
        if self.ssl_context is not None:
            request.settimeout(30)
            request = self.ssl_context.wrap_socket(
                request, server_side=True, do_handshake_on_connect=False)
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as e:
                # Recorded: a client that rejects the certificate shows here.
                self.recorder.record({"time": round(time.time(), 3),
                                      "sni": getattr(request, "fake_sni", None),
                                      "tls_error": repr(e)}, b"")
                return
            request.settimeout(None)
        super().finish_request(request, client_address)


def serve(app, args):
    """Listen on 127.0.0.1, announce the port, serve until killed."""
    recorder = Recorder(args.log, args.bodies)
    server = Server(("127.0.0.1", args.port), make_handler(app, recorder))
    server.recorder = recorder
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.set_alpn_protocols(["http/1.1"])

        def note_sni(sock, name, _ctx):
            sock.fake_sni = name

        ctx.sni_callback = note_sni
        server.ssl_context = ctx
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


def tool_names(tools):
    """The names of a request's tools (Anthropic, Responses or Chat forms)."""
    out = []
    for t in tools or []:
        if not isinstance(t, dict):
            continue
        name = t.get("name") or (t.get("function") or {}).get("name") or t.get("type")
        if name:
            out.append(name)
    return out


def shell_quote(s):
    return "'" + s.replace("'", "'\"'\"'") + "'"


def commit_command(args):
    """The shell command the model asks for once the file is written."""
    return (
        f"git add -- {shell_quote(args.file)} && "
        f"git commit -q -m {shell_quote(args.commit_message)} && "
        "git log --oneline -1"
    )


def write_command(args):
    """The shell command that writes the file (when no write tool exists)."""
    return f"printf '%s' {shell_quote(args.text)} > {shell_quote(args.file)}"


_ids = iter(range(1, 1 << 62))
_ids_lock = threading.Lock()


def next_id(prefix):
    with _ids_lock:
        return f"{prefix}{next(_ids):06d}"


__all__ = [
    "arg_parser",
    "serve",
    "Reply",
    "sse_event",
    "tool_names",
    "commit_command",
    "write_command",
    "next_id",
    "shell_quote",
]
