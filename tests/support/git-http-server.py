#!/usr/bin/env python3
"""A small git smart-HTTP(S) server for agentd's integration tests.

Serves the bare repositories under --root through `git http-backend` (CGI),
on 127.0.0.1 and a free port (written to --port-file once listening). With
--cert/--key it speaks HTTPS. With --token-file it demands HTTP basic auth
whose password is the file's content (any user name) and answers 401
otherwise. Every request is logged to --log as `METHOD PATH auth=ok|missing|bad`
(never the credentials themselves), so a test can tell whether the client
sent the token.

With --decode-paths it treats the request path as many real forges and the
proxies in front of them do: percent-decodes it, reads `\\` as `/`, and
resolves `.`, `..` and empty segments before it looks for the repository.
`/team/%2e%2e%2fother%2fsecret.git/info/refs` then serves
`other/secret.git`. The log line gains ` served=PATH`, the path as served.

With --push-token-file a second password is accepted, logged as
`auth=push` (a test can tell the push token from the clone token). With
--redirect-push-to URL every push request (`git-receive-pack`) is answered
`301` to URL + its path, and logged with ` redirected`; fetches are served.
"""

import argparse
import base64
import http.server
import os
import posixpath
import ssl
import subprocess
import sys
import urllib.parse


def normalise(raw):
    """The path a decoding server serves for the request path `raw`."""
    decoded = urllib.parse.unquote(raw).replace("\\", "/")
    return posixpath.normpath("/" + decoded.lstrip("/"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--token-file")
    ap.add_argument("--decode-paths", action="store_true")
    ap.add_argument("--push-token-file")
    ap.add_argument("--redirect-push-to")
    args = ap.parse_args()
    token = None
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            token = f.read().strip()
    push_token = None
    if args.push_token_file:
        with open(args.push_token_file, encoding="utf-8") as f:
            push_token = f.read().strip()
    log = open(args.log, "a", buffering=1, encoding="utf-8")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def auth_state(self):
            header = self.headers.get("Authorization")
            if header is None:
                return "missing"
            if token is None:
                return "ok"
            kind, _, value = header.partition(" ")
            if kind != "Basic":
                return "bad"
            try:
                _user, _, password = base64.b64decode(value).decode().partition(":")
            except Exception:
                return "bad"
            if push_token is not None and password == push_token:
                return "push"
            return "ok" if password == token else "bad"

        def body(self):
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def handle_any(self, method):
            state = self.auth_state()
            served = ""
            if args.decode_paths:
                served = f" served={normalise(self.path.partition('?')[0])}"
            data = self.body() if method == "POST" else b""
            if args.redirect_push_to and "git-receive-pack" in self.path:
                log.write(f"{method} {self.path} auth={state}{served} redirected\n")
                self.send_response(301)
                self.send_header("Location", args.redirect_push_to.rstrip("/") + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            log.write(f"{method} {self.path} auth={state}{served}\n")
            if token is not None and state not in ("ok", "push"):
                msg = b"authentication required\n"
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="agentd-test"')
                self.send_header("Content-Length", str(len(msg)))
                self.end_headers()
                self.wfile.write(msg)
                return
            path, _, query = self.path.partition("?")
            if args.decode_paths:
                path = normalise(path)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": args.root,
                "GIT_HTTP_EXPORT_ALL": "1",
                "REQUEST_METHOD": method,
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(data)),
                "REMOTE_ADDR": "127.0.0.1",
                "REMOTE_USER": "agentd-test",
                "GIT_CONFIG_NOSYSTEM": "1",
                "GIT_CONFIG_GLOBAL": "/dev/null",
                "HOME": args.root,
            }
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            out = subprocess.run(
                ["git", "http-backend"], input=data, env=env, capture_output=True
            ).stdout
            head, _, body = out.partition(b"\r\n\r\n")
            if not _:
                head, _, body = out.partition(b"\n\n")
            status = 200
            headers = []
            for line in head.decode("latin-1").splitlines():
                name, _, value = line.partition(":")
                if name.lower() == "status":
                    status = int(value.strip().split()[0])
                elif name:
                    headers.append((name, value.strip()))
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            self.handle_any("GET")

        def do_POST(self):
            self.handle_any("POST")

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
