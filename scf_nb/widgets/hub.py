"""The one source of updates for every view of a kernel: a single subscription to the client's change feed
and a single thread that does the views' timed work. No view polls the store.

::

    client.subscribe (one for all views)          scf_nb-views (one thread)
    -------------------------------------          -------------------------
    Changes after a commit  ->  each listening     takes the views whose turn is due, in time order,
    view decides whether it concerns it and        and runs ``view._turn()``: a table refreshes (at
    asks for a turn: ``schedule(view, delay)``     most once a second), an event view redraws its
    (a table: a second after its last refresh)     status, a log pane sends its batch of lines

While no view listens the subscription is closed (the store then records nothing for it), and while no turn
is due the thread waits on a condition: an idle table, pane or event view costs nothing. The thread ends
after ``IDLE_EXIT_S`` with no view listening and nothing due, and starts again with the next turn asked for.
A log pane's lines come from its own ``follow`` iterator; the hub only paces how often it sends them.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..clients.protocol import ClientProtocol
    from ..store.observe import Changes, Subscription

log = logging.getLogger("scf_nb")
IDLE_EXIT_S = 30.0


class View(Protocol):
    def _turn(self) -> None:
        """Do what is due (on the hub's thread)."""

    def _changed(self, changes: Changes) -> None:
        """The store committed ``changes``: schedule a turn if they concern this view (on the feed's thread)."""


class Hub:
    """One client's views: their shared subscription and the thread that gives them their turns."""

    def __init__(self, client: ClientProtocol) -> None:
        self._client = weakref.ref(client)  # the hubs' table is keyed by the client: no strong reference back
        self._cond = threading.Condition()
        self._listeners: set[View] = set()
        self._due: dict[View, float] = {}  # view -> monotonic time of its next turn
        self._sub: Subscription | None = None
        self._thread: threading.Thread | None = None
        self.turns = 0  # turns given so far (for tests and benchmarks: proof of idleness)

    def listen(self, view: View) -> None:
        """Give ``view`` the store's changes from now on (opens the shared subscription if needed)."""
        with self._cond:
            self._listeners.add(view)
            if self._sub is not None and not self._sub.closed:
                return
        client = self._client()
        if client is None:
            raise RuntimeError("scf_nb: the client of these views is gone")
        sub: Subscription | None = client.subscribe(self._on_changes)
        with self._cond:
            if self._sub is None or self._sub.closed:
                self._sub, sub = sub, None
        if sub is not None:  # another view opened it meanwhile
            sub.close()

    def forget(self, view: View) -> None:
        """No more changes nor turns for ``view``; the subscription closes with the last listener."""
        sub = None
        with self._cond:
            self._listeners.discard(view)
            self._due.pop(view, None)
            if not self._listeners:
                sub, self._sub = self._sub, None
                self._cond.notify()  # the thread may end, after a while
        if sub is not None:
            sub.close()

    @property
    def subscribed(self) -> bool:
        with self._cond:
            return self._sub is not None and not self._sub.closed

    def due(self) -> int:
        """How many views wait for a turn (0: the hub is idle)."""
        with self._cond:
            return len(self._due)

    def schedule(self, view: View, delay: float = 0.0) -> None:
        """Give ``view`` a turn in ``delay`` seconds (or at its earlier turn, if it has one)."""
        at = time.monotonic() + max(0.0, delay)
        with self._cond:
            if self._due.get(view, at + 1) > at:
                self._due[view] = at
                self._cond.notify()
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="scf_nb-views", daemon=True)
                self._thread.start()

    def _on_changes(self, changes: Changes) -> None:
        with self._cond:
            listeners = list(self._listeners)
        for view in listeners:
            try:
                view._changed(changes)
            except Exception:  # a broken view never stops the others (huey's signals do the same)
                log.exception("scf_nb: a view failed on a change")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    now = time.monotonic()
                    due = sorted((at, id(v), v) for v, at in self._due.items() if at <= now)
                    if due:
                        break
                    if self._due:
                        self._cond.wait(min(self._due.values()) - now)
                    elif self._listeners:
                        self._cond.wait()
                    elif not self._cond.wait(IDLE_EXIT_S) and not self._due and not self._listeners:
                        self._thread = None  # nothing to do for a while: schedule() starts another
                        return
                for _, _, view in due:
                    del self._due[view]
            for _, _, view in due:
                self.turns += 1
                try:
                    view._turn()
                except Exception:
                    log.exception("scf_nb: a view failed to update")


_hubs: weakref.WeakKeyDictionary[Any, Hub] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def hub_for(client: ClientProtocol) -> Hub:
    """The hub of ``client``'s views: one per client (so one subscription per kernel and client)."""
    with _lock:
        hub = _hubs.get(client)
        if hub is None:
            hub = _hubs[client] = Hub(client)
        return hub


class Shown:
    """Mixin for a view widget: whether a browser shows it now, from the front end's count of its views
    (ipywidgets' ``_view_count``, tracked once set to 0). Until a front end has reported a view the widget
    counts as shown (a fresh output, a test without a browser); once every view of it is gone (its output
    cleared, its notebook closed) it is not, and ``_became_shown`` runs when one comes back."""

    _views_seen = False

    def _track_views(self) -> None:
        self._view_count = 0
        self.observe(self._on_view_count, names="_view_count")  # type: ignore[attr-defined]

    @property
    def shown(self) -> bool:
        return not self._views_seen or bool(self._view_count)

    def _on_view_count(self, change: Any) -> None:
        if change["new"]:
            self._views_seen = True
            self._became_shown()

    def _became_shown(self) -> None:
        pass
