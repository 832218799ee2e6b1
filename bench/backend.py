"""The benchmark origin: a canned 1 KiB ``200 OK`` as fast as one Python process goes.

    python bench/backend.py --port P [--size 1024]

gevent ``StreamServer``; answers every request head (``\\r\\n\\r\\n``) on a
connection with the same prebuilt keep-alive response, pipelining included.
It ignores request bodies: the benchmark sends GETs only. Exits on SIGTERM.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402


def make_response(size: int) -> bytes:
    body = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    head = (
        b"HTTP/1.1 200 OK\r\nServer: bench\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    return head + body


def serve(response: bytes):
    def handle(sock, addr):
        buf = b""
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
                n = buf.count(b"\r\n\r\n")
                if n:
                    buf = buf[buf.rindex(b"\r\n\r\n") + 4 :]
                    sock.sendall(response * n)
                elif len(buf) > 65536:
                    return
        except OSError:
            return
        finally:
            sock.close()

    return handle


def main() -> int:
    ap = argparse.ArgumentParser(description="canned-response benchmark backend")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--size", type=int, default=1024, help="body bytes (default 1024)")
    args = ap.parse_args()
    server = StreamServer(("127.0.0.1", args.port), serve(make_response(args.size)), backlog=1024)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
