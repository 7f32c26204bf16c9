"""The accept journal: every event the engine accepts is on disk before ``invoke`` returns its RequestId, so an
engine killed outright (``kill -9`` of a Jupyter server or a kernel) loses no event it accepted.

The store's writer sends events to DuckDB in batches, and holds back young QUEUED/RUNNING ones for up to
``HOLD_S`` so most reach the file once, in their final state (store.py); a process killed meanwhile took
those with it (measured before this journal: 29 of 600 RequestIds accepted over REST at 200/s missing
after a SIGKILL). So ``add`` appends one line per accepted event to ``<store>.accepted``, through a shared
memory map of the file (into the page cache: it survives the process, not a machine crash; no fsync), and each batch
the writer commits lets the journal forget what the file now holds (``settle``). The next engine on the
home reads what is left (``read``) and records those events, which recovery then fails like every other
event the dead engine left unfinished.

Cost on the invoke path: one formatted line of ~100 bytes plus the event's payload, copied into the map,
8-10 us of a cold ``invoke`` (bench/README.md, 2026-12-03). The fields an event takes from its function are
formatted once per function version; the event key is not written (it is in the RequestId); the start time is
whole microseconds. ``invoke`` writes its line after it let go of the store's lock (the engine thread takes
that lock for every event it moves), so lines may come out of acceptance order, or after the writer committed
their event and settled the journal: ``read`` keys lines by event, and recovery records only the events the
file lacks.
"""

from __future__ import annotations

import json
import mmap
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.records import EVENT_COLUMNS, EventState, key_of

# What a journal line holds: the columns an event has when it is accepted (the rest stay NULL). The key is not
# written: it is in the RequestId (records.key_of).
FIELDS = ("event_key", "request_id", "function_name", "namespace", "qualifier", "invoke_type", "traced",
          "start_time", "payload")
_AT = tuple(EVENT_COLUMNS.index(c) for c in FIELDS)
COMPACT_BYTES = 1 << 20  # a journal this big is rewritten with only the events the file lacks
CAPACITY = 1 << 21  # the file's size at first (zeros after the data); doubled when lines need more
PREFIXES = 256  # function versions whose line prefix is kept
_READ_BYTES = 1 << 16


def _line(ev: EventState, prefix: str | None = None) -> bytes:
    # Tab-separated, the payload last: names are letters, digits, '-' and '_' (functions.check_name), the
    # qualifier "$LATEST" or a version number, and the payload JSON text, which has no raw newline (json.dumps
    # escapes it). The start time in whole microseconds (a float's repr cost a third of the line on a cold
    # call; epoch seconds as a float resolve about half a microsecond anyway).
    if prefix is None:
        prefix = _prefix(ev)
    return f"{ev.request_id}\t{prefix}{int(ev.start_time * 1e6)}\t{ev.payload}\n".encode()


def _prefix(ev: EventState) -> str:
    """The fields of a line that an event takes from its function (the same for all its events)."""
    return f"{ev.function_name}\t{ev.namespace}\t{ev.qualifier}\t{ev.invoke_type}\t{int(ev.traced)}\t"


def _data(fd: int) -> bytes:
    """The journal's lines: the file up to its first NUL byte (read a piece at a time: the file is mostly
    zeros, and reading all 2 MiB of them was ~1.5 ms of every engine start)."""
    pieces, at = [], 0
    while True:
        raw = os.pread(fd, _READ_BYTES, at)
        end = raw.find(b"\0")
        if end >= 0:
            pieces.append(raw[:end])
            break
        pieces.append(raw)
        if len(raw) < _READ_BYTES:
            break
        at += len(raw)
    return b"".join(pieces)


def _fields(raw: bytes) -> list[Any]:
    """A line's fields (its newline taken off); ValueError for one that is not whole. A line of an engine
    before 2026-12-03 starts with the key and has the start time as a float: read as well."""
    text = raw.decode("utf-8", errors="strict")
    if text[:1].isdigit() and text[8:9] != "-":  # the older line: key, then the rest with seconds
        parts = text.split("\t", len(FIELDS) - 1)
        if len(parts) != len(FIELDS):
            raise ValueError(f"{len(parts)} fields")
        key, rid, fn, ns, qualifier, kind, traced, start, payload = parts
        json.loads(payload)
        return [int(key), rid, fn, ns, qualifier, kind, traced == "1", float(start), payload]
    parts = text.split("\t", len(FIELDS) - 2)
    if len(parts) != len(FIELDS) - 1:
        raise ValueError(f"{len(parts)} fields")
    rid, fn, ns, qualifier, kind, traced, start_us, payload = parts
    event_key = key_of(rid)
    if event_key is None:
        raise ValueError(f"not a RequestId: {rid!r}")
    json.loads(payload)
    return [event_key, rid, fn, ns, qualifier, kind, traced == "1", int(start_us) / 1e6, payload]


