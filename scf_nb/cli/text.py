"""What the CLI prints: aligned columns and one-line cells for people, JSON for programs. Plain functions of
values (no client), so the commands stay thin."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from ..core import readable
from ..core.errors import ScfError

TIME = "%Y-%m-%d %H:%M:%S"  # local; what --since/--until read back


def plain(value: Any) -> Any:
    """JSON for what the API returns: times as ISO 8601 with their offset, numpy scalars as numbers, NaN/NaT as
    null, containers walked; anything else as its repr."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, datetime):  # a pandas Timestamp is one, and so is NaT (not equal to itself)
        return None if value != value else value.isoformat()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return plain(item())
    return None if str(value) == "<NA>" else repr(value)


def records(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows as JSON objects (see ``plain``)."""
    rows: list[dict[str, Any]] = plain(frame.to_dict("records"))
    return rows


def rows(frame: Any) -> list[dict[str, Any]]:
    """A DataFrame's rows as dicts, with None wherever a value is missing (NaN, NaT, None alike)."""
    values: list[dict[str, Any]] = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return values


def dumps(document: Any) -> str:
    """One JSON document on one line."""
    return json.dumps(plain(document), ensure_ascii=False)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int] = ()) -> str:
    """Aligned columns under their headers; the columns numbered in ``right`` (numbers, durations) flush right."""
    rows = list(rows)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    flush_right = set(right)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in flush_right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True))).rstrip()

    return "\n".join(line(r) for r in [headers, *rows])


def clip(text: Any, n: int) -> str:
    """``text`` on one line, at most ``n`` characters (cut with ``...``)."""
    flat = " ".join(str(text or "").split())
    return flat if len(flat) <= n else flat[:n - 3] + "..."


def seconds(ms: Any) -> float | None:
    """Seconds of a duration in ms (None for none or NaN)."""
    return None if ms is None or (isinstance(ms, float) and math.isnan(ms)) else float(ms) / 1000


def took(ms: Any) -> str:
    return readable.duration(seconds(ms))


def when(value: Any) -> str:
    """A local time as ``YYYY-MM-DD HH:MM:SS`` ('' for none)."""
    return readable.clock(value, fmt=TIME)


def log_line(row: Any, as_json: bool) -> str:
    """A log line (``seq, ts, stream, line``): ``HH:MM:SS.mmm o text`` for people, a JSON object for programs."""
    if as_json:
        return dumps({"seq": int(row.seq), "ts": row.ts, "stream": row.stream, "line": row.line})
    return readable.log_text(row.ts, row.stream, row.line)


def error_line(e: ScfError) -> str:
    """An ScfError on one line: ``[Code] message``."""
    return f"[{e.code}] {' '.join(e.message.split())}"


def mode(invoke_type: Any) -> str:
    return "async" if invoke_type == "Event" else "sync"
