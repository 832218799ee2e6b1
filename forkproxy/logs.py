"""Access-log formats and the reopenable file behind them.

An ``AccessLog`` writes one line per finished request.  It owns its file so
that USR1 (``reopen()``) can follow logrotate: the old file is closed and the
path opened again, creating a new file when the old one was moved away.

Formats:

``combined``
    nginx's combined format followed by forkproxy's upstream fields::

        127.0.0.1 - - [29/Nov/2026:03:13:27 +0000] "GET / HTTP/1.1" 200 5 "-" "curl/7.88" \
        upstream=127.0.0.1:8081 upstream_status=200 request_time=0.002 upstream_time=0.001 route=0 pool=web \
        cache=- request_id=4f1c... peer=127.0.0.1

    The size after the status is ``bytes_sent``: the response head and body
    (nginx's combined format has the body alone).
    ``cache`` is the cache status on routes with ``cache = true``, else ``-``.
    ``request_id`` is the request's X-Request-Id (sent upstream; kept from a
    trusted proxy, generated otherwise), ``-`` for a head that could not be parsed.
    The first field is the real client: the peer, or behind a peer in
    ``server.trusted_proxies`` the address its X-Forwarded-For vouches for;
    ``peer`` is the address the connection came from (or the one its PROXY
    header carried), the proxy in that case.

    Absent values are written as ``-``.
``json``
    One JSON object per line, always with the same keys in the same order
    (absent values are ``null``): a stable interface for log shippers,
    documented in forkproxy.toml(5) under ``access_log_format``.  The
    combined fields, the time in RFC 3339, the request line (``request``)
    with its parts and the ``host`` it named,
    ``bytes_received`` (request head and the body bytes read from the
    client), ``bytes_sent`` (response head and body written to it), and
    ``tls_version`` / ``sni`` on a TLS connection, then ``peer``.

The error log gets one line per request that forkproxy refused or that
ended in a 5xx (``error_line``), with the record's ``why``.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import stat
import sys
import time

FORMATS = ("combined", "json")


class AccessRecord:
    """What one request leaves in the logs (a plain bag).

    ``bytes_received``/``bytes_sent`` are set by the session when the request
    ends.  ``why`` is set where forkproxy decides to refuse a request or to
    answer 5xx (or sees a server answer 5xx): the error log's reason, in words.
    """

    # The defaults live on the class: one record is made per request, and it
    # sets only what its request came to have.
    method = target = version = None
    host = None  # the host the request named (Host or absolute target), lower case, no port
    status = 0
    bytes_sent = bytes_received = 0
    referer = user_agent = None
    upstream = upstream_status = None
    request_time = 0.0
    upstream_time = None
    route = pool = None
    cache = None  # HIT, MISS, STALE, REVALIDATED or BYPASS on cached routes
    request_id = None
    tls_version = None  # "TLSv1.3"... on a TLS connection
    sni = None  # the server name the TLS client asked for
    why = None

    def __init__(self, client: str, start: float):
        # ``client`` starts as the peer; the session puts the real client
        # there once the head is parsed (behind trusted_proxies).
        self.client = self.peer = client
        self.start = start


def error_line(r: AccessRecord) -> tuple[int, str] | None:
    """(logging level, text) of the error-log line a finished request needs, or None.

    Every 5xx, and every request forkproxy refused itself (a 4xx with a
    ``why``), gets one line::

        request <id> <client>[ via <peer>] "<METHOD target>" -> <status>: <why>[ [route R, pool "P", server S]]

    ``<id>`` is ``-`` (and the request ``"-"``) when the head could not be
    parsed.  Level: error for 500 (a bug in forkproxy), info for 408 (a
    slow client: nothing for the operator to fix), warning otherwise.  A
    server's own 4xx is its business and gets none.
    """
    status = r.status
    if status < 400 or (r.why is None and status < 500):
        return None
    # A 5xx without a why was not decided on the request path: a stored
    # response, or the cache's own answer to PURGE.
    why = r.why if r.why is not None else f"answered {status} (cache {r.cache or '-'})"
    where = ", ".join(w for w in (f"route {r.route}" if r.route is not None else "",
                                  f'pool "{r.pool}"' if r.pool else "",
                                  f"server {r.upstream}" if r.upstream else "") if w)
    if status >= 500 and where:  # where it failed, for the operator to look next
        why += f" [{where}]"
    request = "-" if r.method is None else f"{r.method} {r.target}"
    level = logging.ERROR if status == 500 else logging.INFO if status == 408 else logging.WARNING
    client = r.client if r.peer == r.client else f"{r.client} via {r.peer}"
    return level, (f'request {r.request_id or "-"} {client} "{_q(request)}" -> {status}: '
                   f"{why}")


def _q(value) -> str:
    """Quote-safe text for the combined format: ``"`` and control bytes escaped."""
    if value is None:
        return "-"
    text = str(value)
    if '"' in text or "\\" in text or not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    return text