class Journal:
    """The journal file of one store, mapped into memory (what an earlier engine left stays until ``settle``).

    Lines go into a shared memory map of the file, not through ``write``: a store into the page cache that
    outlives the process as a ``write`` does, without a system call that lets go of the GIL on the invoke path
    (measured: ``os.write`` there doubled invoke's time, as the engine's threads took the GIL in between). The
    data ends at the first NUL byte; the rest of the file is zeros.

    Args:
        path: the file (made with mode 0600: payloads are the user's data).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self._map: mmap.mmap | None = None
        self._cap = 0
        self._lock = threading.Lock()  # add (invoking threads) against settle and close (the store's writer)
        # id(function) -> (function, its _prefix): a third of the line's cost on a cold call saved; holding the
        # function keeps its id from being reused while it is here (a Function is frozen, its version included)
        self._prefixes: dict[int, tuple[Any, str]] = {}
        self._closed = False
        self.size = len(_data(self._fd))
        # Zeros after the data, whatever a killed process left there: a memset cut short may have cleared the
        # start of the data and not its end, and the next lines must not run on into those old bytes.
        os.ftruncate(self._fd, self.size)
        self._grow(self.size)

    def _grow(self, need: int) -> None:
        cap = max(CAPACITY, self._cap)
        while cap < need:
            cap *= 2
        if cap == self._cap:
            return
        os.ftruncate(self._fd, cap)  # zeros beyond the data
        if self._map is not None:
            self._map.close()
        self._map = mmap.mmap(self._fd, cap)
        self._cap = cap

    def add(self, ev: EventState) -> None:
        """Record an event just accepted (not under the store's lock: the engine thread takes that one for
        every event it moves, and an invoke holding it longer made them queue behind each other). Lines may
        come out of acceptance order, and one may come after its event reached the file and the journal
        was settled: ``read`` keys lines by event, and recovery records only events the file lacks."""
        fn = ev.fn
        known = self._prefixes.get(id(fn))
        if known is None or known[0] is not fn:
            if len(self._prefixes) >= PREFIXES:
                self._prefixes.clear()
            known = self._prefixes[id(fn)] = (fn, _prefix(ev))
        line = _line(ev, known[1])
        with self._lock:
            if self._closed:  # the store wrote every event it accepted to the file first
                return
            end = self.size + len(line)
            if end > self._cap:  # (or no map: a rewrite that failed to map its file; this raises if it fails)
                self._grow(end)
            assert self._map is not None
            self._map[self.size:end] = line
            self.size = end

    def settle(self, unwritten: list[EventState]) -> None:
        """Every event accepted so far is in the store's file but ``unwritten`` (call under the store's lock,
        after a commit): an empty journal when none is, else a rewrite with only them once it grew big."""
        with self._lock:
            self._settle(unwritten)

    def _settle(self, unwritten: list[EventState]) -> None:
        if self._closed:
            return
        if self._map is None:  # a rewrite that failed to map its file
            self._grow(self.size)
        assert self._map is not None
        if not unwritten:
            if self.size:
                self._map[:self.size] = bytes(self.size)
                self.size = 0
        elif self.size > COMPACT_BYTES:
            self._rewrite(unwritten)

    def clear(self) -> None:
        """Forget everything (after recovery recorded it)."""
        self.settle([])

    def _rewrite(self, events: Iterable[EventState]) -> None:
        """A new file with only ``events``, put in place of the old one at once (a crash leaves one or the
        other, and both hold them)."""
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(_line(ev) for ev in events)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        if self._map is not None:
            self._map.close()
        os.close(self._fd)
        self._fd, self._map, self._cap, self.size = fd, None, 0, len(data)
        self._grow(self.size)

    def close(self, remove: bool) -> None:
        with self._lock:
            self._closed = True
            if self._map is not None:
                self._map.close()
                self._map = None
            os.close(self._fd)
        if remove:
            self.path.unlink(missing_ok=True)

    def read(self) -> list[tuple[Any, ...]]:
        """The events the journal holds, as rows of the events table (QUEUED; the columns it lacks None). A
        torn last line (the process died inside its write) is skipped: that invoke never returned."""
        rows: dict[int, tuple[Any, ...]] = {}
        for raw in _data(self._fd).split(b"\n")[:-1]:  # (after the last newline: nothing, or a torn line)
            row: list[Any] = [None] * len(EVENT_COLUMNS)
            try:
                fields = _fields(raw)
            except ValueError:
                continue
            for at, value in zip(_AT, fields, strict=True):
                row[at] = value
            row[EVENT_COLUMNS.index("status")] = "QUEUED"
            rows[int(fields[0])] = tuple(row)
        return list(rows.values())
