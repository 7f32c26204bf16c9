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

Cost on the invoke path: one formatted line of ~130 bytes plus the event's payload, copied into the map.
"""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..core.records import EVENT_COLUMNS, EventState

# What a journal line holds: the columns an event has when it is accepted (the rest stay NULL).
FIELDS = ("event_key", "request_id", "function_name", "namespace", "qualifier", "invoke_type", "traced",
          "start_time", "payload")
_AT = tuple(EVENT_COLUMNS.index(c) for c in FIELDS)
COMPACT_BYTES = 1 << 20  # a journal this big is rewritten with only the events the file lacks
CAPACITY = 1 << 21  # the file's size at first (zeros after the data); doubled when lines need more


def _line(ev: EventState) -> bytes:
    # Tab-separated, the payload last: names are letters, digits, '-' and '_' (functions.check_name), the
    # qualifier "$LATEST" or a version number, and the payload JSON text, which has no raw newline (json.dumps
    # escapes it). A third of json.dumps' cost on the invoke path.
    return (f"{ev.key}\t{ev.request_id}\t{ev.function_name}\t{ev.namespace}\t{ev.qualifier}\t{ev.invoke_type}\t"
            f"{int(ev.traced)}\t{ev.start_time!r}\t{ev.payload}\n").encode()


def _data(fd: int) -> bytes:
    """The journal's lines: the file up to its first NUL byte."""
    raw = os.pread(fd, os.fstat(fd).st_size, 0)
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _fields(raw: bytes) -> list[Any]:
    """A line's fields (its newline taken off); ValueError for one that is not whole."""
    parts = raw.decode("utf-8", errors="strict").split("\t", len(FIELDS) - 1)
    if len(parts) != len(FIELDS):
        raise ValueError(f"{len(parts)} fields")
    key, rid, fn, ns, qualifier, kind, traced, start, payload = parts
    json.loads(payload)
    return [int(key), rid, fn, ns, qualifier, kind, traced == "1", float(start), payload]


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
        self.size = len(_data(self._fd))
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
        """Record an accepted event (the caller holds the store's lock, so lines follow acceptance order)."""
        line = _line(ev)
        end = self.size + len(line)
        if end > self._cap:
            self._grow(end)
        assert self._map is not None
        self._map[self.size:end] = line
        self.size = end

    def settle(self, unwritten: list[EventState]) -> None:
        """Every event accepted so far is in the store's file but ``unwritten`` (call under the store's lock,
        after a commit): an empty journal when none is, else a rewrite with only them once it grew big."""
        if not unwritten:
            if self.size:
                assert self._map is not None
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
        if self._map is not None:
            self._map.close()
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
