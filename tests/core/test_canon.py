"""core.canon: one canonical path for every decision (issue 16, item 1).

A table of spellings, what each canonicalises to (or why it is refused),
and what every kind of path rule decides on it; then properties: the
canonical form is a fixed point, it has the shape the contract promises,
every rule decides the same on a path and on its canonical form, and a
rule on the canonical path agrees with what a server that resolves the
raw path itself (decoding everything, merging slashes, removing dots)
would serve.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given, settings, strategies as st

from forkproxy.core.access import DenyRule, compile_acl, first_denial
from forkproxy.core.canon import PathRefused, canonical_path
from forkproxy.core.rewrite import compile_rewrites
from forkproxy.core.routing import Router, RouteSpec

REFUSED = "400"

# (raw path, canonical path with the defaults, or REFUSED)
TABLE = [
    # already canonical: the very same object comes back (see test_canonical_is_returned_as_is)
    ("/", "/"),
    ("/admin/x", "/admin/x"),
    ("/a;b=1/c", "/a;b=1/c"),                 # parameters kept as received
    ("/a:b@c!$&'()*+,=/d", "/a:b@c!$&'()*+,=/d"),
    ("/.well-known/acme", "/.well-known/acme"),
    ("/a.b/..c/c..", "/a.b/..c/c.."),          # dots inside a segment are no dot segment
    # the six deny bypasses of the issue
    ("//admin/x", "/admin/x"),
    ("/./admin/x", "/admin/x"),
    ("/%61dmin/x", "/admin/x"),
    ("/x/../admin/x", "/admin/x"),
    ("/%2e/admin/x", "/admin/x"),
    ("/admin%2fx", REFUSED),
    # the access-route and prefix escapes
    ("//private/x", "/private/x"),
    ("/%70rivate/x", "/private/x"),
    ("/public/../admin/x", "/admin/x"),
    # slashes
    ("///admin///x//", "/admin/x/"),
    ("/admin//", "/admin/"),
    # dot segments (RFC 3986 5.2.4)
    ("/..", "/"),
    ("/../..", "/"),
    ("/../../admin/x", "/admin/x"),
    ("/a/b/..", "/a/"),
    ("/a/.", "/a/"),
    ("/a/./b/./c", "/a/b/c"),
    ("/a/b/../../c", "/c"),
    ("/a//../b", "/b"),                         # merged first, as nginx
    ("/.", "/"),
    ("/public/..", "/"),
    # encoded dots, any case
    ("/%2e%2E/admin/x", "/admin/x"),
    ("/%2E%2e/admin/x", "/admin/x"),
    ("/x/.%2e/admin/x", "/admin/x"),
    ("/x/%2e./admin/x", "/admin/x"),
    ("/x/%2E/admin/x", "/x/admin/x"),
    # unreserved characters decoded, any case; the rest uppercased, kept encoded
    ("/%41%42%43%7e%5f%2d", "/ABC~_-"),
    ("/%61%64%6D%69%6E/x", "/admin/x"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/caf%C3%a9", "/caf%C3%A9"),
    ("/%e2%82%ac/%F0%9F%98%80", "/%E2%82%AC/%F0%9F%98%80"),
    ("/a%20b%3f%23", "/a%20b%3F%23"),
    ("/%25", "/%25"),
    ("/%252e%252e/admin", "/%252e%252e/admin"),  # decoded once: %25 stays, no second pass
    ("/%3b/..;x", REFUSED),
    ("/a%0d%0aSet-Cookie:x", "/a%0D%0ASet-Cookie:x"),
    # refused: no rule can judge these
    ("/%2F", REFUSED),
    ("/a%2Fb", REFUSED),
    ("/a%5cb", REFUSED),
    ("/a%5Cb", REFUSED),
    ("/a\\b", REFUSED),
    ("/..\\admin", REFUSED),
    ("/%00", REFUSED),
    ("/a%00.html", REFUSED),
    ("/%zz", REFUSED),
    ("/%2", REFUSED),
    ("/%", REFUSED),
    ("/%u0061dmin", REFUSED),                   # IIS's %uXXXX
    ("/%%32%65", REFUSED),
    ("/public/..;/admin/x", REFUSED),           # Tomcat reads ..;x as ..
    ("/.;/admin/x", REFUSED),
    ("/%2e%2e;/admin/x", REFUSED),
    # very long
    ("/a" * 4000, "/a" * 4000),
    ("/a" * 2000 + "/.." * 2000 + "/admin", "/admin"),
    ("/" * 5000 + "admin", "/admin"),
    ("/%61" * 2000, "/a" * 2000),
]


def canon_or_refused(path: str, **kw) -> str:
    try:
        return canonical_path(path, **kw)
    except PathRefused as exc:
        assert exc.status == 400 and exc.reason
        return REFUSED


def test_the_table_is_big_enough():
    assert len(TABLE) >= 40
    assert len({p for p, _ in TABLE}) == len(TABLE)


@pytest.mark.parametrize("raw, canon", TABLE, ids=[p[:40] for p, _ in TABLE])
def test_canonical_table(raw, canon):
    assert canon_or_refused(raw) == canon


@pytest.mark.parametrize("raw", ["/", "/admin/x", "/a;b=1/c", "/.well-known/acme", "/a" * 4000])
def test_canonical_is_returned_as_is(raw):
    assert canonical_path(raw) is raw


@pytest.mark.parametrize("raw, reason", [
    ("/admin%2fx", "encoded slash (%2f)"),
    ("/a%5Cb", "encoded backslash (%5C)"),
    ("/a\\b", "backslash"),
    ("/%00", "NUL"),
    ("/%zz", "malformed percent-encoding"),
    ("/x/..;/", "dot segment with parameters"),
])
def test_refusals_say_why(raw, reason):
    with pytest.raises(PathRefused, match=re.escape(reason)):
        canonical_path(raw)


@pytest.mark.parametrize("raw, canon", [
    ("//admin/x", "//admin/x"),
    ("/a//../b", "/a/b"),                       # RFC 3986 alone: the empty segment goes
    ("/a//b/..", "/a//"),
    ("/x/../admin//x", "/admin//x"),
])
def test_without_merge_slashes(raw, canon):
    assert canonical_path(raw, merge_slashes=False) == canon


@pytest.mark.parametrize("raw, canon", [
    ("/admin%2fx", "/admin%2Fx"),
    ("/a%5cb", "/a%5Cb"),
    ("/a\\b", "/a%5Cb"),
    ("/x/..%2f..%2fadmin", "/x/..%2F..%2Fadmin"),  # one segment: never a separator
    ("/a%2F/../b", "/b"),
])
def test_encoded_slashes_pass(raw, canon):
    assert canonical_path(raw, encoded_slashes="pass") == canon
    assert canonical_path(canon, encoded_slashes="pass") == canon
    with pytest.raises(PathRefused):
        canonical_path(raw)


# -- every kind of path rule, on core objects -----------------------------------

ROUTER = Router([
    RouteSpec(index=0, pool="private", path="/private/"),       # access = ["deny all"]
    RouteSpec(index=1, pool="secret", path_regex="^/secret(/|$)"),
    RouteSpec(index=2, pool="public", path="/public/"),
    RouteSpec(index=3, pool="default"),
])
ACCESS = {0: compile_acl([("deny", "all")])}  # the private route's access list
DENY = (DenyRule(path="/admin/"), DenyRule(path_regex=r"^/[^/]+/\.git(/|$)"))
PUBLIC = compile_rewrites(strip_prefix="/public", add_prefix="/sandbox")
LEGACY = compile_rewrites(rewrite=[("^/old/(.*)$", "/new/$1")])
SLASH = compile_rewrites(redirect=("$uri/", 302))


def decisions(path: str) -> tuple:
    """What each kind of rule decides on ``path``: route, its access list, deny, the
    two rewrites, the redirect."""
    route = ROUTER.match("web", "h", path).index
    return (route,
            ACCESS[route].permits("192.0.2.1") if route in ACCESS else True,
            first_denial(DENY, "GET", path, "", ()),
            PUBLIC.apply(path, "", {}),
            LEGACY.apply(path, "", {}),
            SLASH.apply(path, "", {}).location)


def decide(raw: str, **kw):
    """The request path's decisions: on the canonical path, or the 400."""
    canon = canon_or_refused(raw, **kw)
    return REFUSED if canon == REFUSED else decisions(canon)


