"""Log lines waiting for the store's writer, held compactly: one run per batch of lines an event wrote (the lines
joined by newlines, which a line never holds), and DuckDB splits and numbers them as it inserts. Five Python
objects per line (the text, its seq, pointers to its key, time and stream) would fill Python's small-object
heap while the writer lags, and its holes stay after; one string per run is one allocation, freed whole.

What the batches leave in glibc's heap (frames, the runs' strings) is freed between long-lived objects, and
the heap keeps those holes: ``HeapTrim`` gives them back to the system now and then (``malloc_trim``).
"""

from __future__ import annotations

import ctypes
from typing import Any

import pandas as pd

COLUMNS = ("event_key", "first_seq", "ts", "stream", "text", "n")
INSERT = """
INSERT INTO logs SELECT event_key, first_seq + i - 1, to_timestamp(ts), stream, line FROM (
    SELECT event_key, first_seq, ts, stream, unnest(parts) AS line, unnest(range(1, len(parts) + 1)) AS i
    FROM (SELECT *, CASE WHEN n = 1 THEN [text] ELSE string_split(text, chr(10)) END AS parts FROM batch))"""
Run = tuple[int, int, float, str, str, int]  # as COLUMNS


def runs_of(key: int, first_seq: int, ts: float, stream: str, lines: list[str]) -> tuple[list[Run], int]:
    """The runs holding ``lines`` (numbered from ``first_seq``), and their size in characters."""
    n = len(lines)
    text = "\n".join(lines)
    if text.count("\n") == n - 1:
        return [(key, first_seq, ts, stream, text, n)], len(text)
    # a line with a newline in it: one run per line, or its pieces would become lines of their own
    return [(key, first_seq + i, ts, stream, line, 1) for i, line in enumerate(lines)], len(text)


class LogBuffer:
    """Runs in the order added; not thread-safe (the store's lock guards it)."""

    __slots__ = ("chars", "runs")

    def __init__(self) -> None:
        self.runs: list[Run] = []
        self.chars = 0

    def __bool__(self) -> bool:
        return bool(self.runs)

    def extend(self, runs: list[Run], chars: int) -> None:
        self.runs.extend(runs)
        self.chars += chars

    def take(self) -> LogBuffer:
        """Everything buffered, as a buffer of its own; this one is empty afterwards."""
        taken = LogBuffer()
        taken.runs, taken.chars, self.runs, self.chars = self.runs, self.chars, [], 0
        return taken

    def put_back(self, taken: LogBuffer) -> None:
        """``taken`` could not be written: in front again, so nothing is lost and the order is kept."""
        self.runs[:0] = taken.runs
        self.chars += taken.chars

    def frame(self) -> Any:
        return pd.DataFrame.from_records(self.runs, columns=COLUMNS)


class HeapTrim:
    """``maybe``: after ``TRIM_AFTER_CHARS`` more of log text ``written`` (and at most once a second), return
    glibc's free memory to the system. A no-op where the C library is not glibc."""

    TRIM_AFTER_CHARS = 8 << 20

    def __init__(self) -> None:
        self.written = 0  # characters of log text written so far
        self._trimmed_at = 0
        self._next = 0.0
        self._trim = _malloc_trim()

    def maybe(self, now: float) -> None:
        if self._trim is not None and self.written - self._trimmed_at > self.TRIM_AFTER_CHARS and now >= self._next:
            self._trimmed_at, self._next = self.written, now + 1.0
            self._trim(0)  # ~1 ms (23 ms the first time on a fragmented 400 MB heap), without the GIL


def _malloc_trim() -> Any:
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = (ctypes.c_size_t,)
    return trim
