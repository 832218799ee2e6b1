"""Access rules: ACL order, method lists, deny rules."""

import pytest
from hypothesis import given, strategies as st

from forkproxy.core.access import DenyRule, Methods, compile_acl, first_denial

ACL = compile_acl([
    ("deny", "10.0.0.5"),
    ("allow", "10.0.0.0/8"),
    ("allow", "2001:db8::/32"),
    ("deny", "all"),
])


@pytest.mark.parametrize("ip, ok, rule", [
    ("10.0.0.5", False, 0),          # first match wins: the deny before the allow
    ("10.0.0.6", True, 1),
    ("10.255.1.2", True, 1),
    ("11.0.0.1", False, 3),          # falls to "deny all"
    ("::ffff:10.0.0.6", True, 1),    # IPv4-mapped is matched as IPv4
    ("::ffff:10.0.0.5", False, 0),
    ("2001:db8::1", True, 2),
    ("2001:db9::1", False, 3),
    ("", False, 3),                  # not an IP: only "all" applies
    ("unix:/run/x", False, 3),
])
def test_acl_first_match_wins(ip, ok, rule):
    assert ACL.permits(ip) is ok
    assert ACL.deciding(ip) == rule  # the entry the error log names


def test_acl_no_entry_matches():
    acl = compile_acl([("deny", "10.0.0.0/8")])
    assert acl.deciding("192.0.2.1") is None and acl.permits("192.0.2.1")
    assert acl.deciding("unix") is None and acl.permits("unix")


def test_no_match_permits_as_nginx():
    acl = compile_acl([("allow", "192.168.0.0/16")])
    assert acl.permits("8.8.8.8")
    assert compile_acl([]).permits("8.8.8.8")
    assert compile_acl([("deny", "8.8.8.0/24")]).permits("8.8.9.1")
    assert not compile_acl([("deny", "8.8.8.0/24")]).permits("8.8.8.1")


def test_mapped_rule_is_ipv4_and_order_across_families():
    acl = compile_acl([("deny", "::ffff:192.0.2.0/120"), ("allow", "all")])
    assert not acl.permits("192.0.2.7")
    assert acl.permits("192.0.3.7")
    acl = compile_acl([("allow", "::/0"), ("deny", "all")])
    assert acl.permits("::1") and not acl.permits("127.0.0.1")


@pytest.mark.parametrize("entry", [
    ("allow", "10.0.0.1/8"),      # host bits set
    ("allow", "10.0.0.0/33"),
    ("allow", "example.com"),
    ("permit", "10.0.0.0/8"),
])
def test_acl_rejects_bad_entries(entry):
    with pytest.raises(ValueError):
        compile_acl([entry])


@given(st.ip_addresses(), st.lists(st.tuples(st.sampled_from(["allow", "deny"]),
                                             st.ip_addresses()), max_size=6))
def test_acl_matches_a_naive_reference(ip, rules):
    entries = [(a, str(r)) for a, r in rules]
    expect = True
    for action, r in rules:
        a, b = ip, r
        if a.version == 6 and a.ipv4_mapped:
            a = a.ipv4_mapped
        if b.version == 6 and b.ipv4_mapped:
            b = b.ipv4_mapped
        if a == b:
            expect = action == "allow"
            break
    assert compile_acl(entries).permits(str(ip)) is expect


# -- methods -------------------------------------------------------------------


@pytest.mark.parametrize("names, method, allow", [
    (["GET"], "GET", None),
    (["GET"], "HEAD", None),              # GET implies HEAD, as limit_except
    (["GET"], "POST", "GET, HEAD"),
    (["get", "post"], "POST", None),      # config names are upper-cased
    (["get", "post"], "post", "GET, HEAD, POST"),  # request methods are case-sensitive
    (["POST", "PUT", "POST"], "DELETE", "POST, PUT"),
    (["PURGE"], "PURGE", None),
])
def test_methods(names, method, allow):
    assert Methods(names).check(method) == allow


@pytest.mark.parametrize("names", [[], ["GE T"], ["GET\r\n"]])
def test_methods_rejects(names):
    with pytest.raises(ValueError):
        Methods(names)


# -- deny rules ------------------------------------------------------------------

RULES = [
    DenyRule(path="/admin"),
    DenyRule(path_regex=r"\.(git|svn)/", status=404),
    DenyRule(query_regex=r"(^|&)debug=1(&|$)", status=400),
    DenyRule(header="x-bad"),
    DenyRule(header="user-agent", header_regex=r"(?i)sqlmap|nikto", status=429),
    DenyRule(methods=frozenset({"DELETE"}), path="/api/", status=405),
]


@pytest.mark.parametrize("method, path, query, headers, status", [
    ("GET", "/admin/x", "", [], 403),
    ("GET", "/administrator", "", [], 403),   # a plain prefix
    ("GET", "/a/.git/config", "", [], 404),
    ("GET", "/x", "a=1&debug=1", [], 400),
    ("GET", "/x", "debug=10", [], None),
    ("GET", "/x", "", [("x-bad", "")], 403),   # presence, even empty
    ("GET", "/x", "", [("user-agent", "curl"), ("user-agent", "SQLMap/1.0")], 429),
    ("GET", "/x", "", [("user-agent", "curl/8")], None),
    ("DELETE", "/api/v1", "", [], 405),
    ("GET", "/api/v1", "", [], None),
    ("GET", "/admin", "debug=1", [("x-bad", "1")], 403),  # order: the first rule wins
    ("GET", "/", None, [], None),
])
def test_first_denial(method, path, query, headers, status):
    n = first_denial(RULES, method, path, query, headers)
    assert (None if n is None else RULES[n].status) == status


def test_all_conditions_of_a_rule_must_hold():
    rule = DenyRule(path="/upload", header="content-type", header_regex="^text/")
    assert first_denial([rule], "POST", "/upload", "", [("content-type", "text/html")]) == 0
    assert first_denial([rule], "POST", "/upload", "", [("content-type", "image/png")]) is None
    assert first_denial([rule], "POST", "/other", "", [("content-type", "text/html")]) is None


@pytest.mark.parametrize("kwargs", [
    {},                                          # no condition
    {"path": "/x", "status": 302},
    {"path": "/x", "status": 600},
    {"header_regex": "x"},                       # without header
    {"header": "bad name"},
    {"path_regex": r"(a)\1"},                    # RE2 has no backreferences
    {"query_regex": "["},                        # invalid
])
def test_deny_rule_rejects(kwargs):
    with pytest.raises(ValueError):
        DenyRule(**kwargs)
