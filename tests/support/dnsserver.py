"""A small authoritative DNS server over UDP on 127.0.0.1, for discovery tests.

    python dnsserver.py --port PORT --zone ZONE.json

Answers A, AAAA and SRV queries from ZONE.json, read again at every query so
a test changes the records by rewriting the file (``write_zone``)::

    {"ttl": 1,
     "records": {"app.test.": {"A": ["127.0.0.1"], "AAAA": []},
                 "_http._tcp.app.test.": {"SRV": [[priority, weight, port, "target."]]}}}

A name that is not in the file gets NXDOMAIN; ``"fail": true`` at the top
makes every answer SERVFAIL (a DNS outage).  Built on dnspython's message
classes: no root, no system package.  Writes ``ready`` on stdout once bound.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def write_zone(path, records: dict, ttl: int = 1, fail: bool = False) -> None:
    """Replace the zone file atomically (the server never reads half of it)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump({"ttl": ttl, "records": records, "fail": fail}, f)
    os.replace(tmp, path)


def answer(query: dns.message.Message, zone: dict) -> dns.message.Message:
    resp = dns.message.make_response(query)
    resp.flags |= dns.flags.AA
    if zone.get("fail"):
        resp.set_rcode(dns.rcode.SERVFAIL)
        return resp
    q = query.question[0]
    name = q.name.to_text()
    records = zone["records"].get(name)
    if records is None:
        resp.set_rcode(dns.rcode.NXDOMAIN)
        return resp
    kind = dns.rdatatype.to_text(q.rdtype)
    values = records.get(kind, [])
    if values:
        texts = [" ".join(str(v) for v in value) if isinstance(value, list) else value
                 for value in values]
        resp.answer.append(dns.rrset.from_text_list(q.name, zone["ttl"], dns.rdataclass.IN,
                                                    q.rdtype, texts))
    return resp


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--zone", required=True)
    args = ap.parse_args()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", args.port))
    print("ready", flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = dns.message.from_wire(data)
            with open(args.zone) as f:
                zone = json.load(f)
            sock.sendto(answer(query, zone).to_wire(), peer)
        except Exception as exc:  # a test server: say it, keep answering
            print(f"dnsserver: {exc!r}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
