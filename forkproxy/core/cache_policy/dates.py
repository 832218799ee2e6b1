"""HTTP-dates (RFC 9110 5.6.7): parse the three forms, format IMF-fixdate."""

from __future__ import annotations

import calendar
import datetime
import re
from email.utils import formatdate
from functools import lru_cache


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_M = "|".join(_MONTHS)
_IMF = re.compile(r"(?:%s), (\d\d) (%s) (\d{4}) (\d\d):(\d\d):(\d\d) GMT" % ("|".join(_DAYS), _M), re.ASCII)
_RFC850 = re.compile(r"(?:%s), (\d\d)-(%s)-(\d\d) (\d\d):(\d\d):(\d\d) GMT" % ("|".join(_LONG_DAYS), _M), re.ASCII)
_ASCTIME = re.compile(r"(?:%s) (%s) ( \d|\d\d) (\d\d):(\d\d):(\d\d) (\d{4})" % ("|".join(_DAYS), _M), re.ASCII)


def parse_http_date(value: str, now: float | None = None) -> float | None:
    """Parse an HTTP-date (RFC 9110 5.6.7): IMF-fixdate, rfc850 or asctime.

    Case-sensitive, surrounding whitespace ignored; ``None`` when invalid
    (including impossible dates such as 31 Feb).  An rfc850 two-digit year
    more than 50 years after ``now`` is moved back a century; without
    ``now``, 70-99 mean 19xx and 00-69 mean 20xx.
    """
    value = value.strip(" \t")
    if _IMF.fullmatch(value):  # the usual form, and its value does not depend on now
        return _parse_imf(value)
    return _parse_date(value, now)


@lru_cache(maxsize=1024)
def _parse_imf(value: str) -> float | None:
    return _parse_date(value, None)


def _parse_date(value: str, now: float | None) -> float | None:
    if m := _IMF.fullmatch(value):
        day, mon, year, hh, mm, ss = m.groups()
        year = int(year)
    elif m := _RFC850.fullmatch(value):
        day, mon, yy, hh, mm, ss = m.groups()
        if now is None:
            year = int(yy) + (1900 if int(yy) >= 70 else 2000)
        else:
            this_year = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).year
            year = this_year - this_year % 100 + int(yy)
            if year > this_year + 50:
                year -= 100
    elif m := _ASCTIME.fullmatch(value):
        mon, day, hh, mm, ss, year = m.groups()
        year = int(year)
    else:
        return None
    hh, mm, ss = int(hh), int(mm), int(ss)
    if hh > 23 or mm > 59 or ss > 60:
        return None
    try:
        datetime.date(year, _MONTHS.index(mon) + 1, int(day))
    except ValueError:
        return None
    return float(calendar.timegm((year, _MONTHS.index(mon) + 1, int(day), hh, mm, ss)))


def format_http_date(t: float) -> str:
    """IMF-fixdate for epoch seconds ``t``."""
    return formatdate(t, usegmt=True)
