"""A hostile gRPC client on raw HTTP/2 (the `h2` library, its own header checks off): sends
one request per case with exactly the `:path` fields the case names (none, several, without
a leading slash, any bytes) on a fresh connection to a unix socket, and prints what came back.

usage: raw_paths.py SOCKET CASES.json
CASES.json: [{"paths": [HEX, ...], "body": HEX}, ...]
prints one JSON line per case: {"status": HTTP status or null, "grpc_status": str or null,
  "grpc_message": str or null, "body": HEX, "error": str or null}"""
import json, socket, sys
import h2.config, h2.connection, h2.events


def one(sock_path, paths, body):
    out = {"status": None, "grpc_status": None, "grpc_message": None, "body": "", "error": None}
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(150)
    try:
        s.connect(sock_path)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None,
            validate_outbound_headers=False, normalize_outbound_headers=False,
            validate_inbound_headers=False, normalize_inbound_headers=False))
        conn.initiate_connection()
        headers = [(b":method", b"POST"), (b":scheme", b"http")]
        headers += [(b":path", p) for p in paths]
        headers += [(b":authority", b"localhost"), (b"content-type", b"application/grpc"),
                    (b"te", b"trailers")]
        conn.send_headers(1, headers)
        conn.send_data(1, body, end_stream=True)
        s.sendall(conn.data_to_send())
        data = b""
        done = False
        while not done:
            chunk = s.recv(65536)
            if not chunk:
                out["error"] = out["error"] or "connection closed"
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    for k, v in ev.headers:
                        k, v = bytes(k), bytes(v)
                        if k == b":status":
                            out["status"] = int(v)
                        elif k == b"grpc-status":
                            out["grpc_status"] = v.decode("latin-1")
                        elif k == b"grpc-message":
                            out["grpc_message"] = v.decode("latin-1")
                elif isinstance(ev, h2.events.DataReceived):
                    data += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    done = True
                elif isinstance(ev, h2.events.StreamReset):
                    out["error"] = "stream reset %d" % ev.error_code
                    done = True
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    out["error"] = "goaway %d" % ev.error_code
                    done = True
            pending = conn.data_to_send()
            if pending:
                s.sendall(pending)
        out["body"] = data.hex()
    except Exception as e:  # reported, not raised: the test decides
        out["error"] = out["error"] or ("%s: %s" % (type(e).__name__, e))
    finally:
        s.close()
    return out


def main():
    sock_path, cases_path = sys.argv[1], sys.argv[2]
    with open(cases_path) as f:
        cases = json.load(f)
    for case in cases:
        paths = [bytes.fromhex(p) for p in case["paths"]]
        print(json.dumps(one(sock_path, paths, bytes.fromhex(case.get("body", "0000000000")))),
              flush=True)


main()