@pytest.mark.parametrize("raw", ["//admin/x", "/./admin/x", "/%61dmin/x", "/x/../admin/x",
                                 "/%2e/admin/x", "/%2E%2e/admin/x", "/x/.%2e/admin/x"])
def test_deny_sees_every_spelling(raw):
    assert first_denial(DENY, "GET", raw, "", ()) is None  # the raw path fooled the rule
    assert decide(raw)[2] == 0


@pytest.mark.parametrize("raw", ["//private/x", "/%70rivate/x", "/./private/x",
                                 "/x/../private/x", "/%2e%2e/private/x"])
def test_a_path_scoped_route_sees_every_spelling(raw):
    assert ROUTER.match("web", "h", raw).index == 3
    assert decide(raw)[:2] == (0, False)  # the private route, and its "deny all"


@pytest.mark.parametrize("raw", ["//secret", "/%73ecret/x", "/a/../secret/"])
def test_a_regex_route_sees_every_spelling(raw):
    assert decide(raw)[0] == 1


@pytest.mark.parametrize("raw", ["/public/../admin/x", "/public/%2e%2e/admin/x",
                                 "/public/./../admin/x", "/public/x/../../admin/x"])
def test_strip_and_add_prefix_cannot_be_escaped(raw):
    raw_result = PUBLIC.apply(raw, "", {})[0]
    assert raw_result.startswith("/sandbox/")   # looks confined, but a server resolves it
    assert not resolve(raw_result).startswith("/sandbox/")
    route, _, denied, _, _, _ = decide(raw)
    assert (route, denied) == (3, 0)  # not the public route at all, and denied


