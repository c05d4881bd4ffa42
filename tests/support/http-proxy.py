#!/usr/bin/env python3
"""A tiny HTTP proxy for tests: CONNECT and absolute-form HTTP, loopback only.

Stands in for agentd's egress proxy when a test checks that an agent CLI
honours HTTPS_PROXY / HTTP_PROXY: it listens on 127.0.0.1 (a free port,
written to --port-file), serves `CONNECT host:port` (a byte tunnel) and
absolute-form requests (`GET http://host:port/path HTTP/1.1`, passed on in
origin form with `Connection: close`), and allows a destination only when
its exact `host:port` is one of --allow AND it resolves to a loopback
address: this proxy never connects anywhere but 127.0.0.0/8 or ::1. Anything
else is answered `403` with a one-line reason, so a CLI's attempts to reach
other hosts show up in the log without any traffic leaving the machine.

--log gets one JSON line per tunnel or request: time, kind (connect |
absolute), host, port, addr, decision (allowed | denied), reason,
bytes_out (client to server), bytes_in, ms.
"""

import argparse
import ipaddress
import json
import os
import socket
import sys
import threading
import time

HEAD_LIMIT = 64 * 1024
HEAD_TIMEOUT = 10


class Log:
    def __init__(self, path):
        self.lock = threading.Lock()
        self.f = open(path, "a", buffering=1, encoding="utf-8")

    def write(self, entry):
        with self.lock:
            self.f.write(json.dumps(entry, sort_keys=True) + "\n")


def read_head(sock):
    """Bytes up to and including the blank line, and what followed it."""
    buf = b""
    sock.settimeout(HEAD_TIMEOUT)
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("client closed before a full request head")
        buf += chunk
        if len(buf) > HEAD_LIMIT:
            raise ValueError("request head too large")
    sock.settimeout(None)
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head.decode("latin-1"), rest


def split_host_port(text, default_port):
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    return host, int(port) if port else default_port


def loopback_addr(host, port):
    """A loopback (addr, port) for host, or None: this proxy goes nowhere else."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None
    for family, _, _, _, sa in infos:
        if ipaddress.ip_address(sa[0]).is_loopback:
            return family, sa
    return None


def relay(a, b, counts, index):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            b.sendall(data)
            counts[index] += len(data)
    except OSError:
        pass
    finally:
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def handle(client, allow, log):
    started = time.time()
    entry = {"time": round(started, 3)}
    counts = [0, 0]
    upstream = None
    try:
        head, rest = read_head(client)
        line, _, header_text = head.partition("\r\n")
        method, target, version = (line.split(" ") + ["", "", ""])[:3]
        if method == "CONNECT":
            entry["kind"] = "connect"
            host, port = split_host_port(target, 443)
        elif target.startswith("http://"):
            entry["kind"] = "absolute"
            authority, slash, path = target[len("http://"):].partition("/")
            host, port = split_host_port(authority, 80)
            path = slash + path if slash else "/"
        else:
            entry.update(kind="other", host=None, port=None, decision="denied",
                         reason=f"not a proxy request: {line[:80]!r}")
            client.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                           b"Connection: close\r\n\r\n")
            return
        entry.update(host=host, port=port)
        if f"{host}:{port}" not in allow:
            entry.update(decision="denied", reason="not in --allow")
        else:
            found = loopback_addr(host, port)
            if found is None:
                entry.update(decision="denied", reason="does not resolve to loopback")
            else:
                family, sa = found
                entry["addr"] = f"{sa[0]}:{sa[1]}"
                upstream = socket.socket(family, socket.SOCK_STREAM)
                upstream.settimeout(10)
                upstream.connect(sa)
                upstream.settimeout(None)
                entry["decision"] = "allowed"
        if entry["decision"] == "denied":
            msg = f"proxy refused {host}:{port}: {entry['reason']}\n".encode()
            client.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
                           b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(msg), msg))
            return
        if entry["kind"] == "connect":
            client.sendall(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            first = rest
        else:
            kept = [h for h in header_text.split("\r\n") if h and h.split(":", 1)[0].strip().lower()
                    not in ("proxy-connection", "proxy-authorization", "connection", "keep-alive")]
            first = ("\r\n".join([f"{method} {path} {version}"] + kept + ["Connection: close"])
                     + "\r\n\r\n").encode("latin-1") + rest
        if first:
            upstream.sendall(first)
            counts[0] += len(first)
        t = threading.Thread(target=relay, args=(client, upstream, counts, 0), daemon=True)
        t.start()
        relay(upstream, client, counts, 1)
        t.join(timeout=600)
    except Exception as e:  # noqa: BLE001 - one connection's failure is logged, not fatal
        entry.setdefault("decision", "error")
        entry["reason"] = repr(e)
    finally:
        entry.update(bytes_out=counts[0], bytes_in=counts[1],
                     ms=int((time.time() - started) * 1000))
        log.write(entry)
        for s in (client, upstream):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--log", required=True)
    ap.add_argument("--allow", action="append", default=[], help="host:port, repeatable")
    args = ap.parse_args()
    log = Log(args.log)
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", args.port))
    server.listen(64)
    tmp = args.port_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(str(server.getsockname()[1]))
    os.rename(tmp, args.port_file)
    allow = set(args.allow)
    try:
        while True:
            client, _ = server.accept()
            threading.Thread(target=handle, args=(client, allow, log), daemon=True).start()
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