def open_append(path: str):
    """Open the log file ``path`` for appending (created 0644), never through a
    symbolic link and only if it is a regular file; a line-buffered text file.

    The directory of a log may belong to the workers' user (server.user),
    and the master, root, reopens the logs on USR1 and hands the new files
    to that user: a symlink planted in place of a log would make root
    append to, then give away, whatever file it names.  Raises ``OSError``
    with a reason an operator understands.
    """
    try:
        # O_NONBLOCK: a FIFO without a reader fails at once instead of
        # blocking the master; it changes nothing for a regular file.
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, "it is a symbolic link (log files are never opened "
                          "through one)", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "a", buffering=1, encoding="utf-8", errors="replace")
    except BaseException:
        os.close(fd)
        raise


class AccessLog:
    """A line-per-request log at ``path`` ("-" stderr, "off" nothing)."""

    def __init__(self, path: str, fmt: str = "combined", owner: tuple[int, int] | None = None):
        """``owner`` (uid, gid): hand each file this log opens to that user, as nginx
        does for its workers, so they can reopen it after a rotation."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown access log format {fmt!r}")
        self.path = path
        self.format = fmt
        self._file = None
        self._stamp_second = self._iso_second = -1
        self._stamp = self._iso = ""
        self.owner = owner
        self.enabled = path != "off"
        self.reopen()

    def reopen(self) -> None:
        """Close and reopen the file (USR1): logrotate moved it away."""
        if not self.enabled:
            return
        if self.path == "-":
            self._file = sys.stderr
            return
        old = self._file
        # Line-buffered append: one write per request, whole lines only,
        # so workers sharing the file never interleave inside a line.
        self._file = open_append(self.path)
        if self.owner is not None and os.geteuid() == 0:
            try:
                os.fchown(self._file.fileno(), *self.owner)
            except OSError:
                pass  # a log on a filesystem without owners still works for root
        if old is not None and old is not sys.stderr:
            old.close()

    def close(self) -> None:
        if self._file is not None and self._file is not sys.stderr:
            self._file.close()
        self._file = None

    def _time_local(self, now: float) -> str:
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
        return self._stamp

    def _time_iso(self, now: float) -> str:
        """RFC 3339 local time, such as 2026-11-29T03:13:27+00:00."""
        second = int(now)
        if second != self._iso_second:
            self._iso_second = second
            text = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second))
            self._iso = f"{text[:-2]}:{text[-2:]}"  # %z has no colon: +0000
        return self._iso

    def format_line(self, r: AccessRecord) -> str:
        request = "-" if r.method is None else f"{r.method} {r.target} HTTP/{r.version}"
        if self.format == "json":
            return json.dumps({
                "time": self._time_iso(r.start),
                "client": r.client, "request": None if r.method is None else request,
                "method": r.method, "target": r.target, "host": r.host, "version": r.version,
                "status": r.status, "bytes_received": r.bytes_received,
                "bytes_sent": r.bytes_sent, "referer": r.referer, "user_agent": r.user_agent,
                "route": r.route, "pool": r.pool, "upstream": r.upstream,
                "upstream_status": r.upstream_status, "request_time": round(r.request_time, 6),
                "upstream_time": None if r.upstream_time is None else round(r.upstream_time, 6),
                "cache": r.cache, "request_id": r.request_id, "tls_version": r.tls_version,
                "sni": r.sni,
                "peer": r.peer,
            }, separators=(",", ":")) + "\n"
        upstream_time = "-" if r.upstream_time is None else f"{r.upstream_time:.3f}"
        return (f'{r.client} - - [{self._time_local(r.start)}] "{_q(request)}" {r.status} '
                f'{r.bytes_sent} "{_q(r.referer)}" "{_q(r.user_agent)}" '
                f'upstream={r.upstream or "-"} upstream_status={r.upstream_status or "-"} '
                f'request_time={r.request_time:.3f} upstream_time={upstream_time} '
                f'route={"-" if r.route is None else r.route} pool={r.pool or "-"} '
                f'cache={r.cache or "-"} request_id={_q(r.request_id)} peer={r.peer}\n')

    def write(self, r: AccessRecord) -> None:
        if self._file is None:
            return
        try:
            self._file.write(self.format_line(r))
        except OSError:
            # A full disk must not take requests down with it.
            pass

