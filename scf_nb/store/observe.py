"""Observation: one change feed fed by the store's commits, and what stands on it (``follow``, done callbacks,
``subscribe``). Nobody polls: a view, a follower or a callback waits until a commit concerns it.

::

    any thread that commits (the store's writer, a read's sync)            scf_nb-feed (the dispatcher)
    -----------------------------------------------------------            -----------------------------
    Store.sync: one batch committed
      -> ChangeFeed.publish(touched events, the batch's log runs, ended)   takes everything published since
         [merged into one pending set: O(1) per commit, no copy]  ---->    its last turn, then:
                                                                           - log runs -> the followers of
                                                                             their events (follow.py)
                                                                           - Changes -> each subscription:
                                                                             merged into what it has not
                                                                             yet taken; its own thread calls
                                                                             its listener
                                                                           - ended -> the done callbacks'
                                                                             thread (a subscription too)

While nobody listens the store records nothing for the feed (``Store.observe``) and publishes nothing; the
dispatcher thread starts with the first listener. Every listener is isolated as huey's signals are: called
inside ``try/except: log``, on a thread that is not the engine's, the writer's or another listener's, and fed
a merged set, so one that raises or blocks costs the others nothing and holds no growing queue. Memory is
bounded everywhere: what waits for the dispatcher (``MAX_PENDING_CHARS`` of log text, beyond which lines are
dropped and their followers read them from the store instead), what a follower holds (``follow.MAX_CHARS``),
and what a subscription has not taken (``MAX_PENDING_IDS`` ids, beyond which it gets ``overflow``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..core.errors import ScfError
from .follow import LogFollower, Tail

if TYPE_CHECKING:
    from ..core.records import EventState
    from .logbuffer import LogBuffer, Run
    from .store import Store

log = logging.getLogger("scf_nb")
MAX_PENDING_CHARS = 32 << 20  # log text published and not yet dispatched
MAX_PENDING_IDS = 100_000  # ids a subscription has not taken; beyond: overflow
MAX_NAMES = 200_000  # event key -> RequestId, for the log notices of the events the feed has seen
CLOSE_WAIT_S = 5.0  # at shutdown: how long the last notifications and done callbacks may take


@dataclass(frozen=True)
class Changes:
    """What one or more of the store's commits changed, as a subscriber gets it (several commits' changes
    merged into one when the subscriber was busy).

    Attributes:
        events: RequestIds of the events that are new or whose record changed (status, end, instance).
        logs: RequestIds of the events with new log lines (read them with ``logs(rid, since_seq=...)``).
        ended: the RequestIds in ``events`` that reached FINISHED, FAILED or ABORTED.
        overflow: True when more changed than a subscriber may hold unread (it was slow): the sets are then
            empty and anything may have changed; read again what you show.
    """

    events: frozenset[str] = frozenset()
    logs: frozenset[str] = frozenset()
    ended: frozenset[str] = frozenset()
    overflow: bool = False


class Unread:
    """Changes not yet taken by a listener, merged into one set, bounded: beyond ``MAX_PENDING_IDS`` ids it
    holds only ``overflow``. True while it holds anything."""

    __slots__ = ("events", "logs", "ended", "overflow")

    def __init__(self) -> None:
        self.events: set[str] = set()
        self.logs: set[str] = set()
        self.ended: set[str] = set()
        self.overflow = False

    def add(self, changes: Changes) -> None:
        if not self.overflow:
            self.events |= changes.events
            self.logs |= changes.logs
            self.ended |= changes.ended
            if changes.overflow or len(self.events) + len(self.logs) > MAX_PENDING_IDS:
                self.overflow = True
                self.events, self.logs, self.ended = set(), set(), set()

    def __bool__(self) -> bool:
        return bool(self.events or self.logs or self.overflow)

    def take(self) -> Changes:
        """Everything held, as one ``Changes``; it holds nothing afterwards."""
        changes = Changes(frozenset(self.events), frozenset(self.logs), frozenset(self.ended), self.overflow)
        self.events, self.logs, self.ended, self.overflow = set(), set(), set(), False
        return changes


class Subscription:
    """A listener on the change feed: ``fn(changes)`` runs on this subscription's own thread after each commit
    that changed something (changes merged while it ran). ``close()``, or the end of its ``with`` block, stops
    it: no call starts afterwards (one already running finishes on its thread)."""

    def __init__(self, feed: ChangeFeed | None, fn: Callable[[Changes], Any], name: str = "scf_nb-subscriber") -> None:
        self._feed = feed
        self._fn = fn
        self._cond = threading.Condition()
        self._unread = Unread()
        self._closed = False
        self._finishing = False  # the feed closes: deliver what is pending, then stop
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop listening (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify()
        if self._feed is not None:
            self._feed._unsubscribe(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def push(self, changes: Changes) -> None:
        """Hand ``changes`` to this subscription (merged with what it has not taken yet): what a feed does after
        each commit; a client whose changes come from elsewhere (the HTTP client's stream) calls it too."""
        self._offer(changes)

    def _offer(self, changes: Changes) -> None:
        with self._cond:
            if self._closed:
                return
            self._unread.add(changes)
            self._cond.notify()

    def _finish(self, timeout: float) -> None:
        with self._cond:
            self._finishing = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self._unread or self._closed or self._finishing):
                    self._cond.wait()
                if self._closed or not self._unread:
                    return
                changes = self._unread.take()
            try:
                self._fn(changes)
            except Exception:
                log.exception("scf_nb: a change feed listener raised (it stays subscribed): %r", self._fn)


