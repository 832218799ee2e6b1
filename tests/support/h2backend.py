"""An HTTP/2 origin server for tests: ``python h2backend.py --port P --name NAME [--cert C --key K]``.

h2c with prior knowledge (or, with a certificate, TLS with ALPN h2), the ``h2``
library, one thread per connection.  Every response carries ``x-backend: NAME``.
``--max-streams N``: SETTINGS_MAX_CONCURRENT_STREAMS (refused beyond, by h2).
``--hang``: every request but ``/healthz`` is read whole, then never answered.
Each request whole is printed (``request PATH``) to stdout.

- ``/echo``: 200 JSON ``{method, path, authority, scheme, headers, body_len,
  body_sha256, backend}`` (a body of any size is read first).
- ``/bytes?n=N``: N bytes of ``0123456789`` repeated, in DATA frames, no
  content-length.
- ``/trailers``: body ``hello``, then trailers ``grpc-status: 0``, ``set-cookie`` and
  ``x-sum: 5``.
- ``/status/NNN``: status NNN, HEADERS only (END_STREAM), no content-length.
- ``/healthz`` and anything else: 200, body NAME.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import socket
import ssl
import threading
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings


class Conn:
    def __init__(self, sock, name: str, max_streams: int | None = None, hang: bool = False):
        self.sock, self.name, self.hang = sock, name, hang
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding="utf-8"))
        if max_streams is not None:
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
                h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: max_streams})
        self.reqs: dict[int, dict] = {}
        self.out: dict[int, list] = {}  # stream -> [data left, trailers or None]

    def run(self) -> None:
        self.h2.initiate_connection()
        self.sock.sendall(self.h2.data_to_send())
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                for ev in self.h2.receive_data(data):
                    self.event(ev)
                self.pump()
                self.sock.sendall(self.h2.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.sock.close()

    def event(self, ev) -> None:
        if isinstance(ev, h2.events.RequestReceived):
            self.reqs[ev.stream_id] = {"headers": ev.headers, "body": hashlib.sha256(), "n": 0}
        elif isinstance(ev, h2.events.DataReceived):
            r = self.reqs.get(ev.stream_id)
            if r is not None:
                r["body"].update(ev.data)
                r["n"] += len(ev.data)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            r = self.reqs.pop(ev.stream_id, None)
            if r is not None:
                path = dict(r["headers"]).get(":path", "")
                print("request", path, flush=True)  # what tests wait for
                if not self.hang or path == "/healthz":
                    self.answer(ev.stream_id, r)
        elif isinstance(ev, h2.events.StreamReset):
            self.reqs.pop(ev.stream_id, None)
            self.out.pop(ev.stream_id, None)

    def answer(self, sid: int, r: dict) -> None:
        hd = dict(r["headers"])
        path = hd.get(":path", "/")
        url = urlsplit(path)
        trailers = None
        extra = []
        if url.path == "/echo":
            body = json.dumps({
                "method": hd.get(":method"), "path": path, "authority": hd.get(":authority"),
                "scheme": hd.get(":scheme"), "headers": [list(h) for h in r["headers"]],
                "body_len": r["n"], "body_sha256": r["body"].hexdigest(),
                "backend": self.name}).encode()
            extra = [("content-type", "application/json"), ("content-length", str(len(body)))]
        elif url.path == "/bytes":
            n = int(parse_qs(url.query).get("n", ["0"])[0])
            body = (b"0123456789" * (n // 10 + 1))[:n]
        elif url.path.startswith("/status/"):
            code = url.path.rsplit("/", 1)[1]
            self.h2.send_headers(sid, [(":status", code), ("x-backend", self.name)],
                                 end_stream=True)
            return
        elif url.path == "/trailers":
            body = b"hello"
            # set-cookie: a field a trailer may not carry on (core.headers.NOT_TRAILERS)
            trailers = [("grpc-status", "0"), ("set-cookie", "late=1"), ("x-sum", "5")]
        else:
            body = self.name.encode()
        if hd.get(":method") == "HEAD":
            self.h2.send_headers(sid, [(":status", "200"), ("x-backend", self.name)] + extra,
                                 end_stream=True)
            return
        self.h2.send_headers(sid, [(":status", "200"), ("x-backend", self.name)] + extra)
        self.out[sid] = [body, trailers]

    def pump(self) -> None:
        for sid, item in list(self.out.items()):
            data, trailers = item
            while data:
                room = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
                if room <= 0:
                    break
                self.h2.send_data(sid, data[:room])
                data = data[room:]
            item[0] = data
            if not data:
                if trailers:
                    self.h2.send_headers(sid, trailers, end_stream=True)
                else:
                    self.h2.end_stream(sid)
                del self.out[sid]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="h2")
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--max-streams", type=int)
    ap.add_argument("--hang", action="store_true", help="never answer (but /healthz)")
    args = ap.parse_args()
    ctx = None
    if args.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.cert, args.key)
        ctx.set_alpn_protocols(["h2"])
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", args.port))
    ls.listen(128)
    while True:
        sock, _ = ls.accept()

        def serve(sock=sock):
            if ctx is not None:
                try:
                    sock = ctx.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError):
                    sock.close()
                    return
            Conn(sock, args.name, args.max_streams, args.hang).run()

        threading.Thread(target=serve, daemon=True).start()


if __name__ == "__main__":
    main()
