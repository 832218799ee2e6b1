"""The admin endpoint's live status page (``GET /``) in a real headless chromium.

A real master (4 workers, two listeners, two pools of two real backends,
active checks every 500 ms) and Debian's ``/usr/bin/chromium`` driven over
the DevTools protocol with websocket-client. The page must list every pool
and server, count the traffic the backends saw, follow a backend's death
without being reloaded, and say "stale" (keeping its data) once the daemon
is gone. A screenshot goes to the test's tmp dir. Skipped only when chromium
is not installed.
"""

from __future__ import annotations

import base64
import json
import os
import struct
from pathlib import Path

import pytest
import requests
import websocket

from support.configs import one_pool
from support.procs import Proc, ProcError, free_port, wait_until

CHROMIUM = "/usr/bin/chromium"
VIEW = (1280, 900)  # the page's viewport, so the screenshot's size is known
# Fast checks; a generous timeout so a loaded machine cannot flap a live server
# (a stopped one is refused at once).
HEALTH = 'health = { path = "/healthz", interval = "500ms", timeout = "2s", rise = 1, fall = 2 }'

# What the test reads from the page: every server row's data attributes,
# and the hooks that prove it was never reloaded.
ROWS_JS = """Array.from(document.querySelectorAll("tr.server")).map(r => ({
    pool: r.dataset.pool, server: r.dataset.server, health: r.dataset.health,
    admin: r.dataset.admin, requests: r.querySelector("[data-requests]") &&
    Number(r.querySelector("[data-requests]").dataset.requests)}))"""
PAGE_JS = """({loadId: window.forkproxyStatusPage.loadId,
    polls: window.forkproxyStatusPage.polls,
    navigations: performance.getEntriesByType("navigation").length,
    timeOrigin: performance.timeOrigin})"""


def config(ports, pools) -> str:
    """Listener "web" -> pool web, listener "api" -> pool api; checks on both pools."""
    tables = "\n".join(f"""
[pool.{name}]
servers = [{", ".join(f'{{ addr = "{b.addr}" }}' for b in bs)}]
{HEALTH}
""" for name, bs in pools.items())
    return f"""
[[listener]]
name = "web"
bind = "127.0.0.1:{ports['web']}"

[[listener]]
name = "api"
bind = "127.0.0.1:{ports['api']}"

[[route]]
listener = ["api"]
pool = "api"

[[route]]
pool = "web"
{tables}"""


@pytest.fixture
def site(forkproxy_factory, backend_factory):
    """(fp, listener ports, admin port, {pool: [backends]}): 4 workers, admin on loopback."""
    pools = {name: [backend_factory(f"{name}{i}") for i in (1, 2)] for name in ("web", "api")}
    ports, aport = {"web": free_port(), "api": free_port()}, free_port()
    fp = forkproxy_factory(config(ports, pools),
                           server={"workers": 4, "admin": f"127.0.0.1:{aport}"})
    fp.wait_workers(4)
    return fp, ports, aport, pools


