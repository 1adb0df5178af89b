"""A stock gRPC client (grpcio, the C-core gRPC behind Python, C++ and Ruby) making raw
calls over a unix socket WITHOUT overriding :authority (grpcio then sends the socket path,
as on a node), for comparing a runtime's answers directly and through ckvault's proxy.

usage: grpc_call.py SOCKET CALLS.json
CALLS.json: [{"method": "/runtime.v1.RuntimeService/Version", "request": HEX,
              "stream": false, "timeout": 10}, ...]
prints one JSON line per call: {"method", "code", "details", "messages": [CANONICAL...]}
CANONICAL is the protobuf wire form decoded without a schema, each level's fields sorted,
so map entries (which Go sends in random order) compare equal."""
import json, sys
import grpc

def varint(b, i):
    shift = v = 0
    while True:
        if i >= len(b) or shift > 63:
            raise ValueError("varint")
        c = b[i]; i += 1
        v |= (c & 0x7f) << shift; shift += 7
        if not c & 0x80:
            return v, i

def canon(b, depth=0):
    """The fields of message bytes `b`, sorted; None if `b` is not a message."""
    out, i = [], 0
    try:
        while i < len(b):
            key, i = varint(b, i)
            f, wt = key >> 3, key & 7
            if f == 0:
                return None
            if wt == 0:
                v, i = varint(b, i); out.append([f, v])
            elif wt == 1:
                if i + 8 > len(b): return None
                out.append([f, b[i:i + 8].hex()]); i += 8
            elif wt == 5:
                if i + 4 > len(b): return None
                out.append([f, b[i:i + 4].hex()]); i += 4
            elif wt == 2:
                n, i = varint(b, i)
                if i + n > len(b): return None
                data = b[i:i + n]; i += n
                sub = canon(data, depth + 1) if depth < 32 and n > 0 else None
                out.append([f, sub if sub is not None else data.hex()])
            else:
                return None
    except ValueError:
        return None
    return sorted(out, key=lambda x: json.dumps(x))

sock, calls = sys.argv[1], json.load(open(sys.argv[2]))
channel = grpc.insecure_channel("unix://" + sock)
ident = lambda x: x
for c in calls:
    req = bytes.fromhex(c.get("request", ""))
    res = {"method": c["method"], "code": "OK", "details": "", "messages": []}
    try:
        if c.get("stream"):
            call = channel.unary_stream(c["method"], request_serializer=ident, response_deserializer=ident)
            for m in call(req, timeout=c.get("timeout", 10)):
                res["messages"].append(canon(m))
        else:
            call = channel.unary_unary(c["method"], request_serializer=ident, response_deserializer=ident)
            res["messages"].append(canon(call(req, timeout=c.get("timeout", 10))))
    except grpc.RpcError as e:
        res["code"] = e.code().name
        res["details"] = e.details() or ""
    print(json.dumps(res), flush=True)
