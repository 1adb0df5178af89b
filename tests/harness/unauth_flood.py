#!/usr/bin/env python3
"""An unauthenticated flood for tests/it/serve_hostile.rs: one thread per source address,
each sending requests without credentials and with an 8 KB path over keep-alive HTTPS
connections (Python's ssl and http.client) for SECONDS. Prints one JSON object.

  unauth_flood.py HOST PORT CA SECONDS SOURCE...

Output: {"sent": requests answered, "statuses": {"401": n, "429": m, ...}}
"""
import http.client, json, ssl, sys, threading, time

host, port, ca, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
sources = sys.argv[5:]
ctx = ssl.create_default_context(cafile=ca)
ctx.check_hostname = False
lock = threading.Lock()
statuses = {}
sent = 0
path = "/v1/checkpoints/" + "A" * 8192
deadline = time.monotonic() + seconds


def flood(source):
    global sent
    conn = None
    while time.monotonic() < deadline:
        try:
            if conn is None:
                conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10,
                                                   source_address=(source, 0))
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            with lock:
                sent += 1
                statuses[str(resp.status)] = statuses.get(str(resp.status), 0) + 1
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
            time.sleep(0.05)


threads = [threading.Thread(target=flood, args=(s,)) for s in sources]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps({"sent": sent, "statuses": statuses}))
