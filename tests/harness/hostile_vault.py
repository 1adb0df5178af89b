#!/usr/bin/env python3
"""A hostile ckvault server for the client's tests (tests/it/cli_hostile_inputs.rs).

Usage: hostile_vault.py MODE CERT KEY MANIFEST KEY_PEM PORTS_FILE LOG
Serves HTTPS on a free loopback port and plain HTTP on another, writes "TLS_PORT PLAIN_PORT"
into PORTS_FILE once both listen, and logs every request line as
"tls|plain PATH auth=True|False" into LOG. MODE:
  huge-length  the manifest and key as given; the archive announces 2 GiB
               (Content-Length) and streams zeros until the client goes away
  no-length    the same, but the archive has no Content-Length (ends when the
               connection closes) and streams up to 4 GiB of zeros
  redirect     every HTTPS request is answered 302 to the same path on the plain port
It runs until killed.
"""
import http.server
import ssl
import sys
import threading

mode, cert, key, manifest_path, key_pem_path, ports_file, log_path = sys.argv[1:8]
lock = threading.Lock()


def log(kind, handler):
    with lock, open(log_path, "a") as f:
        f.write(f"{kind} {handler.path} auth={'Authorization' in handler.headers}\n")


def stream_zeros(handler, total):
    chunk = b"\0" * (1 << 20)
    sent = 0
    try:
        while sent < total:
            n = min(len(chunk), total - sent)
            handler.wfile.write(chunk[:n])
            sent += n
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
        pass


class Tls(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        log("tls", self)
        if mode == "redirect":
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.1:{plain_port}{self.path}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        path = self.path.split("?")[0]
        if path.endswith("/archive"):
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if mode == "huge-length":
                self.send_header("Content-Length", str(2 << 30))
                self.end_headers()
                stream_zeros(self, 2 << 30)
            else:
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                stream_zeros(self, 4 << 30)
            return
        body = open(key_pem_path if path.endswith("/signing-key") else manifest_path, "rb").read()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class Plain(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        log("plain", self)
        body = b"{}"
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


tls = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Tls)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(cert, key)
tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
plain = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Plain)
plain_port = plain.server_address[1]
threading.Thread(target=plain.serve_forever, daemon=True).start()
with open(ports_file + ".tmp", "w") as f:
    f.write(f"{tls.server_address[1]} {plain_port}\n")
import os
os.rename(ports_file + ".tmp", ports_file)
tls.serve_forever()
