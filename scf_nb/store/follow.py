"""Following one event's log: its stored lines, then each line as the store commits it, until the event ends.

A follower first registers its ``Tail`` with the change feed, then reads what the store holds: a line
committed before that read is in it, one committed after is handed to the tail by the feed's dispatcher (a
line in both is yielded once: by ``seq``). It then blocks on the tail's Condition until the dispatcher pushes
the runs of lines of its event, or its end. A follower that falls behind by more than ``MAX_CHARS`` of log text
is not given more: its tail is marked with a gap, and it reads what it missed from the store (one query per
gap) before it waits again, so a slow reader holds bounded memory and still gets every line.
"""

from __future__ import annotations

import operator
import threading
import time
from abc import abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, NamedTuple

from ..core.errors import invalid

if TYPE_CHECKING:
    from .logbuffer import Run
    from .observe import ChangeFeed

MAX_CHARS = 8 << 20  # log text pushed to one follower and not yet taken
PAGE = 10_000  # lines a follower reads from the store at a time
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def follow_arguments(since_seq: Any, timeout: Any) -> tuple[int, float | None]:
    """``follow``'s ``since_seq`` (None: 0) and ``timeout``, checked.

    Raises:
        ScfError: ``InvalidParameterValue.SinceSeq`` / ``.Timeout``.
    """
    after = 0
    if since_seq is not None:
        try:  # any integer type (numpy's too, as ``df.seq.iloc[-1]`` gives), not a bool
            after = -1 if isinstance(since_seq, bool) else operator.index(since_seq)
        except TypeError:
            after = -1
        if after < 0:
            raise invalid("SinceSeq", f"since_seq must be an integer >= 0, got {since_seq!r}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
                                or not timeout >= 0):
        raise invalid("Timeout", f"timeout must be a number of seconds >= 0 or None, got {timeout!r}")
    return after, None if timeout is None else float(timeout)


class LogLine(NamedTuple):
    """One log line: ``seq`` (its number in the event's log, from 1), ``ts`` (when the engine read it, an aware
    datetime in local time, as in ``logs()``), ``stream`` ("stdout" or "stderr"), ``line``. Read it as a tuple,
    by attribute (``line.seq``) or by key (``line["seq"]``)."""

    seq: int
    ts: datetime
    stream: str
    line: str

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            if key not in LogLine._fields:
                raise KeyError(key)
            return getattr(self, key)
        return tuple.__getitem__(self, key)


class Tail:
    """What the feed's dispatcher hands one follower: runs of committed lines, a gap mark, the end."""

    __slots__ = ("key", "cond", "runs", "chars", "gap", "ended", "closed", "abandoned")

    def __init__(self, key: int) -> None:
        self.key = key
        self.cond = threading.Condition(threading.Lock())
        self.runs: list[Run] = []
        self.chars = 0
        self.gap = False
        self.ended = False
        self.closed = False
        self.abandoned = False  # its follower was dropped unclosed: the dispatcher removes it

    def push(self, runs: list[Run]) -> None:
        with self.cond:
            if not self.gap:
                self.runs.extend(runs)
                self.chars += sum(len(run[4]) for run in runs)
                if self.chars > MAX_CHARS:
                    self.gap, self.runs, self.chars = True, [], 0
            self.cond.notify()

    def mark_gap(self) -> None:
        with self.cond:
            self.gap, self.runs, self.chars = True, [], 0
            self.cond.notify()

    def end(self) -> None:
        with self.cond:
            self.ended = True
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()


class Follower(Iterator[LogLine]):
    """What ``follow`` returns, whichever client made it (``LogFollower`` on an engine in this process, the HTTP
    client's own over a server): an iterator of ``LogLine`` in ``seq`` order, each once, until the event has ended
    and its last line was given (or the timeout passed). ``close()`` (or its ``with`` block) stops it early."""

    @abstractmethod
    def close(self) -> None:
        """Stop following (idempotent; from any thread: one waiting in ``next`` returns); the event runs on."""

    def __enter__(self) -> Follower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LogFollower(Follower):
    """The iterator ``follow`` returns on an engine in this process: every line of one event in ``seq`` order,
    each once, until the event has ended and its last line was given (or the timeout passed). ``close()`` (or
    its ``with`` block) stops it."""

    def __init__(self, feed: ChangeFeed, key: int, after_seq: int, ended: Callable[[], bool],
                 timeout: float | None) -> None:
        self._feed = feed
        self._tail = Tail(key)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._last = after_seq
        self._ready: deque[LogLine] = deque()
        self._catch_up = True  # read the store before waiting on the tail
        self._final = False  # the store holds every line: after reading it, stop
        self._done = False
        self._local = _LocalTime()
        feed.add_tail(self._tail)
        try:
            self._final = ended()  # it ended before the store is read: that read has every line
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> LogFollower:
        return self

    def __next__(self) -> LogLine:
        while not self._ready:
            if self._done:
                raise StopIteration
            if self._catch_up:
                self._read_store()
            else:
                self._take()
        return self._ready.popleft()

    def close(self) -> None:
        """Stop following (idempotent; from any thread: one waiting in ``next`` returns); the event runs on."""
        if not self._done:
            self._done = True
            self._ready.clear()
        self._tail.close()
        self._feed.remove_tail(self._tail)

    def __enter__(self) -> LogFollower:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # no lock here: the garbage collector may run this on a thread that holds the feed's or the store's
        tail = getattr(self, "_tail", None)
        if tail is not None and not self._done:
            tail.abandoned = True

    def _finish(self) -> None:
        self._done = True
        self._feed.remove_tail(self._tail)

    def _read_store(self) -> None:
        rows = self._feed.store.log_lines(self._tail.key, self._last, PAGE)
        local = self._local
        self._ready.extend(LogLine(seq, local(us), stream, line) for seq, us, stream, line in rows)
        if rows:
            self._last = rows[-1][0]
        if len(rows) < PAGE:
            self._catch_up = False
            if self._final:
                self._finish()

    def _take(self) -> None:
        tail = self._tail
        with tail.cond:
            while not (tail.runs or tail.gap or tail.ended or tail.closed):
                left = None if self._deadline is None else self._deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                tail.cond.wait(None if left is None else min(left, threading.TIMEOUT_MAX))
            runs, tail.runs, tail.chars = tail.runs, [], 0
            gap, tail.gap = tail.gap, False
            ended = tail.ended or tail.closed
        if gap:  # what was dropped is in the store (and so is every line, once it has ended)
            self._catch_up, self._final = True, ended
            return
        for run in runs:
            self._add_run(run)
        if ended or not runs:  # ended, or the timeout passed
            self._finish()

    def _add_run(self, run: Run) -> None:
        _, first, ts, stream, text, n = run
        skip = self._last - first + 1  # lines already given (from the store's read)
        if skip >= n:
            return
        parts = text.split("\n") if n > 1 else [text]
        when = self._local(round(ts * 1e6))  # as DuckDB's to_timestamp rounds it
        self._ready.extend(LogLine(first + i, when, stream, parts[i]) for i in range(max(0, skip), n))
        self._last = first + n - 1


class _LocalTime:
    """Epoch microseconds -> an aware local datetime; the last one kept (a run's lines share one time)."""

    __slots__ = ("_us", "_value")

    def __init__(self) -> None:
        self._us: int | None = None
        self._value = _EPOCH

    def __call__(self, us: int) -> datetime:
        if us != self._us:
            self._us, self._value = us, (_EPOCH + timedelta(microseconds=us)).astimezone()
        return self._value
