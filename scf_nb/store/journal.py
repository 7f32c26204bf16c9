"""The accept journal: every event the engine accepts is on disk before ``invoke`` returns its RequestId, so an
engine killed outright (``kill -9`` of a Jupyter server or a kernel) loses no event it accepted.

The store's writer sends events to DuckDB in batches, and holds back young QUEUED/RUNNING ones for up to
``HOLD_S`` so most reach the file once, in their final state (store.py); a process killed meanwhile took
those with it (measured before this journal: 29 of 600 RequestIds accepted over REST at 200/s missing
after a SIGKILL). So ``add`` appends one line per accepted event to ``<store>.accepted`` with one
``os.write`` (into the page cache: it survives the process, not a machine crash; no fsync), and each batch
the writer commits lets the journal forget what the file now holds (``settle``). The next engine on the
home reads what is left (``read``) and records those events, which recovery then fails like every other
event the dead engine left unfinished.

Cost on the invoke path: one ``json.dumps`` and one ``write`` of ~200 bytes plus the event's payload.
"""

from __future__ import annotations

import json
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


def _line(ev: EventState) -> bytes:
    return (json.dumps([ev.key, ev.request_id, ev.function_name, ev.namespace, ev.qualifier, ev.invoke_type,
                        ev.traced, ev.start_time, ev.payload], separators=(",", ":")) + "\n").encode()


class Journal:
    """The journal file of one store, open for appending (what an earlier engine left stays until ``settle``).

    Args:
        path: the file (made with mode 0600: payloads are the user's data).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.size = os.fstat(self._fd).st_size

    def add(self, ev: EventState) -> None:
        """Record an accepted event (the caller holds the store's lock, so lines follow acceptance order)."""
        self.size += os.write(self._fd, _line(ev))

    def settle(self, unwritten: list[EventState]) -> None:
        """Every event accepted so far is in the store's file but ``unwritten`` (call under the store's lock,
        after a commit): an empty journal when none is, else a rewrite with only them once it grew big."""
        if not unwritten:
            if self.size:
                os.ftruncate(self._fd, 0)
                self.size = 0
        elif self.size > COMPACT_BYTES:
            self._rewrite(unwritten)

    def clear(self) -> None:
        """Forget everything (after recovery recorded it)."""
        self.settle([])

    def _rewrite(self, events: Iterable[EventState]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        data = b"".join(_line(ev) for ev in events)
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.replace(tmp, self.path)
        except BaseException:
            os.close(fd)
            raise
        os.close(self._fd)
        self._fd, self.size = fd, len(data)

    def close(self, remove: bool) -> None:
        os.close(self._fd)
        if remove:
            self.path.unlink(missing_ok=True)

    def read(self) -> list[tuple[Any, ...]]:
        """The events the journal holds, as rows of the events table (QUEUED; the columns it lacks None). A
        torn last line (the process died inside its write) is skipped: that invoke never returned."""
        rows: dict[int, tuple[Any, ...]] = {}
        with open(self.path, "rb") as f:
            for raw in f:
                row: list[Any] = [None] * len(EVENT_COLUMNS)
                try:
                    fields = json.loads(raw)
                    for at, value in zip(_AT, fields, strict=True):
                        row[at] = value
                except ValueError:
                    continue
                row[EVENT_COLUMNS.index("status")] = "QUEUED"
                rows[int(fields[0])] = tuple(row)
        return list(rows.values())
