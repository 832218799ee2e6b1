"""Logs for operators, end to end: JSON access-log lines and the error log's reasons.

A real master (``access_log_format = "json"``, an error log file), a real
backend, a dead port and a TLS listener.  Requests go out on raw sockets, so
the test knows every byte each side wrote, and are told apart in the logs by
their targets.  Log lines are written once the response went out: the test
waits for them.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl

import pytest
import trustme

from forkproxy.core.http1.heads import parse_request_head
from forkproxy.core.http1.messages import Limits, ProtocolError
from forkproxy.logs import AccessRecord, error_line
from support.procs import free_port, wait_until
from support.rawhttp import exchange

#: Every key of a JSON access-log line, in order (forkproxy.toml(5), access_log_format).
KEYS = ["time", "client", "request", "method", "target", "host", "version", "status", "bytes_received",
        "bytes_sent", "referer", "user_agent", "route", "pool", "upstream", "upstream_status",
        "request_time", "upstream_time", "cache", "request_id", "tls_version", "sni", "peer"]
#: An error-log line about one request (gunicorn's prefix, then forkproxy's text).
ERROR_LINE = re.compile(r'\[(?P<level>[A-Z]+)\] request (?P<id>\S+) (?P<client>\S+) '
                        r'"(?P<request>[^"]*)" -> (?P<status>\d{3}): (?P<why>.*)$')


@pytest.fixture
def site(tmp_path, forkproxy_factory, backend_factory):
    """(fp, port, tls port, backend, dead addr, CA file): the listeners and routes below."""
    ca = trustme.CA()
    ca_file, cert, key = (tmp_path / n for n in ("ca.pem", "a.pem", "a.key"))
    ca.cert_pem.write_to_path(str(ca_file))
    leaf = ca.issue_cert("a.example")
    cert.write_bytes(b"".join(p.bytes() for p in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    b = backend_factory("b")
    dead = f"127.0.0.1:{free_port()}"
    port, tport = free_port(), free_port()
    fp = forkproxy_factory(f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{port}"

[[listener]]
name = "websecure"
bind = "127.0.0.1:{tport}"
certs = [{{ cert = "{cert}", key = "{key}" }}]

[[route]]
host = "denied.example"
pool = "app"
access = ["allow 192.0.2.0/24", "deny 127.0.0.0/8"]

[[route]]
host = "limited.example"
pool = "app"
rate_limit = {{ rate = "1r/m", burst = 1 }}

[[route]]
host = "dead.example"
pool = "dead"

[[route]]
host = "down.example"
pool = "down"

[[route]]
host = "slow.example"
pool = "slow"

[[route]]
host = "app.example"
pool = "app"

[[route]]
listener = ["websecure"]
pool = "app"

[pool.app]
servers = [{{ addr = "{b.addr}" }}]

[pool.dead]
servers = [{{ addr = "{dead}" }}]
max_fails = 0

[pool.down]
servers = [{{ addr = "{b.addr}" }}]

[pool.slow]
servers = [{{ addr = "{b.addr}" }}]
read_timeout = "1s"
""", server={"access_log_format": "json"})
    return fp, port, tport, b, dead, ca_file


def request(target: str, host: str, close: bool = True) -> bytes:
    return (f"GET {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: logs-test\r\n"
            f"{'Connection: close' + chr(13) + chr(10) if close else ''}\r\n").encode()


def access_lines(fp) -> list[dict]:
    """Every access-log line, each checked to be one JSON object with every key, in order."""
    out = []
    for line in fp.access_log().splitlines():
        doc = json.loads(line)
        assert list(doc) == KEYS, line
        out.append(doc)
    return out


def logged(fp, target: str, status: int) -> dict:
    """The last access-log line of ``target`` answered ``status`` (waited for)."""
    def find():
        return [d for d in access_lines(fp) if d["target"] == target and d["status"] == status]

    wait_until(find, what=f"the access-log line of {target} ({status})")
    return find()[-1]


def error_lines(fp) -> list[dict]:
    return [m.groupdict() for m in map(ERROR_LINE.search, fp.error_log().splitlines()) if m]


def tls_exchange(port: int, ca_file, data: bytes, sni: str | None) -> tuple[bytes, str]:
    """Send ``data`` over TLS (``sni``: the name sent, None: no SNI); (reply, TLS version)."""
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if sni is None:
        ctx.check_hostname = False
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10),
                         server_hostname=sni) as s:
        # Asked once the handshake is done, while the connection is up: after
        # the server's close, the answer depends on how the TLS library took
        # the end (OpenSSL answers None for a connection it saw end while it
        # was handling a post-handshake message, such as a TLS 1.3 ticket).
        version = s.version()
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out, version


