"""The engine: events of registered functions run in instances, and everything is recorded in the store.

::

    invoke() [any thread]                 engine thread (Loop: one epoll wait)              instance backend
    ---------------------                 ------------------------------------              ----------------
    check function + event, rate limit
    RequestId, QUEUED record -> store buffer (EventTable)
    loop.send(Dispatcher.invoke) ---->    per-function FIFO -> idle instance? --- offer --->  pending: the first
    return Event (no disk, no process)        else start one (Backend.start)                  instance to claim it
                                              else send ahead to busy ones -- send_ahead ->   runs it
                                          Lifecycle (the backend's Host):  <-- started ----   claimed: RUNNING
                                              lines -> store buffer        <-- lines ------   fds 1/2, per event
                                              FINISHED / FAILED            <-- finished ---   after its last line
    terminate() -> loop.post ---------->  Lifecycle.terminate: take back a QUEUED one, or settle the instance
                                          (what runs there, exactly), then Dispatcher.kill -- kill(grace) -->
                                          timers: deadlines, the tick (idle instances, start timeouts),
                                          MemoryLimits (the watchdog, verdicts)

Only the event table changes an event's status (on this thread, under the store's lock, which also guards
the write buffer), so a terminal status is final and every reader sees the newest one. The store's writer
thread turns the buffers into batched DuckDB writes off the invoke path. The parts (``loop.py``,
``table.py``, ``dispatcher.py``, ``lifecycle.py``, ``memory.py``) each get what they call when they are
made; the instance backend (``scf_nb.instances``) is reached only through its interface.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..core.config import Config
from ..core.errors import ScfError
from ..core.functions import Function, Registry
from ..core.records import EventState, RequestIds
from ..core.status import Status
from ..instances import open_backend
from ..store.store import Store
from .admission import Admission, TokenBucket, encode_event
from .dispatcher import Dispatcher
from .lifecycle import Lifecycle
from .loop import Loop
from .memory import MemoryLimits
from .settings import Settings
from .table import EventTable

log = logging.getLogger("scf_nb")


class Engine:
    """Runs events of registered functions in instances and records everything in the store.

    Args:
        config: the settings; ``config.db_path`` must not be open in another process.

    Raises:
        ScfError: ``FailedOperation.StoreLocked`` when another process holds the store.

    Attributes:
        loop, table, dispatcher, lifecycle, memory: its parts (see the module's docstring).
        backend: the instance backend (``scf_nb.instances.backend.Backend``).
    """

    def __init__(self, config: Config) -> None:
        self.settings = Settings(config)
        self._admission = Admission(config.max_qps)
        self._closed = False
        self.loop = Loop()
        self.table = EventTable(self.settings)
        self.backend = open_backend(config, self.loop, self.close)
        self.memory = MemoryLimits(self.loop, self.backend, self.table)
        self.dispatcher = Dispatcher(self.settings, self.loop, self.table, self.backend, self.memory)
        self._dispatch = self.dispatcher.invoke  # bound once: invoke sends it with each event (Loop.send)
        self.memory.dispatcher = self.dispatcher
        self.lifecycle = Lifecycle(self.settings, self.loop, self.table, self.dispatcher, self.memory, self.backend)
        self.backend.attach(self.lifecycle)
        self.loop.turn_ends += [self.dispatcher, self.table]  # after the backend's own
        self.dispatcher.ensure_spare()  # its process starts while the store opens
        try:
            self.store = Store(config.db_path, config.store_memory_mb, self.table.committed)
        except BaseException:
            self._abandon()
            raise
        self.table.store = self.store
        try:
            self.recovered = self._recover()
            self.registry = Registry(self.store.load_functions())
            self._ids = RequestIds(self.store.max_event_key() + 1)
        except BaseException:
            self.store.close()
            self._abandon()
            raise
        self.store.start(config.flush_interval, self._retention_cutoff)
        self.loop.call_later(1.0, self.lifecycle.tick)
        self.loop.start()

    @property
    def config(self) -> Config:
        return self.settings.config

    @property
    def clock(self) -> Callable[[], float]:
        return self.settings.clock

    @property
    def memory_limit_mode(self) -> str:
        """How ``memory_mb`` is enforced here: ``cgroup2``, ``cgroup1`` (the kernel, at once) or
        ``watchdog`` (samples every 10 ms, and each event's peak when it ends)."""
        return self.backend.memory_limit_mode

    def describe(self) -> dict[str, Any]:
        """Which instance backend runs this engine's events, and where: ``{"backend": "loky", "machine": ...,
        "memory_limit_mode": ...}`` or ``{"backend": "ray", "ray_address": ..., "nodes": ...,
        "engine_address": ..., "instances": ..., "memory_limit_mode": "watchdog"}``. Any thread."""
        return self.backend.info()

    @property
    def closed(self) -> bool:
        """Whether the engine was shut down (``close``): it accepts no event any more."""
        return self._closed

    @property
    def loop_errors(self) -> int:
        return self.loop.errors

    # == the API's side (any thread) ==========================================================================
    def create_function(self, fn: Function) -> Function:
        self.backend.validate(fn)
        fn = self.registry.put_latest(fn, self.clock())
        self.store.save_functions([fn])
        return fn

    def publish_version(self, namespace: str, name: str, description: str) -> Function:
        fn = self.registry.publish(namespace, name, description, self.clock())
        self.store.save_functions([fn])
        return fn

    def delete_function(self, namespace: str, name: str) -> None:
        self.registry.get(namespace, name)
        busy = [ev.request_id for ev in list(self.table.live.values())
                if ev.fn.key == (namespace, name) and not ev.status.is_terminal]
        if busy:
            raise ScfError("FailedOperation.FunctionStatusError",
                           f"{namespace}/{name} has {len(busy)} queued or running events (e.g. {busy[0]}); "
                           f"terminate them or wait, then delete")
        self.registry.remove(namespace, name)
        self.store.delete_function(namespace, name)
        self.loop.post(self.dispatcher.retire, (namespace, name))

    def invoke(self, name: str, event: Any, qualifier: str, namespace: str) -> EventState:
        """Accept an event: no disk I/O (the journal line goes to the page cache) and no process round trip."""
        fn = self.registry.get(namespace, name, qualifier)
        payload = encode_event(event, fn.async_run)
        self._admission.admit(fn, time.monotonic())
        key, request_id = self._ids.take()
        ev = EventState(key, request_id, fn, fn.version, payload, self.clock())
        with self.store.lock:  # close() sets _closed under it too: an accepted event reaches the loop first
            if self._closed:
                raise ScfError("FailedOperation.EngineStopped", "the engine was shut down")
            self.table.accept(ev)
            self.loop.send(self._dispatch, ev)
        self.store.journal.add(ev)  # on disk before its RequestId is returned (store/journal.py)
        return ev

    def live(self, request_id: str) -> EventState | None:
        """The in-memory record of an event not yet on disk in its final state, or of a recently ended one
        (which the store has too: a cheap read instead of a query)."""
        return self.table.get(request_id, self._retention_cutoff)

    def terminate(self, ev: EventState, grace: bool) -> None:
        self.loop.post(self.lifecycle.terminate, ev, grace)

    def unfinished(self) -> list[EventState]:
        """The events that are QUEUED or RUNNING now, oldest first."""
        return self.table.unfinished()

    def reconfigure(self, config: Config) -> None:
        """Take ``config`` while running; only its ``LIVE_SETTINGS`` may differ from the current one."""
        if config.max_qps != self.config.max_qps:
            self._admission.total = TokenBucket(config.max_qps)
        self.settings.set(config)
        self.loop.post(self.dispatcher.need_dispatch)  # a higher max_workers may let queued events start now

    def wait(self, ev: EventState, timeout: float | None) -> Status:
        self.wait_all([ev], timeout)
        return ev.status

    def wait_all(self, events: list[EventState], timeout: float | None) -> bool:
        """Block until every one of ``events`` has ended (True) or ``timeout`` seconds passed (False)."""
        return self.table.wait_all(events, timeout)

    def purge(self) -> int:
        """Apply the retention window now: delete ended events (and logs) older than ``retention_hours``."""
        return self.store.purge(self._retention_cutoff())

    def _retention_cutoff(self) -> float:
        return self.clock() - self.config.retention_hours * 3600.0

    def close(self) -> None:
        """Stop: queued and running events become FAILED (engine stopped), instances die, the store is
        flushed and closed. Idempotent."""
        with self.store.lock:
            if self._closed:
                return
            self._closed = True
        self.dispatcher.closed = True
        self.loop.post(self.dispatcher.close)
        self.loop.join(timeout=15)
        self.backend.close()
        self.store.close()
        self.loop.close()

    def _abandon(self) -> None:
        """Undo a half-made engine (the store could not be opened)."""
        self._closed = True
        self.dispatcher.closed = True
        self.backend.close()
        self.loop.close()

    # == recovery ==============================================================================================
    def _recover(self) -> int:
        """Fail the events a dead engine left QUEUED/RUNNING, after the backend killed what it left running."""
        unstoppable = self.backend.recover(self.store)
        reason = ("the engine running this event stopped before it ended (kernel restarted or process "
                  "killed); " + (f"its processes {unstoppable} could not be stopped" if unstoppable
                                 else "nothing of it is running now"))
        return self.store.recover(reason, self.clock(), self.backend.mark)
