"""Date windows of a STAC search: ``START/END`` text, ``now-Nd`` ends, and their order.

The text follows STAC API Item Search ``datetime`` ranges (RFC 3339 instants or dates), without
open ends; ``now`` and ``now-Nd`` let a scheduled run's windows roll with its schedule.
"""
from __future__ import annotations

import re
from datetime import date, datetime, time, timedelta, timezone

from pipeline.errors import ChangemapError

Window = tuple[datetime, datetime]


class WindowError(ChangemapError):
    """A date window that cannot be used (not a range, ends before it starts, windows in the wrong order)."""


_RELATIVE = re.compile(r"now(?:\s*-\s*(\d+)\s*d)?", re.I)


def _parse_instant(text: str, end: bool, now: datetime | None = None) -> datetime:
    """A date (its first or, for ``end``, last instant), an ISO 8601 datetime (naive means UTC), or ``now-30d``.

    ``now`` and ``now-Nd`` are the run's time and N days before it: a scheduled run's window
    rolls with its schedule (``now-30d/now``: the last 30 days).
    """
    relative = _RELATIVE.fullmatch(text)
    if relative:
        return (now or datetime.now(timezone.utc)) - timedelta(days=int(relative.group(1) or 0))
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        day = date.fromisoformat(text)
        return datetime.combine(day, time.max if end else time.min, tzinfo=timezone.utc)
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def parse_window(text: str, name: str = "date window", now: datetime | None = None) -> Window:
    """``"2023-06-01/2023-06-30"`` (dates or ISO datetimes, both ends included) as ``(start, end)`` in UTC.

    Args:
        text: ``START/END`` as in STAC API ``datetime`` ranges, without open ends; an end may also
            be ``now`` or ``now-Nd`` (N days before ``now``), e.g. ``now-30d/now``.
        name: how messages name the window (``--before``).
        now: the time relative ends count from (default: the current time, UTC).

    Raises:
        WindowError: not a range, an open end, a value that is not a date, an end before its start.
    """
    example = "e.g. 2023-06-01/2023-06-30"
    parts = str(text).strip().split("/")
    if len(parts) != 2:
        raise WindowError(f"{name} {text!r} is not a date range; write START/END, {example}")
    start_text, end_text = (p.strip() for p in parts)
    if start_text in ("", "..") or end_text in ("", ".."):
        raise WindowError(f"{name} {text!r} is open-ended; give both a start and an end date, {example}")
    try:
        start, end = _parse_instant(start_text, end=False, now=now), _parse_instant(end_text, end=True, now=now)
    except ValueError as exc:
        raise WindowError(f"{name} {text!r} holds a value that is not a date ({exc}); write dates as YYYY-MM-DD, ISO "
                          f"8601 datetimes or now-Nd, {example}") from None
    if end < start:
        raise WindowError(f"{name} {text!r} ends before it starts; write the earlier date first, {example}")
    return start, end


def format_window(window: Window) -> str:
    """A window as ``2023-06-01/2023-06-30`` (dates where it spans whole days, else ISO datetimes)."""
    start, end = window
    if start.time() == time.min and end.time() == time.max:
        return f"{start:%Y-%m-%d}/{end:%Y-%m-%d}"
    return f"{iso(start)}/{iso(end)}"


def iso(t: datetime) -> str:
    """An instant as RFC 3339 text in UTC (``2023-06-01T00:00:00Z``)."""
    return t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def as_window(value: Window | str | None) -> Window | None:
    """A window given as text or as two instants, in UTC (None stays None)."""
    if value is None or isinstance(value, tuple):
        return aware(value) if value else None
    return parse_window(value)


def aware(window: Window) -> Window:
    """Both ends with a time zone (UTC where they have none)."""
    return tuple(t if t.tzinfo else t.replace(tzinfo=timezone.utc) for t in window)  # type: ignore[return-value]


def check_windows(before: Window, after: Window) -> None:
    """Refuse windows in the wrong order: the BEFORE window must end before the AFTER window starts."""
    before, after = aware(before), aware(after)
    if not before[1] < after[0]:
        raise WindowError(f"the BEFORE window {format_window(before)} does not end before the AFTER window "
                          f"{format_window(after)} starts; BEFORE must be the earlier one: swap them or shorten them so "
                          "they do not overlap")