def test_json_lines_carry_the_request_tls_and_true_byte_counts(site):
    fp, port, tport, b, _, ca_file = site
    # Two pipelined requests on one connection: each line counts its own bytes.
    first, second = request("/plain1", "app.example", close=False), request("/plain2", "app.example")
    reply = exchange(port, first + second)
    one, two = logged(fp, "/plain1", 200), logged(fp, "/plain2", 200)
    assert (one["bytes_received"], two["bytes_received"]) == (len(first), len(second))
    assert (one["bytes_sent"], two["bytes_sent"]) == (reply.index(b"HTTP/1.1 200 ", 1),
                                                     len(reply) - reply.index(b"HTTP/1.1 200 ", 1))
    # RFC 3339: the offset has its colon (strftime's %z has none)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d", one["time"])
    assert (one["host"], two["host"]) == ("app.example", "app.example")
    assert one["request"] == "GET /plain1 HTTP/1.1"
    assert (one["method"], one["version"], one["client"], one["user_agent"]) == (
        "GET", "1.1", "127.0.0.1", "logs-test")
    assert (one["route"], one["pool"], one["upstream"], one["upstream_status"]) == (
        5, "app", b.addr, 200)
    assert isinstance(one["upstream_time"], float) and isinstance(one["request_time"], float)
    assert re.fullmatch(r"[0-9a-f]{32}", one["request_id"]) and one["request_id"] != two["request_id"]
    assert (one["tls_version"], one["sni"], one["cache"], one["referer"]) == (None, None, None, None)

    sent = request("/secure", "a.example")
    reply, version = tls_exchange(tport, ca_file, sent, "a.example")
    line = logged(fp, "/secure", 200)
    assert (line["tls_version"], line["sni"]) == (version, "a.example")
    assert (line["bytes_received"], line["bytes_sent"]) == (len(sent), len(reply))
    assert line["upstream"] == b.addr

    reply, version = tls_exchange(tport, ca_file, request("/nosni", "a.example"), None)
    line = logged(fp, "/nosni", 200)
    assert (line["tls_version"], line["sni"]) == (version, None)
    assert not [e for e in error_lines(fp) if "/plain" in e["request"] or "/secure" in e["request"]]


def test_every_refusal_and_5xx_leaves_an_error_line_with_the_request_id(site):
    fp, port, _, b, dead, _ = site
    assert exchange(port, request("/limited", "limited.example")).startswith(b"HTTP/1.1 200 ")
    # A server in maint: once a worker's snapshot has it, its pool has no server up.
    assert fp.ctl("maint", "down", b.addr).returncode == 0
    bad = b"GET /malformed HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n"
    with pytest.raises(ProtocolError) as parsed:
        parse_request_head(bad, Limits())
    cases = [  # (target, Host, status, why)
        ("/denied", "denied.example", 403,
         'address 127.0.0.1 denied by access rule 2 of route 0 ("deny 127.0.0.0/8")'),
        ("/limited", "limited.example", 429, "rate limit of route 1 exceeded (1r/m, burst 1, key ip)"),
        ("/dead", "dead.example", 502, f"connect to {dead} refused"),
        ("/down", "down.example", 503, 'no server up in pool "down"'),
        ("/slow?ms=4000", "slow.example", 504,
         f"upstream {b.addr} did not answer in time (1s reading the response head)"),
        ("/status/503", "app.example", 503, f"upstream {b.addr} answered 503"),
        ("/nowhere", "nowhere.example", 404,
         'no route for host "nowhere.example" path "/nowhere" on listener "web"'),
    ]
    replies = {}
    for target, host, status, _ in cases:
        sent = request(target, host)

        def ask(sent=sent, target=target, status=status):
            replies[target] = (sent, exchange(port, sent))
            return replies[target][1].startswith(f"HTTP/1.1 {status} ".encode())
        if target == "/down":
            # The worker that answers may not have taken its next table
            # snapshot since the maint (one every 200 ms): ask until it has;
            # the last exchange is the one checked below.
            wait_until(ask, what="the answering worker seeing the pool without a server up")
        else:
            ask()
        assert replies[target][1].startswith(f"HTTP/1.1 {status} ".encode()), replies[target][1]
    reply = exchange(port, bad)
    assert reply.startswith(b"HTTP/1.1 400 ")

    for target, _, status, why in cases:
        line = logged(fp, target, status)
        sent, got = replies[target]
        assert (line["bytes_received"], line["bytes_sent"]) == (len(sent), len(got)), target
        wait_until(lambda: [e for e in error_lines(fp) if e["id"] == line["request_id"]],
                   what=f"the error-log line of {target}")
        [err] = [e for e in error_lines(fp) if e["id"] == line["request_id"]]
        if status >= 500:  # and where it failed
            where = [f"route {line['route']}", f'pool "{line["pool"]}"']
            where += [f"server {line['upstream']}"] if line["upstream"] else []
            why += " [" + ", ".join(where) + "]"
        assert err == {"level": "WARNING", "id": line["request_id"], "client": "127.0.0.1",
                       "request": f"GET {target}", "status": str(status), "why": why}

    # A head that cannot be parsed has no request id: "-" in both logs.
    wait_until(lambda: [d for d in access_lines(fp) if d["status"] == 400],
               what="the malformed request's access-log line")
    [line] = [d for d in access_lines(fp) if d["status"] == 400]
    assert (line["request"], line["method"], line["request_id"]) == (None, None, None)
    assert (line["bytes_received"], line["bytes_sent"]) == (len(bad), len(reply))
    wait_until(lambda: [e for e in error_lines(fp) if e["status"] == "400"],
               what="the malformed request's error-log line")
    [err] = [e for e in error_lines(fp) if e["status"] == "400"]
    assert (err["id"], err["request"], err["level"]) == ("-", "-", "WARNING")
    assert err["why"] == f"malformed request: {parsed.value.reason}"


