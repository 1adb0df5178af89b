#!/usr/bin/env python3
"""Hostile idle clients for tests/it/serve_hostile.rs (Python's own ssl module, not ckvault's
TLS stack): opens N connections of one kind to a ckvault server, holds them without
sending a request, and prints one JSON object when every connection was closed by the
server or the deadline passed.

  idle_clients.py HOST PORT CA N KIND DEADLINE_S [SOURCE_ADDRESS]

KIND:
  tcp        connect and send nothing (no TLS handshake)
  tls        finish the TLS handshake (HTTP/1.1 by ALPN), then send nothing
  h2         finish the handshake offering only h2, then send nothing (no preface)
  slowloris  TLS, then a request head one byte every 0.5 s, never finished

Output: {"opened": n, "closed": [seconds until closed, ...], "open_at_deadline": k,
         "refused": connections closed by the server during the handshake,
         "lifetimes": [seconds from each connection's handshake to its close, ...]}
"""
import json
import select
import socket
import ssl
import sys
import time

host, port, ca, n, kind, deadline = sys.argv[1:7]
source = (sys.argv[7], 0) if len(sys.argv) > 7 else None
port, n, deadline = int(port), int(n), float(deadline)

ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
if kind == "h2":
    ctx.set_alpn_protocols(["h2"])
else:
    ctx.set_alpn_protocols(["http/1.1"])

start = time.monotonic()
conns = []
refused = 0
opened_at = {}
closed = {}


def check(timeout):
    """Notes the connections the server closed (waiting at most `timeout` seconds)."""
    live = [c for c in conns if id(c) not in closed]
    if not live:
        return
    readable, _, _ = select.select(live, [], [], timeout)
    for c in readable:
        try:
            data = c.recv(65536)
            while data and hasattr(c, "pending") and c.pending():
                data = c.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            continue
        except OSError:
            data = b""
        if not data:
            closed[id(c)] = time.monotonic() - start
        # h2: the server's SETTINGS frame may arrive; anything else is ignored


def opened(c):
    c.setblocking(False)
    conns.append(c)
    opened_at[id(c)] = time.monotonic() - start
    # Closes of the connections already open are seen while more are opened.
    check(0)


for _ in range(n):
    try:
        raw = socket.create_connection((host, port), timeout=10, source_address=source)
    except OSError:
        continue
    if kind == "tcp":
        opened(raw)
        continue
    try:
        s = ctx.wrap_socket(raw, server_hostname="localhost")
    except (ssl.SSLError, OSError):
        refused += 1
        continue  # refused at the handshake: the server closed it
    opened(s)

head = b"GET /v1/checkpoints HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 4096
sent = {id(c): 0 for c in conns}
last_trickle = 0.0
while len(closed) < len(conns) and time.monotonic() - start < deadline:
    now = time.monotonic()
    if kind == "slowloris" and now - last_trickle >= 0.5:
        last_trickle = now
        for c in conns:
            if id(c) in closed:
                continue
            i = sent[id(c)]
            try:
                c.send(head[i:i + 1])
                sent[id(c)] = i + 1
            except (ssl.SSLWantWriteError, BlockingIOError):
                pass
            except OSError:
                closed[id(c)] = now - start
    check(0.1)
print(json.dumps({
    "opened": len(conns),
    "closed": sorted(closed.values()),
    "open_at_deadline": len(conns) - len(closed),
    "refused": refused,
    "lifetimes": sorted(closed[k] - opened_at[k] for k in closed),
}))