class ChangeFeed:
    """The one source of "these events changed", fed by ``Store.sync`` after each commit.

    Args:
        store: the store whose commits it announces (and reads, for a follower's lines and RequestIds).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # published, not yet dispatched (guarded by _lock)
        self._touched: list[list[EventState]] = []
        self._runs: list[list[Run]] = []
        self._chars = 0
        self._dropped: set[int] = set()  # keys whose published lines were dropped (over MAX_PENDING_CHARS)
        self._ended: list[list[EventState]] = []
        # listeners: replaced, never changed in place, so the dispatcher reads them without the lock
        self._subs: tuple[Subscription, ...] = ()
        self._tails: dict[int, tuple[Tail, ...]] = {}
        # RequestId -> (has it ended?, its callbacks); guarded by _lock
        self._callbacks: dict[str, tuple[Callable[[], bool], list[Callable[[], Any]]]] = {}
        self._done_runner: Subscription | None = None
        self._observed = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._names: dict[int, str] = {}  # the dispatcher's only

    # -- the store's side -------------------------------------------------------------------------------------
    def publish(self, touched: list[EventState], logs: LogBuffer, ended: list[EventState]) -> None:
        """After a commit (called under the store's flush lock, so in commit order): the events changed since
        the last one, the log lines it wrote, the events whose terminal state it wrote."""
        with self._lock:
            if touched:
                self._touched.append(touched)
            if logs:
                if self._chars + logs.chars <= MAX_PENDING_CHARS:
                    self._runs.append(logs.runs)
                    self._chars += logs.chars
                else:
                    self._dropped.update(run[0] for run in logs.runs)
            if ended:
                self._ended.append(ended)
            self._wake.notify()

    # -- listeners ------------------------------------------------------------------------------------------------
    def subscribe(self, fn: Callable[[Changes], Any]) -> Subscription:
        with self._lock:
            if self._closed:
                raise ScfError("FailedOperation.EngineStopped", "the engine was shut down")
            sub = Subscription(self, fn)
            self._subs += (sub,)
            self._refresh()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            self._subs = tuple(s for s in self._subs if s is not sub)
            self._refresh()

    def follow(self, key: int, after_seq: int, ended: Callable[[], bool], timeout: float | None) -> LogFollower:
        """The lines of event ``key`` after ``after_seq``, then each line as it is committed (see follow.py)."""
        return LogFollower(self, key, after_seq, ended, timeout)

    def add_tail(self, tail: Tail) -> None:
        with self._lock:
            if self._closed:
                tail.close()
                return
            self._tails = {**self._tails, tail.key: self._tails.get(tail.key, ()) + (tail,)}
            self._refresh()

    def remove_tail(self, tail: Tail) -> None:
        with self._lock:
            rest = tuple(t for t in self._tails.get(tail.key, ()) if t is not tail)
            tails = dict(self._tails)
            if rest:
                tails[tail.key] = rest
            else:
                tails.pop(tail.key, None)
            self._tails = tails
            self._refresh()

    def add_done_callback(self, request_id: str, call: Callable[[], Any], ended: Callable[[], bool]) -> None:
        """Run ``call()`` once when event ``request_id`` ends: at once in this thread if ``ended()`` says it has,
        else on the callbacks' thread after the commit of its end. An exception in it is logged."""
        with self._lock:
            closed = self._closed
            if not closed:
                self._callbacks.setdefault(request_id, (ended, []))[1].append(call)
                if self._done_runner is None:
                    self._done_runner = Subscription(None, self._run_callbacks, "scf_nb-callbacks")
                self._refresh()
        if not closed:
            try:
                has_ended = ended()
            except BaseException:
                self._take_callback(request_id, call)
                raise
            if not has_ended or not self._take_callback(request_id, call):
                return  # the callbacks' thread runs it (or has just taken it)
        call_back(call)

    def _take_callback(self, request_id: str, call: Callable[[], Any]) -> bool:
        with self._lock:
            entry = self._callbacks.get(request_id)
            calls = entry[1] if entry is not None else []
            for i, c in enumerate(calls):
                if c is call:
                    del calls[i]
                    if not calls:
                        del self._callbacks[request_id]
                        self._refresh()
                    return True
        return False

    def _run_callbacks(self, changes: Changes) -> None:
        ids = set(changes.ended)
        if changes.overflow:  # which ended is not known: ask each event that has callbacks (outside the lock)
            with self._lock:
                waiting = [(rid, entry[0]) for rid, entry in self._callbacks.items()]
            ids = {rid for rid, ended in waiting if safely_ended(ended)}
        with self._lock:
            due = [call for rid in ids if rid in self._callbacks for call in self._callbacks.pop(rid)[1]]
            self._refresh()
        for call in due:
            call_back(call)

    def _refresh(self) -> None:
        """Observe the store while anyone listens (hold ``_lock``)."""
        wanted = bool(self._subs or self._tails or self._callbacks) and not self._closed
        if wanted != self._observed:
            self._observed = wanted
            self.store.observe(wanted)
        if wanted and self._thread is None:
            self._thread = threading.Thread(target=self._dispatch_loop, name="scf_nb-feed", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """After the store's last commit: deliver what was published, end the followers, stop the threads."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._refresh()
            self._wake.notify()
            thread = self._thread
        deadline = time.monotonic() + CLOSE_WAIT_S  # for all of it: a blocked listener does not hold each up
        if thread is not None and thread is not threading.current_thread():
            thread.join(CLOSE_WAIT_S)
        for tails in self._tails.values():
            for tail in tails:
                tail.close()
        for sub in ((self._done_runner,) if self._done_runner is not None else ()) + self._subs:
            sub._finish(max(0.0, deadline - time.monotonic()))

    # -- the dispatcher thread ----------------------------------------------------------------------------------
    def _dispatch_loop(self) -> None:
        while True:
            with self._lock:
                while not (self._touched or self._runs or self._dropped or self._ended or self._closed):
                    self._wake.wait()
                if not (self._touched or self._runs or self._dropped or self._ended):
                    return  # closed, and everything published was delivered
                touched, runs, dropped, ended = self._touched, self._runs, self._dropped, self._ended
                self._touched, self._runs, self._chars, self._dropped, self._ended = [], [], 0, set(), []
            try:
                self._dispatch(touched, runs, dropped, ended)
            except Exception:
                log.exception("scf_nb change feed error")

    def _dispatch(self, touched: list[list[EventState]], runs: list[list[Run]], dropped: set[int],
                  ended: list[list[EventState]]) -> None:
        names, tails = self._names, self._tails
        events = set()
        for batch in touched:
            for ev in batch:
                names[ev.key] = ev.request_id
                events.add(ev.request_id)
        log_keys = self._route(runs, dropped, tails, bool(self._subs))
        ended_evs = [ev for batch in ended for ev in batch]
        for ev in ended_evs:
            for tail in tails.get(ev.key, ()):
                tail.end()
        ended_ids = frozenset(ev.request_id for ev in ended_evs)
        if self._subs:
            changes = Changes(frozenset(events) | ended_ids, frozenset(self._request_ids(log_keys)), ended_ids)
            for sub in self._subs:
                sub._offer(changes)
        runner = self._done_runner
        if ended_ids and runner is not None and self._callbacks:
            runner._offer(Changes(ended_ids, frozenset(), ended_ids))
        for ev in ended_evs:
            names.pop(ev.key, None)
        if len(names) > MAX_NAMES:
            names.clear()
        for its_tails in tails.values():
            for tail in its_tails:
                if tail.abandoned:
                    self.remove_tail(tail)

    @staticmethod
    def _route(runs: list[list[Run]], dropped: set[int], tails: dict[int, tuple[Tail, ...]], subs: bool) -> set[int]:
        """Hand each follower its event's runs (in commit order); returns the keys with new lines (when
        ``subs``: only subscribers need them)."""
        if not tails:
            return {run[0] for batch in runs for run in batch} | dropped if subs else set()
        keys: set[int] = set(dropped)
        mine: dict[int, list[Run]] = {}
        for batch in runs:
            for run in batch:
                k = run[0]
                keys.add(k)
                if k in tails:
                    mine.setdefault(k, []).append(run)
        for k, its_runs in mine.items():
            for tail in tails[k]:
                tail.push(its_runs)
        for k in dropped:
            for tail in tails.get(k, ()):
                tail.mark_gap()
        return keys

    def _request_ids(self, keys: set[int]) -> set[str]:
        names = self._names
        missing = [k for k in keys if k not in names]
        if missing:  # events of before the first listener, or lines their leftovers printed after their end
            try:
                names.update(self.store.request_ids(missing))
            except Exception:
                log.exception("scf_nb change feed: RequestIds of %d events not found", len(missing))
        return {names[k] for k in keys if k in names}


def safely_ended(ended: Callable[[], bool]) -> bool:
    """``ended()``, where an error (the event is gone: purged) counts as ended: nothing will end it later."""
    try:
        return bool(ended())
    except Exception:
        return True  # gone (purged): nothing will end it later


def call_back(call: Callable[[], Any]) -> None:
    """Run a done callback; what it raises is logged (logger ``scf_nb``) and harms nothing."""
    try:
        call()
    except Exception:
        log.exception("scf_nb: a done callback raised")
