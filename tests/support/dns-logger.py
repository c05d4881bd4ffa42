#!/usr/bin/env python3
"""A DNS stub for tests that records every name asked and resolves none.

Listens on 127.0.0.1:53 (UDP and TCP), appends `NAME TYPE` per question to
the file given as its one argument, and answers NXDOMAIN. Run inside a
network namespace whose /etc/resolv.conf points at 127.0.0.1 (see
agent-cli-check): a program's attempts to reach hosts by name are then
listed without any packet leaving the machine.
"""

import socket
import struct
import sys
import threading

TYPES = {1: "A", 28: "AAAA", 5: "CNAME", 65: "HTTPS", 33: "SRV", 16: "TXT"}


def answer(data, log, lock):
    i, labels = 12, []
    while i < len(data) and data[i]:
        n = data[i]
        labels.append(data[i + 1:i + 1 + n].decode("ascii", "replace"))
        i += 1 + n
    qtype = struct.unpack(">H", data[i + 1:i + 3])[0]
    end = i + 5
    with lock:
        log.write(f"{'.'.join(labels)} {TYPES.get(qtype, qtype)}\n")
    # A response with the question, no answers, NXDOMAIN (RD and RA set).
    return data[:2] + struct.pack(">HHHHH", 0x8183, 1, 0, 0, 0) + data[12:end]


def main():
    log = open(sys.argv[1], "a", buffering=1, encoding="utf-8")
    lock = threading.Lock()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 53))
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    tcp.bind(("127.0.0.1", 53))
    tcp.listen(16)

    def serve_tcp():
        while True:
            conn, _ = tcp.accept()
            try:
                conn.settimeout(5)
                n = struct.unpack(">H", conn.recv(2))[0]
                reply = answer(conn.recv(n), log, lock)
                conn.sendall(struct.pack(">H", len(reply)) + reply)
            except (OSError, struct.error, IndexError):
                pass
            finally:
                conn.close()

    threading.Thread(target=serve_tcp, daemon=True).start()
    while True:
        data, addr = udp.recvfrom(4096)
        try:
            udp.sendto(answer(data, log, lock), addr)
        except (OSError, struct.error, IndexError):
            pass


if __name__ == "__main__":
    sys.exit(main())
