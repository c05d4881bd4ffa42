#!/usr/bin/env python3
"""A server that answers every request with a redirect, for agentd's tests.

Listens on 127.0.0.1 and a free port (written to --port-file once
listening), HTTPS with --cert/--key. Every GET and POST is answered
`--status` (default 301) with `Location: <--to><path>`, so a git client is
sent to another server (the test git server on another port). Every request
is logged to --log as `METHOD PATH auth=present|missing` (never the header's
value), so a test can tell whether the client sent credentials here.
"""

import argparse
import http.server
import os
import ssl
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--to", required=True, help="base URL the redirect points to")
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--status", type=int, default=301)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    log = open(args.log, "a", buffering=1, encoding="utf-8")
    base = args.to.rstrip("/")

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            pass

        def handle_any(self, method):
            auth = "present" if self.headers.get("Authorization") else "missing"
            log.write(f"{method} {self.path} auth={auth}\n")
            n = int(self.headers.get("Content-Length") or 0)
            if n:
                self.rfile.read(n)
            msg = b"moved\n"
            self.send_response(args.status)
            self.send_header("Location", base + self.path)
            self.send_header("Content-Length", str(len(msg)))
            self.end_headers()
            self.wfile.write(msg)

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