class DevTools:
    """A minimal DevTools protocol client on one page target's websocket."""

    def __init__(self, ws_url: str):
        # No Origin header: chromium refuses websocket origins it was not told to allow.
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.last_id = 0

    def call(self, method: str, **params) -> dict:
        """Send one command and return its result; events in between are dropped."""
        self.last_id += 1
        self.ws.send(json.dumps({"id": self.last_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.last_id:
                if "error" in msg:
                    raise ProcError(f"DevTools {method}: {msg['error']}")
                return msg["result"]

    def js(self, expression: str):
        """The JSON value of ``expression`` in the page; ProcError when it throws."""
        r = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in r:
            raise ProcError(f"page: {r['exceptionDetails'].get('text')} in {expression[:60]!r}")
        return r["result"].get("value")

    def close(self) -> None:
        self.ws.close()


def _devtools_port(profile: Path, proc: Proc) -> int | None:
    """The port chromium wrote to DevToolsActivePort (None: not yet); raises if it died."""
    if not proc.alive():
        raise ProcError(f"chromium exited with {proc.returncode}:\n{proc.log_tail()}")
    try:
        first = (profile / "DevToolsActivePort").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.strip().isdigit() else None


@pytest.fixture
def browser(tmp_path):
    """A DevTools client on the blank page of a headless chromium, killed by pid after the test."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"chromium is not installed ({CHROMIUM}; Debian package chromium)")
    profile = tmp_path / "chromium-profile"
    argv = [CHROMIUM, "--headless=new", "--disable-gpu", "--remote-debugging-port=0",
            f"--user-data-dir={profile}", "--window-size=1280,1000", "--hide-scrollbars",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "about:blank"]
    if os.geteuid() == 0:
        argv.insert(1, "--no-sandbox")  # chromium refuses to run as root with its sandbox
    proc = Proc(argv, tmp_path, name="chromium")
    client = None
    try:
        wait_until(lambda: _devtools_port(profile, proc), timeout=60,
                   what="chromium's DevToolsActivePort")
        port = _devtools_port(profile, proc)
        targets = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=30).json()
        page = next(t for t in targets if t["type"] == "page")
        client = DevTools(page["webSocketDebuggerUrl"])
        yield client
    finally:
        if client is not None:
            client.close()
        proc.stop()  # TERM, then KILL by pid whatever is left in its process group


def rows(cdp: DevTools) -> list[dict]:
    """The server rows on the page now ([] while it is loading)."""
    try:
        return cdp.js(ROWS_JS) or []
    except ProcError:  # the document is being replaced: not an answer yet
        return []


def health(cdp: DevTools) -> dict:
    return {(r["pool"], r["server"]): r["health"] for r in rows(cdp)}


def served(b) -> int:
    """Requests for / that reached the backend (its /healthz probes are not traffic)."""
    return b.stats()["by_path"].get("/", 0)


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR; AssertionError when it is no PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    return struct.unpack(">II", data[16:24])


def test_status_page_follows_the_daemon_without_reloading(site, browser, tmp_path):
    fp, ports, aport, pools = site
    cdp = browser
    every = {(name, b.addr) for name, bs in pools.items() for b in bs}
    cdp.call("Emulation.setDeviceMetricsOverride", width=VIEW[0], height=VIEW[1],
             deviceScaleFactor=1, mobile=False)
    cdp.call("Page.navigate", url=f"http://127.0.0.1:{aport}/")
    wait_until(lambda: health(cdp) == dict.fromkeys(every, "up"), timeout=30,
               what="every pool and server shown, all up")
    first = cdp.js(PAGE_JS)
    assert first["navigations"] == 1

    # Traffic through both listeners: the page counts what each backend served.
    for name, port in ports.items():
        for _ in range(12):
            r = requests.get(f"http://127.0.0.1:{port}/", headers={"Connection": "close"}, timeout=30)
            assert r.status_code == 200, r.text
    expected = {(name, b.addr): served(b) for name, bs in pools.items() for b in bs}
    assert sum(expected.values()) >= 24
    wait_until(lambda: {(r["pool"], r["server"]): r["requests"] for r in rows(cdp)} == expected,
               timeout=30, what=f"the page's request counts to be {expected}")

    # A backend dies: the health checks take it down, the page follows on its own.
    victim = pools["api"][1]
    victim.stop()
    wait_until(lambda: health(cdp) == {**dict.fromkeys(every, "up"), ("api", victim.addr): "down"},
               timeout=30, what=f"the page to show {victim.addr} down")
    later = cdp.js(PAGE_JS)
    assert later["loadId"] == first["loadId"] and later["timeOrigin"] == first["timeOrigin"]
    assert later["navigations"] == 1 and later["polls"] > first["polls"]

    # The elements an operator reads, then the screenshot of them.
    dom = cdp.js("""({
        master: document.getElementById("master-pid").textContent,
        workers: document.getElementById("workers").textContent,
        listeners: Array.from(document.querySelectorAll("#listeners tr[data-listener]"),
                              r => r.dataset.listener),
        pools: Array.from(document.querySelectorAll("section.pool"), s => s.dataset.pool),
        rpsLines: document.querySelectorAll("#chart-rps svg path.line").length,
        latencyChart: document.querySelector("#chart-latency svg") !== null,
        codes: Array.from(document.querySelectorAll("#codes .code"), c => c.dataset.code),
        down: document.querySelector('tr.server[data-state="down"] .badge.down') !== null,
        staleHidden: document.getElementById("stale").hidden})""")
    # rpsLines: all requests and 5xx, drawn once two polls have given a rate.
    assert dom == {"master": str(fp.pid), "workers": "4", "listeners": ["web", "api"],
                   "pools": ["web", "api"], "rpsLines": 2, "latencyChart": True,
                   "codes": ["1xx", "2xx", "3xx", "4xx", "5xx"], "down": True,
                   "staleHidden": True}
    shot = base64.b64decode(cdp.call("Page.captureScreenshot", format="png")["data"])
    path = tmp_path / "status-page.png"
    path.write_bytes(shot)
    width, height = png_size(shot)
    assert (width, height) == VIEW and len(shot) > 20_000, (width, height, len(shot))

    # The daemon goes away: a visible banner, and the last data stays on screen.
    fp.stop()
    wait_until(lambda: cdp.js('!document.getElementById("stale").hidden'), timeout=30,
               what="the stale banner")
    assert "unreachable" in cdp.js('document.getElementById("stale").textContent')
    assert set(health(cdp)) == every
    assert cdp.js(PAGE_JS)["loadId"] == first["loadId"]


def test_a_server_out_by_passive_checks_is_never_shown_a_green_up(forkproxy_factory,
                                                                  backend_factory, browser):
    # Up by its active checks (none here: up from the start) but out after a
    # failed request (max_fails 1, fail_status): the health badge says "out".
    bs = [backend_factory(f"b{i}") for i in (1, 2, 3)]
    port, aport = free_port(), free_port()
    forkproxy_factory(one_pool(port, [b.addr for b in bs], "fail_status = [500]"),
                      server={"workers": 1, "admin": f"127.0.0.1:{aport}"})
    browser.call("Page.navigate", url=f"http://127.0.0.1:{aport}/")
    wait_until(lambda: len(rows(browser)) == 3, timeout=30, what="the three server rows")
    r = requests.get(f"http://127.0.0.1:{port}/status/500", timeout=30)
    victim = next(b for b in bs if b.name == r.headers["X-Backend"])
    badges = ('Object.fromEntries(Array.from(document.querySelectorAll("tr.server"), '
              'r => [r.dataset.server, r.querySelector("td.health .badge").textContent]))')
    wait_until(lambda: browser.js(badges) == {b.addr: "out" if b is victim else "up" for b in bs},
               timeout=30, what=f"{victim.addr} shown out, the others up")


def test_a_fleet_limit_and_table_without_memcached_are_shown_as_each_nodes_own(
        forkproxy_factory, backend_factory, browser):
    # The page says what forkproxyctl status says: a fleet rate limit or sticky
    # table with no memcached to share it applies on each node (worker) alone.
    b = backend_factory("b1")
    port, aport = free_port(), free_port()
    forkproxy_factory(one_pool(port, [b.addr], 'sticky = { key = "ip", scope = "fleet" }',
                               'rate_limit = { rate = "50r/s", scope = "fleet" }'),
                      server={"workers": 1, "admin": f"127.0.0.1:{aport}"})
    browser.call("Page.navigate", url=f"http://127.0.0.1:{aport}/")
    items = ('Array.from(document.querySelectorAll("#shared li"), '
             'li => [li.dataset.shared, li.textContent])')
    wait_until(lambda: len(browser.js(items) or []) == 2, timeout=30, what="the two shared items")
    got = browser.js(items)
    assert [shared for shared, _ in got] == ["no", "no"]
    assert got[0][1].startswith("rate limit of route 0: node limit (no cache.servers")
    assert got[1][1].startswith("sticky table of pool web: worker tables (no cache.servers")
