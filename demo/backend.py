"""A tiny demo origin: ``python demo/backend.py --port P --name "backend 1"``.

Answers every GET/HEAD/POST with ``hello from NAME`` (and ``X-Backend: NAME``),
HTTP/1.1 with keep-alive; paths under ``/static/`` are cacheable for a minute
(``Cache-Control: max-age=60``), everything else is not (``no-store``).
Stdlib only. Exits cleanly on SIGTERM or Ctrl-C.
"""

import argparse
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "forkproxy-demo-backend"

    def do_GET(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)  # keep the keep-alive connection in sync
        body = f"hello from {self.server.name}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Backend", self.server.name)
        cacheable = self.path.startswith("/static/")
        self.send_header("Cache-Control", "max-age=60" if cacheable else "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_HEAD = do_POST = do_GET

    def log_message(self, fmt, *args):
        pass  # the demo prints its own summary; forkproxy has the access log


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description="forkproxy demo backend")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", default="backend")
    args = ap.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    server.name = args.name

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
