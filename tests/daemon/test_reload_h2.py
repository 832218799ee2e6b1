"""Reloads under HTTP/2 load drop no stream.

HTTP/2 clients (the ``h2`` library over raw sockets, one thread each) keep
several streams in flight on h2c connections while the master reloads five
times.  A draining worker sends GOAWAY naming the last stream it took: every
stream at or below it must complete there; a stream above it is sent again
on a new connection, as the RFC allows, and is not a failure (nor is its
REFUSED_STREAM, which must come after the GOAWAY: a refusal before it, on a
connection the client still believes open, is counted a failure, as
clients such as h2load count it).  Every other end of a stream is.

Real master, backend and clients on 127.0.0.1; real SIGHUPs.
"""

from __future__ import annotations

import socket
import threading

import h2.config
import h2.connection
import h2.errors
import h2.events

from support.configs import one_pool
from support.procs import free_port, wait_until

CLIENTS = 4
STREAMS = 8  # in flight per connection
RELOADS = 5
CAP = 20000  # requests per client at most: the test is bounded whatever happens


GOAWAY = 0x7


def split(buf: bytes) -> tuple[list[bytes], bytes]:
    """The whole frames at the start of ``buf``, and the rest.  GOAWAY is read
    here, not by h2, whose connection would close at once: the streams the
    server took must still be read to their end."""
    frames = []
    while len(buf) >= 9 and len(buf) >= 9 + int.from_bytes(buf[:3], "big"):
        n = 9 + int.from_bytes(buf[:3], "big")
        frames.append(buf[:n])
        buf = buf[n:]
    return frames, buf


class Load:
    """The clients' shared tally; ``failures`` says what went wrong, in words."""

    def __init__(self, port: int):
        self.port = port
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"ok": 0, "connects": 0, "goaways": 0, "retried": 0, "refused": 0}
        self.failures: list[str] = []

    def add(self, what: str, n: int = 1) -> None:
        with self.lock:
            self.counts[what] += n

    def fail(self, why: str) -> None:
        with self.lock:
            self.failures.append(why)

    def client(self) -> None:
        """Streams until told to stop (or CAP): a connection at a time, a new
        one after a GOAWAY, with the streams the server did not take."""
        todo = CAP  # requests still to start
        try:
            while todo > 0 and not self.stop.is_set() and not self.failures:
                todo = self.connection(todo)
        except Exception as exc:  # noqa: BLE001 - reported, never lost
            self.fail(repr(exc))

    def connection(self, todo: int) -> int:
        """One connection's life; returns the requests still to start."""
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        self.add("connects")
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        open_: dict[int, list] = {}  # stream id -> [status, body]
        last = None  # GOAWAY's last_stream_id once it came
        buf = b""
        try:
            while True:
                while last is None and todo > 0 and len(open_) < STREAMS \
                        and not self.stop.is_set():
                    sid = conn.get_next_available_stream_id()
                    conn.send_headers(sid, [(":method", "GET"), (":scheme", "http"),
                                            (":path", "/"),
                                            (":authority", f"127.0.0.1:{self.port}")],
                                      end_stream=True)
                    open_[sid] = [None, b""]
                    todo -= 1
                sock.sendall(conn.data_to_send())
                if not open_:
                    return todo  # done, or GOAWAY'd with every stream it took answered
                data = sock.recv(65536)
                buf += data
                if not data:
                    taken = [s for s in open_ if last is None or s <= last]
                    if taken:
                        self.fail(f"connection closed with streams {taken} taken "
                                  f"(GOAWAY last_stream_id {last})")
                    self.add("retried", len(open_) - len(taken))
                    return todo + len(open_) - len(taken)
                frames, buf = split(buf)
                for frame in frames:
                    if frame[3] != GOAWAY:
                        for ev in conn.receive_data(frame):
                            todo = self.event(conn, ev, open_, todo, last)
                        continue
                    last = int.from_bytes(frame[9:13], "big") & 0x7FFFFFFF
                    self.add("goaways")
                    code = int.from_bytes(frame[13:17], "big")
                    if code != h2.errors.ErrorCodes.NO_ERROR:
                        self.fail(f"GOAWAY with error code {code}")
                    above = [s for s in open_ if s > last]
                    for s in above:  # not taken: sent again on the next connection
                        del open_[s]
                    self.add("retried", len(above))
                    todo += len(above)
        finally:
            sock.close()

    def event(self, conn, ev, open_: dict, todo: int, last) -> int:
        if isinstance(ev, h2.events.ResponseReceived):
            open_[ev.stream_id][0] = dict(ev.headers).get(b":status")
        elif isinstance(ev, h2.events.DataReceived):
            open_[ev.stream_id][1] += ev.data
            conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            status, body = open_.pop(ev.stream_id)
            if status == b"200" and body == b"b":
                self.add("ok")
            else:
                self.fail(f"stream {ev.stream_id}: {status!r} {body[:80]!r}")
        elif isinstance(ev, h2.events.StreamReset):
            if open_.pop(ev.stream_id, None) is None:
                return todo  # above GOAWAY's last_stream_id: already sent again
            if ev.error_code == h2.errors.ErrorCodes.REFUSED_STREAM:  # not processed
                self.add("refused")
                if last is None:
                    self.fail(f"stream {ev.stream_id} refused before a GOAWAY")
                return todo + 1
            self.fail(f"stream {ev.stream_id} reset: {ev.error_code!r}")
        return todo


def test_five_reloads_under_http2_load_fail_no_stream(forkproxy_factory, backend_factory):
    b = backend_factory("b")
    port = free_port()
    fp = forkproxy_factory(one_pool(port, [b.addr], listener_extra="http2 = true"),
                           server={"workers": 2})
    fp.wait_workers(2)
    load = Load(port)
    threads = [threading.Thread(target=load.client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: load.counts["ok"] >= CLIENTS * STREAMS or load.failures,
                   timeout=30, what="streams answered before the first reload")
        first_workers = set(fp.worker_pids())
        for _ in range(RELOADS):
            goaways, served = load.counts["goaways"], load.counts["ok"]
            fp.reload_and_wait()
            # Every connection of the old generation was told GOAWAY, and
            # streams go on being answered by the new one.
            wait_until(lambda: (load.counts["goaways"] >= goaways + 1
                                and load.counts["ok"] >= served + CLIENTS * STREAMS)
                       or load.failures, timeout=30,
                       what=f"streams after a reload ({load.counts}, {load.failures[:3]})")
            assert not load.failures, (load.failures[:5], fp.error_log()[-3000:])
    finally:
        load.stop.set()
        for t in threads:
            t.join(60)
    print(load.counts)
    assert not load.failures, load.failures[:5]
    assert all(not t.is_alive() for t in threads)
    assert load.counts["goaways"] >= RELOADS  # the reloads did reach HTTP/2 connections
    assert load.counts["connects"] > CLIENTS
    assert not first_workers & set(fp.worker_pids())  # served by other processes by now
