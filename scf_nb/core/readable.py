"""Values for people to read: local times, durations, sizes and log lines, as plain text. The notebook views
(``widgets/render.py``) and the CLI both draw with these, so a time or a duration reads the same everywhere."""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any


def epoch(value: Any) -> float | None:
    """Epoch seconds of a datetime or pandas Timestamp; None for None/NaT/NaN."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    try:
        return float(value.timestamp())
    except (AttributeError, ValueError):  # NaT has timestamp() but raises ValueError
        return None


def clock(value: Any, with_date: bool = True, fmt: str | None = None) -> str:
    """A local time as ``MM-DD HH:MM:SS`` (``fmt``: any strftime format) ('' for none)."""
    t = epoch(value)
    if t is None:
        return ""
    return datetime.fromtimestamp(t).strftime(fmt or ("%m-%d %H:%M:%S" if with_date else "%H:%M:%S"))


def duration(seconds: float | None) -> str:
    """``0.4 ms``, ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min`` ('' for none)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)) or seconds < 0:
        return ""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def megabytes(value: Any) -> str:
    try:
        n = float(value)
    except (TypeError, ValueError):
        return ""
    return "" if math.isnan(n) else f"{n / 1e6:.0f} MB"


def log_text(ts: Any, stream: str, line: str) -> str:
    """One log line as a terminal shows it: local time to the millisecond, ``o``/``e`` for stdout/stderr, the
    text as it was written."""
    t = epoch(ts)
    when = datetime.fromtimestamp(t).strftime("%H:%M:%S.%f")[:-3] if t is not None else " " * 12
    return f"{when} {'e' if stream == 'stderr' else 'o'} {line}"
