"""The event table: the events the engine holds in memory, and the only code that moves a status.

A status moves only through ``status.can_move`` (QUEUED -> RUNNING -> a terminal status, or QUEUED -> a
terminal one), on the engine thread, under the store's lock (which also guards the write buffer), so a
terminal status is final and every reader sees the newest one. There is no way back to QUEUED: an event
stays QUEUED until an instance's claim of it is bound (``begin``), and a claim that was never bound (its
instance died before saying so) is released by the backend with the event still QUEUED.
"""

from __future__ import annotations

import _thread
import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.status import Status, can_move
from .recent import RecentEvents

if TYPE_CHECKING:
    from ..core.records import EventState
    from ..store.store import Store
    from .settings import Settings

log = logging.getLogger("scf_nb")


class EventTable:
    """Live events (QUEUED, RUNNING, or ended and not yet on disk in their final state), recently ended ones,
    and the threads waiting for events to end."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store: Store  # set once the store is open
        self.live: dict[str, EventState] = {}
        self.recent = RecentEvents()  # ended, on disk, still cheap to read
        self._waiters: dict[str, list[_Countdown]] = {}  # threads waiting for an event to end
        self._to_wake: list[Any] = []  # their locks, released at the end of this turn of the loop
        self.turn_due = False  # some are

    def accept(self, ev: EventState) -> None:
        """A new QUEUED event (the caller holds the store's lock)."""
        self.live[ev.request_id] = ev
        self.store.add_event(ev)

    def begin(self, ev: EventState, pid: int | None, at: float) -> bool:
        """``ev`` is RUNNING from ``at`` (the engine's clock) in process ``pid``."""
        with self.store.lock:
            if not can_move(ev.status, Status.RUNNING):
                log.error("scf_nb: event %s cannot start from %s", ev.request_id, ev.status)
                return False
            ev.status = Status.RUNNING
            ev.run_time = at
            ev.instance_pid = pid
            self.store.changed(ev)
        return True

    def end(self, ev: EventState, status: Status, **fields: Any) -> None:
        """End ``ev`` (a terminal status is final: a later end is ignored) and wake who waits for it."""
        with self.store.lock:
            if not can_move(ev.status, status):
                return
            ev.end(status, self.settings.clock(), **fields)
            ev.instance = None
            self.store.changed(ev)
            waiters = self._waiters.pop(ev.request_id, None)
        if waiters is not None:
            for waiter in waiters:
                waiter.left -= 1
                if not waiter.left:
                    self._to_wake.append(waiter.lock)
                    self.turn_due = True

    def turn_end(self) -> float:
        """Release the threads whose events ended, once per turn, when this thread is about to wait: no fight
        for the GIL with them."""
        self.turn_due = False
        to_wake, self._to_wake = self._to_wake, []
        for waiter in to_wake:
            waiter.release()
        return math.inf

    def wait_all(self, events: list[EventState], timeout: float | None) -> bool:
        """Block until every one of ``events`` has ended (True) or ``timeout`` seconds passed (False)."""
        with self.store.lock:
            pending = [ev for ev in events if not ev.status.is_terminal]
            if not pending:
                return True
            waiter = _Countdown(len(pending))
            for ev in pending:
                self._waiters.setdefault(ev.request_id, []).append(waiter)
        return waiter.lock.acquire(timeout=-1 if timeout is None else min(max(0.0, timeout), _thread.TIMEOUT_MAX))

    def committed(self, events: list[EventState]) -> None:
        """The store's writer committed ``events``: the ended ones are on disk, kept only as recent."""
        ended = [ev for ev in events if ev.status.is_terminal]
        self.recent.add(ended)
        for ev in ended:
            self.live.pop(ev.request_id, None)

    def get(self, request_id: str, cutoff: Callable[[], float]) -> EventState | None:
        """The record of a live event, or of a recently ended one that started after ``cutoff()`` (the
        retention window's start: asked only for a recent one)."""
        ev = self.live.get(request_id)
        if ev is not None:
            return ev
        ev = self.recent.get(request_id)
        if ev is not None and ev.start_time < cutoff():
            return None  # maybe purged already: let the store say
        return ev

    def unfinished(self) -> list[EventState]:
        """The events that are QUEUED or RUNNING now, oldest first."""
        return sorted((ev for ev in list(self.live.values()) if not ev.status.is_terminal), key=lambda e: e.key)


class _Countdown:
    """What a waiting thread blocks on: a held lock, released once ``left`` events have ended (a bare lock is
    one futex; a ``threading.Event`` adds a Condition and a lock per wait)."""

    __slots__ = ("left", "lock")

    def __init__(self, left: int) -> None:
        self.left = left
        self.lock = _thread.allocate_lock()
        self.lock.acquire()