@pytest.mark.parametrize("status, why, cache, expected", [
    (500, "internal error: KeyError('x')", None, (logging.ERROR, "internal error: KeyError('x')")),
    (408, "request head not received in time", None,
     (logging.INFO, "request head not received in time")),
    (502, "connect to 127.0.0.1:9 refused", None, (logging.WARNING, "connect to 127.0.0.1:9 refused")),
    (404, None, None, None),  # a server's own 4xx is its business
    (200, None, "HIT", None),
    (301, "redirect", None, None),
    (501, None, "HIT", (logging.WARNING, "answered 501 (cache HIT)")),  # a stored 5xx
])
def test_error_line_levels_and_reasons(status, why, cache, expected):
    """The cases the requests above cannot produce on demand (a bug, a slow client...)."""
    r = AccessRecord("192.0.2.7", 0.0)
    r.method, r.target, r.request_id = "GET", '/a"b', "abc"
    r.status, r.why, r.cache = status, why, cache
    got = error_line(r)  # no route, pool or server: nothing to add to a 5xx
    if expected is None:
        assert got is None
    else:
        assert got == (expected[0], f'request abc 192.0.2.7 "GET /a\\"b" -> {status}: {expected[1]}')


def test_a_5xx_line_says_where_it_failed():
    r = AccessRecord("192.0.2.7", 0.0)
    r.method, r.target, r.request_id, r.status = "GET", "/x", "abc", 504
    r.why, r.route, r.pool, r.upstream = "timed out", 3, "api", "10.0.0.1:80"
    assert error_line(r)[1].endswith('-> 504: timed out [route 3, pool "api", server 10.0.0.1:80]')
    r.status, r.why = 403, "denied"  # a refusal names its own rule
    assert error_line(r)[1].endswith("-> 403: denied")


def test_client_and_peer_in_both_formats(tmp_path):
    """Behind a trusted proxy the first field is the real client, the proxy is ``peer``."""
    from forkproxy.logs import AccessLog

    r = AccessRecord("10.0.0.2", 0.0)
    r.client, r.method, r.target, r.version, r.status = "203.0.113.9", "GET", "/", "1.1", 403
    r.request_id, r.why = "abc", "denied"
    combined = AccessLog(str(tmp_path / "c.log"), "combined").format_line(r)
    assert combined.startswith("203.0.113.9 - - [") and combined.endswith(" peer=10.0.0.2\n")
    doc = json.loads(AccessLog(str(tmp_path / "j.log"), "json").format_line(r))
    assert (doc["client"], doc["peer"]) == ("203.0.113.9", "10.0.0.2")
    assert error_line(r)[1] == 'request abc 203.0.113.9 via 10.0.0.2 "GET /" -> 403: denied'
    r.client = r.peer  # no proxy: the line is as it was
    assert error_line(r)[1] == 'request abc 10.0.0.2 "GET /" -> 403: denied'
