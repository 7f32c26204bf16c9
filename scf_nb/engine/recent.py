"""Recently ended events kept in memory: a status or record read of an event that has just ended (``ev.wait()``
on each of thousands of events in turn) is answered without a query. Only a cache: the store has them all.

Bounded by count and by the text they hold (payloads, results, errors: an async payload may be 128 KB and a
result has no limit), so its memory does not grow with the events processed or their size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from ..core.records import EventState

RECENT_EVENTS = 10_000  # ~5 MB of records for no-op events
RECENT_CHARS = 8 << 20  # characters of their payloads, results and errors


def _chars(ev: EventState) -> int:
    return (len(ev.payload or "") + len(ev.result or "") + len(ev.error_message or "")
            + len(ev.error_traceback or ""))


class RecentEvents:
    """Oldest out first. ``add`` may run on any thread that flushes the store; ``get`` on any thread."""

    def __init__(self, max_events: int = RECENT_EVENTS, max_chars: int = RECENT_CHARS) -> None:
        self.max_events, self.max_chars = max_events, max_chars
        self._events: OrderedDict[str, EventState] = OrderedDict()
        self.chars = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._events)

    def get(self, request_id: str) -> EventState | None:
        return self._events.get(request_id)

    def add(self, events: list[EventState]) -> None:
        with self._lock:
            kept = self._events
            for ev in events:
                old = kept.pop(ev.request_id, None)
                if old is not None:
                    self.chars -= _chars(old)
                kept[ev.request_id] = ev
                self.chars += _chars(ev)
            while kept and (len(kept) > self.max_events or self.chars > self.max_chars):
                _, gone = kept.popitem(last=False)
                self.chars -= _chars(gone)
