#!/usr/bin/env python3
"""A hostile client of the CRI proxy socket (raw HTTP/2 with the `h2` library): opens N
CheckpointContainer streams on one connection, sends BODY bytes of request body on each and
never ends any of them; a stream the server answers is reset and the next one opened (the
runtime's SETTINGS_MAX_CONCURRENT_STREAMS is obeyed). Prints one JSON object.

  pending_checkpoints.py SOCKET N BODY_BYTES DEADLINE_S

Output: {"opened": n, "answered": {grpc-status: count}, "unanswered": k, "sent": body bytes}
"""
import json, select, socket, sys, time
import h2.config, h2.connection, h2.events, h2.exceptions

sock_path, n, body_len, deadline = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sock_path)
s.setblocking(False)
conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
conn.initiate_connection()
headers = [(b":method", b"POST"), (b":scheme", b"http"),
           (b":path", b"/runtime.v1.RuntimeService/CheckpointContainer"),
           (b":authority", b"localhost"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
opened, sent, answered = 0, 0, {}
left = {}      # stream -> body bytes still to send
status = {}    # stream -> grpc-status seen
start = time.monotonic()
body = b"\0" * body_len


outbuf = bytearray()


def pump():
    """Sends what flow control and the socket allow; reads and handles what arrived.
    Never blocks on a write while the peer writes to us (the proxy answers as we send)."""
    global sent, outbuf
    if len(outbuf) < (1 << 20):
        for sid in list(left):
            if left[sid] == 0:
                continue
            try:
                room = min(conn.local_flow_control_window(sid), left[sid], conn.max_outbound_frame_size)
            except (h2.exceptions.StreamClosedError, KeyError):
                left.pop(sid, None)
                continue
            if room > 0:
                conn.send_data(sid, body[:room])
                left[sid] -= room
                sent += room
    outbuf += conn.data_to_send()
    readable, writable, _ = select.select([s], [s] if outbuf else [], [], 0.2)
    if writable:
        try:
            k = s.send(outbuf)
            del outbuf[:k]
        except BlockingIOError:
            pass
    if not readable:
        return True
    try:
        data = s.recv(1 << 20)
    except BlockingIOError:
        return True
    if not data:
        return False
    for ev in conn.receive_data(data):
        if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            for k, v in ev.headers:
                if bytes(k) == b"grpc-status":
                    status[ev.stream_id] = bytes(v).decode()
        if isinstance(ev, h2.events.StreamEnded):
            st = status.get(ev.stream_id, "?")
            answered[st] = answered.get(st, 0) + 1
            left.pop(ev.stream_id, None)
            try:
                conn.reset_stream(ev.stream_id)
            except h2.exceptions.StreamClosedError:
                pass
    outbuf += conn.data_to_send()
    return True


alive = True
while alive and time.monotonic() - start < deadline:
    while opened < n and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams:
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers)
        left[sid] = body_len
        opened += 1
    alive = pump()
    if opened >= n and not outbuf and all(v == 0 for v in left.values()):
        # Everything sent: a moment for the last answers, then report.
        end = time.monotonic() + 1.0
        while alive and time.monotonic() < end:
            alive = pump()
        break
print(json.dumps({"opened": opened, "answered": answered,
                  "unanswered": len([1 for sid in left]), "sent": sent}))
