"""forkproxyctl's text for people: the status table, the cache's line, what a
reload, a purge and an explain did.  Pure functions of the documents the
commands build (``--json`` prints those documents instead).
"""

from __future__ import annotations


def format_age(seconds: float | None) -> str:
    """A short human age: ``"3s"``, ``"2m"``, ``"1h"``, ``"4d"`` (truncated); ``"-"`` if None.

    Negative ages (a clock step backwards) read as ``"0s"``.
    """
    if seconds is None:
        return "-"
    s = int(max(0.0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


_COLUMNS = ("POOL", "SERVER", "HEALTH", "ADMIN", "CHECK", "INFLIGHT", "SINCE", "WHY")


def _row_cells(pool: str, s: dict, now: float) -> list[str]:
    health = (s["health"] or "unknown").upper()
    admin = s["admin"] + (f" w={s['weight']}" if s["weight"] else "")
    if s["last_check"] is None:
        check = "-"
    else:
        ms = s["latency"] * 1000
        check = f"{s['last_result'] or '?'} " + (f"{ms:.1f}ms" if ms < 10 else f"{ms:.0f}ms")
    # "Since" and "why" describe the most recent change, health or admin.
    when, why = s["last_change"], s["reason"] or ""
    if s["admin_changed"] and (when is None or s["admin_changed"] >= when):
        when = s["admin_changed"]
        why = f"{s['admin']} by {s['admin_by'] or '?'}"
    n = s["passive_failures"]
    if n:  # out of rotation, or kept in it (a pool of one, max_ejection_percent)
        why = (f"{n} failed request{'s' if n != 1 else ''} (max_fails"
               f"{'' if s['passive_out'] else ', kept in rotation'})" + (f"; {why}" if why else ""))
    if s["passive_out"] and s["health"] == "up":
        health = "OUT"  # up by its active checks, out by passive ones
    if s.get("ejected") and s["health"] != "down":
        health = "EJECTED"
        left = format_age(s["ejected_until"] - now)
        why = f"ejected (outlier: {s['ejection_reason']}) for {left}" + (f"; {why}" if why else "")
    addr = s["addr"]
    if s.get("origin", "config") != "config":  # came at run time: say how
        addr += f" ({s['origin']})"
    if s.get("member") == "removing":
        admin = "removing"
    return [pool, addr, health, admin, check, str(s["inflight"]),
            format_age(None if when is None else now - when), why or "-"]


def render_status(doc: dict, now: float, source: str) -> str:
    """The human table for a status document: a header line naming ``source``
    (where it was read), a line on the cache when the document has one (the
    admin endpoint's), then one line per server."""
    checker = doc["checker_pid"]
    lines = [f"{source}, generation {doc['generation']}, "
             + (f"checker pid {checker}" if checker else "no active checker")]
    if doc.get("cache"):
        lines.append(render_cache(doc["cache"]))
    for rl in doc.get("rate_limits") or ():
        lines.append(f"rate limit of route {rl['route']}: "
                     + ("shared by the fleet (memcached)" if rl["shared"]
                        else f"NODE LIMIT ({rl['why']})"))
    for st in doc.get("sticky_tables") or ():
        lines.append(f"sticky table of pool {st['pool']}: "
                     + ("shared by the fleet (memcached)" if st["shared"]
                        else f"WORKER TABLES ({st['why']})"))
    rows = [list(_COLUMNS)]
    for pool in doc["pools"]:
        for s in pool["servers"]:
            rows.append(_row_cells(pool["name"], s, now))
    widths = [max(len(r[i]) for r in rows) for i in range(len(_COLUMNS))]
    for r in rows:
        # The last column is free text: no padding after it.
        lines.append("  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1])
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def render_cache(cache: dict) -> str:
    """One line: the store, whether each memcached server answers, the answering
    worker's breaker, and the hit ratio (overall, then per cached route)."""
    if cache["backend"] == "memcached":
        where = "memcached " + ", ".join(
            f"{s['addr']} {'up' if s['reachable'] else 'NOT ANSWERING'}" for s in cache["servers"])
        where += f"; breaker {cache['breaker']} (worker {cache['worker_pid']})"
    elif cache["backend"] == "shared":
        where = "embedded, shared by the workers"
    else:
        where = "in-process, per worker"
    routes = ", ".join(f"route {r['route']} {_ratio(r['hit_ratio'])}" for r in cache["routes"])
    return f"cache {where}; hit ratio {_ratio(cache['hit_ratio'])}" + (f" ({routes})" if routes else "")


def _reload_text(r: dict) -> str:
    how = "through the admin endpoint" if r["via"] == "admin" else f"SIGHUP to pid {r['master_pid']}"
    if r["state"] == "requested":
        return f"reload requested ({how}); generation {r['generation_before']} serving"
    if r["state"] == "serving":
        return f"reloaded ({how}): generation {r['generation_before']} -> {r['generation']}"
    return "\n".join([f"reload {r['state']} ({how}): {e}" for e in r["errors"]]
                     + [f"generation {r['generation_before']} still serving"])


def _purge_text(r: dict) -> str:
    what = r["url"] if "url" in r else f"every URL of {r['host']}"
    text = f"{what}: {'purged' if r['purged'] else 'not in the cache'}"
    if not r["shared"]:
        text += " (in-process cache: in the worker that answered only)"
    return text


def render_explain(doc: dict) -> str:
    """A few aligned lines: what forkproxy would do with the request, in order."""
    req, lc = doc["request"], doc["listener"]
    lines = [("listener", f"{lc['name']} {lc['bind']} ({lc['proto']})"),
             ("request", f"{req['method']} {req['target']}  Host {req['host']}, "
                         f"client {req['client']}")]
    route = doc["route"]
    if route is not None:
        where = " ".join(f"{k}={route[k]}" for k in ("host", "path", "path_regex") if route[k])
        lines.append(("route", f"#{route['id']} {where or '(default)'} -> pool {route['pool']}"))
    split = doc.get("split")
    if split is not None:
        weights = ", ".join(f"{p['pool']} {p['weight']}" for p in split["pools"])
        how = (f"by {split['by']}, key {split['key']!r}" if split["how"] == "hash"
               else "random per request: this one drew")
        lines.append(("split", f"{weights} ({how} -> {split['pool']})"))
    if doc["upstream_target"] is not None and doc["upstream_target"] != req["target"]:
        lines.append(("rewritten", doc["upstream_target"]))
    if doc["rate_limit"] is not None:
        rl = doc["rate_limit"]
        lines.append(("rate limit", f"{rl['rate']} burst {rl['burst']}, bucket {rl['key']!r} "
                                    "(not consulted by explain)"))
    if doc.get("mirror") is not None:
        m = doc["mirror"]
        lines.append(("mirror", f"{m['percent']}% copied to pool {m['pool']} (answers thrown "
                                f"away; queue {m['queue']}, bodies up to {m['max_body']} bytes, "
                                f"timeout {m['timeout']:g}s)"))
    if doc["refused"] is not None:
        lines.append(("refused", f"{doc['refused']['status']} {doc['refused']['why']}"))
    if doc["redirect"] is not None:
        lines.append(("redirect", f"{doc['redirect']['status']} -> {doc['redirect']['location']}"))
    if doc["cache"] is not None:
        c = doc["cache"]
        ns = c.get("namespace")
        lines.append(("cache", " ".join(filter(None, [c["result"], c["key"],
                                                      f"[{ns}]" if ns else "",
                                                      f"({c['reason']})" if c["reason"] else ""]))))
    if doc["pool"] is not None:
        p = doc["pool"]
        lines.append(("pool", f"{p['name']} {p['balance']}"
                              + (f", key {p['key']!r}" if p["key"] is not None else "")))
    if doc["sticky"] is not None and "table" in doc["sticky"]:
        st = doc["sticky"]
        lines.append(("sticky", f"{st['table']} table by {st['key']}: "
                                + (f"{st['value']} -> {st['server'] or 'no entry'}"
                                   if st["value"] else "the request has no key")))
    elif doc["sticky"] is not None:
        st = doc["sticky"]
        lines.append(("sticky", f"cookie {st['cookie']}: "
                                + (f"names {st['server'] or 'no server of this pool'}"
                                   if st["token"] else "not sent")))
    if doc["server"] is not None:
        lines.append(("server", f"{doc['server']['addr']} (by {doc['server']['by']})"))
    elif doc["why_no_server"] is not None:
        lines.append(("server", doc["why_no_server"]))
    width = max(len(label) for label, _ in lines)
    return "".join(f"{label.ljust(width)}  {text}\n" for label, text in lines)
