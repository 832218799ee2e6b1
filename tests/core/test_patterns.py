"""Configured regexes run on RE2: same answers as Python's re, linear time, clear refusals."""

import re

import pytest
from hypothesis import given, settings, strategies as st

from forkproxy.core.access import DenyRule
from forkproxy.core.patterns import MAX_PATTERN_LENGTH, PatternError, compile_pattern
from forkproxy.core.rewrite import compile_rewrites
from forkproxy.core.routing import RouteSpec, Router

# (pattern, text): patterns written in configurations, on paths, queries and
# header values; RE2 must find the same match with the same groups as re.
SAME = [
    (r"^/api/", "/api/v1"), (r"^/api/", "/x/api/"),
    (r"\.(png|jpe?g)$", "/a/b.jpeg"), (r"\.(png|jpe?g)$", "/a/b.jpeg.txt"),
    (r"^/old/(.*)", "/old/a/b"), (r"^/old/(?P<rest>.*)$", "/old/"),
    (r"^/(?:v1|v2)/users/(\d+)$", "/v2/users/42"), (r"^/(?:v1|v2)/users/(\d+)$", "/v3/users/42"),
    (r"(?i)sqlmap", "Mozilla sqlMAP/1.0"), (r"(?i)^mozilla", "curl/8"),
    (r"(^|&)debug=", "a=1&debug=1"), (r"(^|&)debug=", "nodebug=1"), (r"(^|&)debug=", ""),
    (r"\.(git|env)(/|$)", "/.git/config"), (r"\.(git|env)(/|$)", "/.gitignore"),
    (r"^/(.*)/(.*)/(.*)\.php$", "/a/b/c/d.php"), (r"^/static/[^/]+\.css$", "/static/a.css"),
    (r"(a)|(b)", "b"), (r"(a)?b", "b"), (r"x*", "yyy"), (r"\bfoo\b", "a foo b"),
    (r"[\[]x", "[x"), (r"\s+", "a \t b"), (r"\w+@\w+", "mail me@host now"),
    (r".*a.*b", "xxaxxbxx"), (r"(a|ab)(c|bcd)(d*)", "abcd"), (r"^$", ""),
    (r"\A/x$", "/x"), ('"status":\\s*"ok"', '{"status": "ok"}'),
    # header values are latin-1 text: one code point per byte, as in re
    (r"caf.$", "caf\xe9"), (r"(?i)CAF\xc9", "a caf\xe9"), (r"(.)(\xe9+)(.)", "x\xe9\xe9y"),
]


def spans(m):
    return None if m is None else [m.span(g) for g in range(len(m.groups()) + 1)]


@pytest.mark.parametrize("pattern, text", SAME)
def test_same_answer_as_python_re(pattern, text):
    ours, theirs = compile_pattern(pattern), re.compile(pattern)
    assert ours.groups == theirs.groups and ours.groupindex == dict(theirs.groupindex)
    assert spans(ours.search(text)) == spans(theirs.search(text))
    assert spans(ours.match(text)) == spans(theirs.match(text))
    if (m := ours.search(text)) is not None:
        assert m.group(0) == theirs.search(text).group(0)
        assert m.groups() == theirs.search(text).groups()


@settings(max_examples=300, deadline=None)
@given(st.from_regex(r"[ab.()|*+?^$]{1,8}", fullmatch=True), st.text("ab/", max_size=12))
def test_same_answer_on_random_patterns(pattern, text):
    # Texts are short: Python's re is the reference here, and it may backtrack.
    # Found or not is what routes and deny rules use; where and with which
    # groups may differ for a repeated group that matches empty ("a(|.)+a").
    try:
        theirs = re.compile(pattern)
        ours = compile_pattern(pattern)
    except (re.error, PatternError):
        return
    assert (ours.search(text) is None) == (theirs.search(text) is None), pattern


# What RE2 cannot take, and the words of the reason (shown by forkproxy -t).
REFUSED = [
    (r"(a)\1", "no backreferences"), (r"(?P<q>a)(?P=q)", "no backreferences"),
    (r"(a)?(?(1)b|c)", "no conditionals"),
    (r"(?=a)b", "no lookahead"), (r"(?!a)b", "no lookahead"),
    (r"(?<=a)b", "no lookbehind"), (r"(?<!a)b", "no lookbehind"),
    (r"(?>a+)b", "no atomic groups"), (r"a++", "no possessive"), (r"a*+", "no possessive"),
    (r"/x\Z", r"write \z"), (r"a{1001}", "at most 1000"),
    (r"[", "missing ]"), (r"a{2,1}", "invalid repetition size"), (r"(?x) a", "invalid perl operator"),
    ("x" * (MAX_PATTERN_LENGTH + 1), "longer than"),
]


@pytest.mark.parametrize("pattern, words", REFUSED)
def test_refused_with_the_reason(pattern, words):
    with pytest.raises(PatternError) as e:
        compile_pattern(pattern)
    assert words in e.value.reason and words in str(e.value)
    assert isinstance(e.value, ValueError)  # the config layer's contract


@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(a|a)*$", r"(a|ab)*c", r"^(\w+\s?)*$", r"(.*,){10}",
                                     "x" * MAX_PATTERN_LENGTH])
def test_shapes_that_backtrack_in_re_are_accepted(pattern):
    compile_pattern(pattern)  # RE2 runs them in linear time: nothing to refuse


# Each of these takes Python's re hours or years on the text beside it; the
# test completes only because matching is linear (pytest's timeout catches a
# backtracking engine).
ADVERSARIAL = [
    (r"^/(.*)/(.*)/(.*)\.php$", "/" * 100_000),        # cubic in re
    (r"(a+)+$", "a" * 100_000 + "!"),                  # exponential in re
    (r"^(\w+\s?)*$", "ab " * 30_000 + "!"),
    (r"(.*,){10}x", "," * 50_000),
]


@pytest.mark.parametrize("pattern, text", ADVERSARIAL)
def test_adversarial_inputs_complete(pattern, text):
    assert compile_pattern(pattern).search(text) is None


def test_every_compile_site_uses_re2():
    # route, deny (path, query, header), rewrite: each on the cubic case
    slashes = "/" * 100_000
    router = Router([RouteSpec(0, "php", path_regex=r"^/(.*)/(.*)/(.*)\.php$"), RouteSpec(1, "d")])
    assert router.match("web", None, slashes).pool == "d"
    cubic = r"^/(.*)/(.*)/(.*)\.php$"
    for rule in (DenyRule(path_regex=cubic), DenyRule(query_regex=cubic),
                 DenyRule(header="x", header_regex=cubic)):
        assert not rule.matches("GET", slashes, slashes, [("x", slashes)])
    rw = compile_rewrites(rewrite=[(cubic, "/$1")])
    assert rw.apply(slashes, "", {}) == (slashes, "")
    assert rw.apply("/a/b/c/d.php", "", {}) == ("/a/b", "")


@pytest.mark.parametrize("make", [
    lambda p: Router([RouteSpec(0, "x", path_regex=p)]),
    lambda p: DenyRule(path_regex=p),
    lambda p: DenyRule(query_regex=p),
    lambda p: DenyRule(header="x", header_regex=p),
    lambda p: compile_rewrites(rewrite=[(p, "/x")]),
])
def test_every_compile_site_refuses_what_re2_cannot_do(make):
    with pytest.raises(PatternError, match="no lookbehind"):
        make(r"(?<=/)x")
