"""The floor of any gevent proxy: the least a proxy built like forkproxy can cost.

    python bench/floor.py --port P --upstream U [--workers 2]

Binds ``P``, forks ``--workers`` processes (as forkproxy's master does) and
relays each client connection over its own keep-alive upstream connection to
``U``: recv from the client, sendall upstream, one recv of the answer,
sendall to the client.  No parsing, no routing, no headers, no timeouts:
correct only for bench/backend.py's one-read answers to GETs.  Its req/s is
the ceiling for a gevent-worker proxy on this machine, so bench/run.py
reports forkproxy against it as well as against nginx.  TERM stops every
process.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402


def relay_to(upstream: tuple[str, int]):
    def handle(client, addr):
        up = socket.create_connection(upstream)
        for s in (client, up):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                data = client.recv(65536)
                if not data:
                    return
                up.sendall(data)
                answer = up.recv(65536)
                if not answer:
                    return
                client.sendall(answer)
        except OSError:
            return
        finally:
            up.close()
            client.close()

    return handle


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--upstream", type=int, required=True)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(1024)
    children = []
    for _ in range(args.workers - 1):
        pid = os.fork()
        if pid == 0:
            children = None
            break
        children.append(pid)
    server = StreamServer(listener, relay_to(("127.0.0.1", args.upstream)))
    server.max_accept = 1  # spread connections over the processes, as forkproxy does

    def stop():
        for pid in children or ():
            os.kill(pid, signal.SIGTERM)
        server.stop(timeout=1)

    gevent.signal_handler(signal.SIGTERM, stop)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
