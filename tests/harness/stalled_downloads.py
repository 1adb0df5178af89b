#!/usr/bin/env python3
"""A hostile downloader for tests/it/serve_hostile.rs: C HTTP/2 connections (Python's ssl and
the `h2` library) each opening S streams that GET one record's archive, advertising a
1-byte flow-control window and never opening it, and sending a PING every second (so the
connection never looks idle). Prints one JSON object when every connection was closed or
the deadline passed.

  stalled_downloads.py HOST PORT CA CERT KEY PATH C S DEADLINE_S [SOURCE_ADDRESS]

Output: {"statuses": {"200": n, "429": m, ...}, "bytes": data bytes received,
         "closed": [seconds until each connection was closed], "open_at_deadline": k}
"""
import json, socket, ssl, sys, time
import h2.config, h2.connection, h2.events, h2.settings

host, port, ca, cert, key, path, c, s, deadline = sys.argv[1:10]
port, c, s, deadline = int(port), int(c), int(s), float(deadline)
source = (sys.argv[10], 0) if len(sys.argv) > 10 else None

ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
ctx.load_cert_chain(cert, key)
ctx.set_alpn_protocols(["h2"])

start = time.monotonic()
statuses, received, closed = {}, 0, {}
conns = []
for _ in range(c):
    raw = socket.create_connection((host, port), timeout=10, source_address=source)
    tls = ctx.wrap_socket(raw, server_hostname="localhost")
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1,
        h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 1000,
    })
    conn.initiate_connection()
    tls.sendall(conn.data_to_send())
    for i in range(s):
        sid = conn.get_next_available_stream_id()
        try:
            conn.send_headers(sid, [(":method", "GET"), (":scheme", "https"),
                                    (":authority", "localhost"), (":path", path)],
                              end_stream=True)
        except Exception:
            break  # the server's stream limit: h2 refuses to open more
    tls.sendall(conn.data_to_send())
    tls.setblocking(False)
    conns.append((tls, conn))

last_ping = 0.0
import select
while len(closed) < len(conns) and time.monotonic() - start < deadline:
    now = time.monotonic()
    live = [(t, k) for (t, k) in conns if id(t) not in closed]
    if now - last_ping >= 1.0:
        last_ping = now
        for t, k in live:
            try:
                k.ping(b"stallstl")
                t.sendall(k.data_to_send())
            except (ssl.SSLWantWriteError, BlockingIOError):
                pass
            except OSError:
                closed[id(t)] = now - start
    readable, _, _ = select.select([t for t, _ in live], [], [], 0.2)
    for t in readable:
        k = next(k for (tt, k) in conns if tt is t)
        try:
            data = t.recv(65536)
            # Records already decrypted wait inside the SSL object, where select() does
            # not see them: take them all now.
            while data and t.pending():
                data += t.recv(65536)
        except (ssl.SSLWantReadError, BlockingIOError):
            continue
        except OSError:
            data = b""
        if not data:
            closed[id(t)] = time.monotonic() - start
            continue
        try:
            events = k.receive_data(data)
        except Exception:
            closed[id(t)] = time.monotonic() - start
            continue
        for ev in events:
            if isinstance(ev, h2.events.ResponseReceived):
                st = dict((bytes(a) if isinstance(a, (bytes, bytearray)) else a.encode(),
                           bytes(b) if isinstance(b, (bytes, bytearray)) else b.encode())
                          for a, b in ev.headers)[b":status"].decode()
                statuses[st] = statuses.get(st, 0) + 1
            elif isinstance(ev, h2.events.DataReceived):
                received += len(ev.data)  # never acknowledged: the window stays shut
            elif isinstance(ev, h2.events.ConnectionTerminated):
                closed[id(t)] = time.monotonic() - start
        try:
            t.sendall(k.data_to_send())
        except (ssl.SSLWantWriteError, BlockingIOError, OSError):
            pass

print(json.dumps({
    "statuses": statuses,
    "bytes": received,
    "closed": sorted(closed.values()),
    "open_at_deadline": len(conns) - len(closed),
}))