@pytest.mark.parametrize("raw", ["/public/x", "/public/a/./b", "/public/a/../b"])
def test_strip_and_add_prefix_keep_inside(raw):
    route, _, _, (path, _), _, _ = decide(raw)
    assert route == 2 and path.startswith("/sandbox/")


def test_dotgit_regex_sees_encoded_dots():
    assert decide("/repo/%2egit/config")[2] == 1
    assert decide("/repo/x/../.git")[2] == 1


# -- properties --------------------------------------------------------------------

SEGMENTS = [".", "..", "%2e", "%2E%2e", ".%2e", "admin", "%61dmin", "ADMIN", "private",
            "%70rivate", "public", "x", "x;p=1", "%c3%a9", "%25", "%7E", "old", "secret",
            ".git", "%2egit", ""]
BAD = ["%2f", "%2F", "%5c", "\\", "%00", "%zz", "%2", "..;", ".;x"]


def _paths(segments):
    """Paths made of these segments, one or two slashes before each, maybe one after."""
    parts = st.tuples(st.sampled_from(["/", "/", "/", "//"]), st.sampled_from(segments))
    return st.tuples(st.lists(parts, max_size=8), st.sampled_from(["", "/"])).map(
        lambda t: ("".join(a + b for a, b in t[0]) + t[1]) or "/")


paths = _paths(SEGMENTS)
any_paths = _paths(SEGMENTS + BAD)
ascii_paths = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e, exclude_characters="?"),
                      max_size=40).map(lambda s: "/" + s)
policies = st.fixed_dictionaries({"merge_slashes": st.booleans(),
                                  "encoded_slashes": st.sampled_from(["reject", "pass"])})


def _is_canonical_shape(c: str, merge: bool, pass_slashes: bool) -> bool:
    segments = c.split("/")[1:]
    if any(s in (".", "..") or s.startswith((".;", "..;")) for s in segments):
        return False
    if merge and "//" in c:
        return False
    if "\\" in c:
        return False
    for m in re.finditer(r"%(..)?", c):
        hexa = m.group(1)
        if hexa is None or not re.fullmatch(r"[0-9A-F]{2}", hexa):
            return False
        ch = chr(int(hexa, 16))
        if re.fullmatch(r"[A-Za-z0-9._~-]", ch) or ch == "\0":
            return False
        if ch in "/\\" and not pass_slashes:
            return False
    return c.startswith("/")


@settings(max_examples=500)
@given(raw=st.one_of(any_paths, ascii_paths), policy=policies)
def test_canonical_is_a_fixed_point_of_the_promised_shape(raw, policy):
    c = canon_or_refused(raw, **policy)
    if c == REFUSED:
        return
    assert canonical_path(c, **policy) == c
    assert _is_canonical_shape(c, policy["merge_slashes"], policy["encoded_slashes"] == "pass")


@settings(max_examples=500)
@given(raw=st.one_of(any_paths, ascii_paths), policy=policies)
def test_every_decision_on_p_equals_the_decision_on_canonical_p(raw, policy):
    d = decide(raw, **policy)
    if d == REFUSED:
        return
    assert decide(canonical_path(raw, **policy), **policy) == d


def resolve(path: str) -> str:
    """How a server that resolves paths itself reads ``path``: every escape decoded
    (once), slashes merged, dot segments removed by RFC 3986's own loop (5.2.4), a
    second implementation of what core.canon does."""
    inp = re.sub("/+", "/", unquote(path))
    out = ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith("./"):
            inp = inp[2:]
        elif inp.startswith("/./"):
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = inp[3:]
            out = out[:max(out.rfind("/"), 0)]
        elif inp == "/..":
            inp = "/"
            out = out[:max(out.rfind("/"), 0)]
        elif inp in (".", ".."):
            inp = ""
        else:
            j = inp.find("/", 1)
            j = len(inp) if j < 0 else j
            out += inp[:j]
            inp = inp[j:]
    return out


@settings(max_examples=500)
@given(raw=paths)
def test_rules_on_the_canonical_path_agree_with_a_resolving_server(raw):
    """The deny rule and the path-scoped route fire exactly when a server that
    resolves the raw path itself would serve something under their prefix; what
    goes upstream (the canonical path) is the same resource for it; strip_prefix
    + add_prefix keeps it inside /sandbox/."""
    canon = canonical_path(raw)
    served = resolve(raw)
    assert resolve(canon) == served
    route, permitted, denied, (public, _), _, _ = decisions(canon)
    assert (denied == 0) == served.startswith("/admin/")
    assert (route == 0) == (not permitted) == served.startswith("/private/")
    if route == 2:
        assert resolve(public).startswith("/sandbox/")


@given(raw=paths)
def test_redirect_from_uri_stays_on_the_site(raw):
    for merge in (True, False):
        canon = canonical_path(raw, merge_slashes=merge)
        location = SLASH.apply(canon, "", {}).location
        assert location.startswith("/") and location[1:2] not in ("/", "\\")
