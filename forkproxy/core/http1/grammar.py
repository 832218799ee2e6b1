"""The HTTP/1.1 grammar (RFC 9110 5.6, RFC 9112) as compiled patterns.

Heads are decoded as latin-1 once and matched as str: every byte maps to one
code point, so the classes below are byte classes.
"""

import re


_TCHAR = r"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_TOKEN = _TCHAR + "+"
_VCHAR_OBS = r"[\x21-\x7e\x80-\xff]"
# A field value: no leading/trailing OWS inside the group, SP/HTAB allowed
# between visible characters; every other CTL (NUL, CR, LF, DEL...) is out.
_FIELD_VALUE = rf"(?:{_VCHAR_OBS}(?:[\t\x20-\x7e\x80-\xff]*{_VCHAR_OBS})?)?"
_FIELD_LINE = rf"({_TOKEN}):[ \t]*({_FIELD_VALUE})[ \t]*\r\n"

_FIELD_RE = re.compile(_FIELD_LINE)
# Anchored at a line start: with bare CR/LF excluded beforehand, a match
# covers exactly one whole line, so "matches == lines" proves every line valid
# in a single findall pass.
_FIELD_AT_LINE_START_RE = re.compile(r"(?<=\n)" + _FIELD_LINE)
_REQUEST_LINE_RE = re.compile(rf"({_TOKEN}) ([\x21-\x7e]+) HTTP/([0-9])\.([0-9])\r\n")
_STATUS_LINE_RE = re.compile(
    r"HTTP/([0-9])\.([0-9]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?\r\n"
)
_TOKEN_RE = re.compile(_TOKEN)
_DIGITS_RE = re.compile(r"[0-9]+")
_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")

# Host = uri-host [ ":" port ]  (RFC 9110 7.2, RFC 3986 3.2.2)
_REG_NAME = r"(?:[-A-Za-z0-9._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*"
_IP_LITERAL = r"\[[0-9A-Fa-f:.]+\]|\[[vV][0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+\]"
_HOST_RE = re.compile(rf"({_IP_LITERAL}|{_REG_NAME})(?::([0-9]*))?")

# chunk = chunk-size [ chunk-ext ] CRLF;  chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] )
_QUOTED_STRING = r'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*(?:{_TOKEN}|{_QUOTED_STRING}))?)*"
_CHUNK_LINE_RE = re.compile(rf"([0-9A-Fa-f]{{1,16}}){_CHUNK_EXT}\r\n")

# A chunk-size line with a long extension is legal but has to end somewhere.
MAX_CHUNK_LINE = 4096
# Content-Length values beyond this are not a body, they are an attack.
MAX_CONTENT_LENGTH = (1 << 63) - 1
