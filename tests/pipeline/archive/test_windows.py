"""Date windows: START/END text, relative ends, order."""
from __future__ import annotations

import datetime as dt

import pytest

from pipeline.archive import choose
from pipeline.archive.windows import WindowError, check_windows, format_window, parse_window
from tests.helpers import stac as sf

BEFORE, AFTER = parse_window(sf.BEFORE), parse_window(sf.AFTER)


@pytest.mark.parametrize("text,message", [
    ("2023-06-01", "is not a date range; write START/END"),
    ("2023-06-01/2023-06-30/2023-07-01", "is not a date range"),
    ("2023-06-30/2023-06-01", "ends before it starts"),
    ("2023-13-01/2023-12-31", "holds a value that is not a date"),
    ("../2023-06-30", "is open-ended"),
])
def test_bad_windows_are_one_paragraph(text, message):
    with pytest.raises(WindowError, match=message) as exc:
        parse_window(text, "--before")
    assert "--before" in str(exc.value) and "\n" not in str(exc.value)


def test_windows():
    start, end = parse_window("2023-06-01/2023-06-30")
    assert start == dt.datetime(2023, 6, 1, tzinfo=dt.timezone.utc) and end.date() == dt.date(2023, 6, 30) and end.hour == 23
    assert parse_window("2023-06-01T10:00:00Z/2023-06-01T12:00:00+02:00")[1] == dt.datetime(2023, 6, 1, 10, tzinfo=dt.timezone.utc)
    check_windows(BEFORE, AFTER)
    for before, after in [(AFTER, BEFORE), (parse_window("2023-06-01/2024-06-01"), AFTER)]:
        with pytest.raises(WindowError, match="does not end before the AFTER window"):
            check_windows(before, after)
    with pytest.raises(WindowError):
        choose.choose_pairs([], before=AFTER, after=BEFORE, max_cloud=None)


def test_relative_ends_roll_with_the_time_of_the_run():
    now = dt.datetime(2026, 12, 7, 12, tzinfo=dt.timezone.utc)
    recent = parse_window("now-30d/now", now=now)
    year_ago = parse_window("now-395d/now-365d", now=now)
    assert recent == (now - dt.timedelta(days=30), now)
    assert year_ago == (now - dt.timedelta(days=395), now - dt.timedelta(days=365))
    check_windows(year_ago, recent)
    assert format_window(parse_window("2023-06-01/2023-06-30")) == "2023-06-01/2023-06-30"
    with pytest.raises(WindowError, match="ends before it starts"):
        parse_window("now/now-30d", now=now)
