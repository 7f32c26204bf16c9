"""The engine: admission, the per-function FIFO dispatcher, instance life cycles, terminate and timeouts.

::

    invoke() [any thread]                 engine thread (one epoll loop)                  instances
    ---------------------                 ---------------------------------               ---------
    check function + event, rate limit
    RequestId, QUEUED record -> store buffer
    inbox.append(event), wake ------->    per-function FIFO -> idle instance? --- run --->  serve loop
    return Event (no disk, no process)        else start one (Spawner, loky)                 handler
                                              else send ahead to every busy one --- run --->  (the first to
                                              (ahead.py; still QUEUED)                       finish claims it)
                                          pipes: bytes -> lines -> store buffer  <-- fd 1/2 -- print/C/children
                                          "done" + END markers on both pipes  <---- done ----
                                          -> FINISHED / FAILED (instance replaced)
    terminate() -> inbox -------------->  ban the instance from claiming what was sent ahead, then
                                          SIGKILL (or SIGTERM, SIGKILL after grace) the
                                          instance's process group; read pipes to EOF -> ABORTED
                                          timers: timeouts, grace kills, memory limits, idle instances

Only this thread changes an event's status (under the store's lock, which also guards the write buffer),
so a terminal status is final and every reader sees the newest one. The store's writer thread turns the
buffers into batched DuckDB writes off the invoke path. ``Engine`` is this module plus three mixins, each
run on the engine thread only: ``dispatch.py`` (which instance runs what, sending ahead), ``instance_io.py``
(hello, connection and pipe readers, the end of an event, kill and reap) and ``timers.py`` (deadlines, the
tick: idle instances, start timeouts, memory limits).
"""

from __future__ import annotations

import _thread
import heapq
import itertools
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections import deque
from typing import Any

from .admission import Admission, TokenBucket, encode_event
from .config import Config
from .dispatch import _CPUS, Ahead, Dispatcher
from .errors import ScfError
from .functions import Function, Registry
from .instance_io import InstanceIO, Poller
from .instances import DYING, IDLE, REAPED, Instance, Outcome, Spawner, at_exit, cancel_at_exit, leftovers
from .recent import RecentEvents
from .records import EventState, make_request_id
from .status import Status, can_move
from .store import Store
from .timers import RETRY_S, Timers

log = logging.getLogger("scf_nb")


class Engine(Dispatcher, Timers, InstanceIO):
    """Runs events of registered functions in instance processes and records everything in the store.

    Args:
        config: the settings; ``config.db_path`` must not be open in another process.

    Raises:
        ScfError: ``FailedOperation.StoreLocked`` when another process holds the store.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = config.clock
        self._live: dict[str, EventState] = {}
        self._recent = RecentEvents()  # ended, on disk, still cheap to read
        self._waiters: dict[str, list[_Countdown]] = {}  # threads waiting for an event to end
        self._to_wake: list[Any] = []  # their locks, released at the end of this turn of the loop
        self._queues: dict[tuple[str, str], deque[EventState]] = {}
        self._pools: dict[tuple[str, str], list[Instance]] = {}  # instances not dying, per function
        self._ahead: dict[tuple[str, str], Ahead] = {}  # events sent ahead, per function
        self._offering: dict[tuple[str, str], tuple[float, float]] = {}  # unanswered offers: next look, backoff
        self._start_deaths: dict[tuple[str, str], int] = {}  # instances dead before connecting, in a row
        self._all: set[Instance] = set()
        self._by_token: dict[str, Instance] = {}
        self._inbox: deque[tuple[Any, ...]] = deque()
        self._timers: list[tuple[float, int, str, Any]] = []
        self._timer_seq = itertools.count()
        self._numbers = itertools.count(1)
        self._admission = Admission(config.max_qps)
        self._sleeping = False
        self._need_dispatch = False
        self._closing = False
        self._closed = False
        self.loop_errors = 0
        _remove_stale_sockdirs()
        self._sockdir = tempfile.mkdtemp(prefix=f"scf_nb-{os.getpid()}-")
        self._address = os.path.join(self._sockdir, "engine.sock")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self._address)
        self._listener.listen(128)
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sel = Poller()
        self._sel.register(self._listener, (self._on_accept, None))
        self._sel.register(self._wake_r, (self._on_wake, None))
        self._init_memory()  # finds out (on a thread of its own) whether memory_mb can be a cgroup's limit
        self._spawner = Spawner(lambda inst: self._post(("exited", inst)))
        self._spare: Instance | None = None
        self._ensure_spare()  # its process starts while the store opens
        try:
            self.store = Store(config.db_path, config.store_memory_mb, self._committed)
        except BaseException:
            self._abandon()
            raise
        try:
            self.recovered = self._recover()
            self.registry = Registry(self.store.load_functions())
            self._keys = itertools.count(self.store.max_event_key() + 1)
        except BaseException:
            self.store.close()
            self._abandon()
            raise
        self.store.start(config.flush_interval, self._retention_cutoff)
        self._thread = threading.Thread(target=self._run, name="scf_nb-engine", daemon=True)
        self._thread.start()
        self._schedule(1.0, "tick", None)
        at_exit(self.close)

    # == the API's side (any thread) ==========================================================================
    def create_function(self, fn: Function) -> Function:
        fn = self.registry.put_latest(fn, self.clock())
        self.store.save_functions([fn])
        return fn

    def publish_version(self, namespace: str, name: str, description: str) -> Function:
        fn = self.registry.publish(namespace, name, description, self.clock())
        self.store.save_functions([fn])
        return fn

    def delete_function(self, namespace: str, name: str) -> None:
        self.registry.get(namespace, name)
        busy = [ev.request_id for ev in list(self._live.values())
                if ev.fn.key == (namespace, name) and not ev.status.is_terminal]
        if busy:
            raise ScfError("FailedOperation.FunctionStatusError",
                           f"{namespace}/{name} has {len(busy)} queued or running events (e.g. {busy[0]}); "
                           f"terminate them or wait, then delete")
        self.registry.remove(namespace, name)
        self.store.delete_function(namespace, name)
        self._post(("retire", (namespace, name)))

    def invoke(self, name: str, event: Any, qualifier: str, namespace: str) -> EventState:
        """Accept an event: no disk I/O and no process round trip on this path."""
        fn = self.registry.get(namespace, name, qualifier)
        payload = encode_event(event, fn.async_run)
        self._admission.admit(fn, time.monotonic())
        key = next(self._keys)
        ev = EventState(key, make_request_id(key), fn, fn.version, payload, self.clock())
        with self.store.lock:  # close() sets _closed under it too: an accepted event reaches the loop first
            if self._closed:
                raise ScfError("FailedOperation.EngineStopped", "the engine was shut down")
            self._live[ev.request_id] = ev
            self.store.add_event(ev)
            self._post(("invoke", ev))
        return ev

    def live(self, request_id: str) -> EventState | None:
        """The in-memory record of an event not yet on disk in its final state, or of a recently ended one
        (which the store has too: a cheap read instead of a query)."""
        ev = self._live.get(request_id)
        if ev is not None:
            return ev
        ev = self._recent.get(request_id)
        if ev is not None and ev.start_time < self._retention_cutoff():
            return None  # maybe purged already: let the store say
        return ev

    def terminate(self, ev: EventState, grace: bool) -> None:
        self._post(("terminate", ev, grace))

    def unfinished(self) -> list[EventState]:
        """The events that are QUEUED or RUNNING now, oldest first."""
        return sorted((ev for ev in list(self._live.values()) if not ev.status.is_terminal), key=lambda e: e.key)

    def reconfigure(self, config: Config) -> None:
        """Take ``config`` while running; only its ``LIVE_SETTINGS`` may differ from the current one."""
        if config.max_qps != self.config.max_qps:
            self._admission.total = TokenBucket(config.max_qps)
        self.clock = config.clock
        self.config = config
        self._post(("dispatch",))  # a higher max_workers may let queued events start now

    def wait(self, ev: EventState, timeout: float | None) -> Status:
        self.wait_all([ev], timeout)
        return ev.status

    def wait_all(self, events: list[EventState], timeout: float | None) -> bool:
        """Block until every one of ``events`` has ended (True) or ``timeout`` seconds passed (False)."""
        with self.store.lock:
            pending = [ev for ev in events if not ev.status.is_terminal]
            if not pending:
                return True
            waiter = _Countdown(len(pending))
            for ev in pending:
                self._waiters.setdefault(ev.request_id, []).append(waiter)
        return waiter.lock.acquire(timeout=-1 if timeout is None else min(max(0.0, timeout), threading.TIMEOUT_MAX))

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
        cancel_at_exit(self.close)
        self._post(("close",))
        self._thread.join(timeout=15)
        self._spawner.stop()
        self._memory.close()
        self.store.close()
        for ahead in self._ahead.values():
            ahead.shared.close()
        self._sel.close()
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def _abandon(self) -> None:
        """Undo a half-made engine (the store could not be opened)."""
        self._closed = True
        if self._spare is not None:
            self._spare.outcome = Outcome(None)
            self._spare.signal(signal.SIGKILL)
        self._spawner.stop()
        if self._spare is not None and self._spare.executor is not None:
            self._spare.executor.shutdown(wait=False, kill_workers=True)
        self._memory.close()
        self._sel.close()
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        shutil.rmtree(self._sockdir, ignore_errors=True)

    def _post(self, item: tuple[Any, ...]) -> None:
        self._inbox.append(item)
        if self._sleeping:
            _wake(self._wake_w)

    def _committed(self, events: list[EventState]) -> None:
        ended = [ev for ev in events if ev.status.is_terminal]
        self._recent.add(ended)
        for ev in ended:
            self._live.pop(ev.request_id, None)

    # == recovery ==============================================================================================
    def _recover(self) -> int:
        """Fail the events a dead engine left QUEUED/RUNNING, after killing what it left running: every process
        with its mark, in any process group or session (``instances.leftovers``)."""
        groups, marks = self.store.dead_instances()
        unstoppable = []
        for pid in leftovers(groups, marks):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:
                unstoppable.append(pid)
        reason = ("the engine running this event stopped before it ended (kernel restarted or process "
                  "killed); " + (f"its processes {unstoppable} could not be stopped" if unstoppable
                                 else "nothing of it is running now"))
        return self.store.recover(reason, self.clock(), self._spawner.mark)

    # == the engine thread ====================================================================================
    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception:
                self.loop_errors += 1
                log.exception("scf_nb engine loop error")

    def _step(self) -> bool:
        while self._inbox:
            item = self._inbox.popleft()
            getattr(self, "_cmd_" + item[0])(*item[1:])
        timeout = self._run_timers()
        if self._offering:
            timeout = min(timeout, self._poll_claims())
        if self._need_dispatch:  # capacity was freed somewhere: never dispatch re-entrantly
            self._need_dispatch = False
            self._dispatch_waiting()
        if self._to_wake:  # once per turn, when this thread is about to wait: no fight for the GIL with them
            to_wake, self._to_wake = self._to_wake, []
            for waiter in to_wake:
                waiter.release()
        if self._closing and not self._all:
            return True
        self._sleeping = True
        if self._inbox:
            self._sleeping = False
            return False
        ready = self._sel.select(timeout)
        self._sleeping = False
        current = self._sel.data
        for fd, item in ready:
            if current.get(fd) is item:  # not unregistered (or its number reused) by an earlier handler
                item[0](fd, item[1])
        return False

    def _schedule(self, delay: float, kind: str, obj: Any) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay, next(self._timer_seq), kind, obj))

    def _run_timers(self) -> float:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, kind, obj = heapq.heappop(self._timers)
            getattr(self, "_timer_" + kind)(obj)
        return max(0.0, self._timers[0][0] - now) if self._timers else 1.0

    # -- commands -----------------------------------------------------------------------------------------------
    def _cmd_invoke(self, ev: EventState) -> None:
        if ev.status.is_terminal:  # terminated before we got here
            return
        if self._closing:
            self._end(ev, Status.FAILED, duration_ms=0.0, error_type="EngineStopped",
                      error_message="the engine stopped before the event ran", exit_reason="engine stopped")
            return
        queue = self._queues.get(ev.fn.key)
        if queue:  # others wait ahead of it: nothing is free for it either (they would have had it)
            queue.append(ev)
            if len(self._pools.get(ev.fn.key, ())) < (ev.fn.concurrency or _CPUS):
                self._dispatch(ev.fn.key)  # but there is room to start one more instance (the others are starting)
            return
        self._queues[ev.fn.key] = deque((ev,))
        self._dispatch(ev.fn.key)

    def _cmd_terminate(self, ev: EventState, grace: bool) -> None:
        if ev.status.is_terminal:
            return
        ahead = self._ahead.get(ev.fn.key)
        seq = ahead.entry(ev) if ahead is not None and ev.status is Status.QUEUED else None
        if seq is not None:  # sent ahead: take it back, unless a worker has just started it
            assert ahead is not None
            taken = ahead.shared.revoke(seq)
            owner = None if taken is not False else (ahead.shared.started_by([seq]) or {}).get(seq)
            runs_on = next((i for i in self._pools.get(ev.fn.key, ()) if i.number == owner), None)
            if taken:
                ahead.take(seq)
                self._end(ev, Status.ABORTED, duration_ms=0.0, exit_reason="terminated while queued")
            elif taken is False and self._orphaned(ahead, ev, seq):
                self._cmd_terminate(ev, grace)  # its claimer is gone and never ran it: pending again
            elif runs_on is None or not self._settle(runs_on):  # the "done" before it tells where it runs
                self._schedule(RETRY_S, "terminate", (ev, grace))
            else:
                self._cmd_terminate(ev, grace)
            return
        inst = ev.instance
        if inst is not None and self._has_pending(inst):
            if not self._settle(inst):  # which event runs there, exactly, before anything is killed
                self._schedule(RETRY_S, "terminate", (ev, grace))  # the worker could not be asked yet
                return
            if ev.status.is_terminal:  # it returned just before: nothing to stop
                return
            inst = ev.instance
        if ev.status is Status.QUEUED or inst is None:
            queue = self._queues.get(ev.fn.key)
            if queue is not None and ev in queue:
                queue.remove(ev)
            self._end(ev, Status.ABORTED, duration_ms=0.0, exit_reason="terminated while queued")
            return
        if grace and self.config.grace_seconds > 0:
            reason = f"terminated: SIGTERM, then SIGKILL after {self.config.grace_seconds:g} s if still running"
            self._kill(inst, Outcome(Status.ABORTED, None, None, reason), signal.SIGTERM,
                       self.config.grace_seconds)
        else:
            self._kill(inst, Outcome(Status.ABORTED, None, None, "terminated: SIGKILL"))

    def _timer_terminate(self, args: tuple[EventState, bool]) -> None:
        self._cmd_terminate(*args)

    def _cmd_exited(self, inst: Instance) -> None:
        inst.exited = True
        if inst.state != DYING and inst.state != REAPED:
            self._kill(inst, None)
        self._maybe_reap(inst)

    def _cmd_broken(self, inst: Instance) -> None:
        if inst.state != DYING and inst.state != REAPED:
            self._kill(inst, None)

    def _cmd_dispatch(self) -> None:
        self._need_dispatch = True

    def _cmd_retire(self, key: tuple[str, str]) -> None:
        for inst in list(self._pools.get(key, ())):
            if inst.state == IDLE:
                self._kill_idle(inst)

    def _cmd_close(self) -> None:
        self._closing = True
        for inst in list(self._all):  # first: an event sent ahead and not started goes back to its queue
            self._kill(inst, Outcome(Status.FAILED, "EngineStopped", "the engine stopped while the event ran",
                                     "engine stopped"))
        self._abandon_ahead()
        for queue in self._queues.values():
            for ev in queue:
                self._end(ev, Status.FAILED, duration_ms=0.0, error_type="EngineStopped",
                          error_message="the engine stopped before the event ran", exit_reason="engine stopped")
        self._queues.clear()

    # -- wake-up (the instances' sockets, pipes and pidfds are handled in instance_io.py) ---------------------
    def _on_wake(self, fd: int, _: Any) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass

    # -- event ends (completion from "done" + END markers is in instance_io.py) ---------------------------
    def _end(self, ev: EventState, status: Status, **fields: Any) -> None:
        with self.store.lock:
            if not can_move(ev.status, status):  # a terminal status is final
                return
            ev.end(status, self.clock(), **fields)
            ev.instance = None
            self.store.changed(ev)
            waiters = self._waiters.pop(ev.request_id, None)
        if waiters is not None:
            for waiter in waiters:
                waiter.left -= 1
                if not waiter.left:
                    self._to_wake.append(waiter.lock)

class _Countdown:
    """What a waiting thread blocks on: a held lock, released once ``left`` events have ended (a bare lock is
    one futex; a ``threading.Event`` adds a Condition and a lock per wait)."""

    __slots__ = ("left", "lock")

    def __init__(self, left: int) -> None:
        self.left = left
        self.lock = _thread.allocate_lock()
        self.lock.acquire()


def _make_wake() -> Any:
    """A one-byte write that keeps the GIL. ``os.write`` releases it, and the engine thread it just woke
    takes it and dispatches before ``invoke`` can return (measured: invoke p50 85 -> see bench/README.md)."""
    try:
        import ctypes

        write = ctypes.PyDLL(None).write  # PyDLL: the call holds the GIL
        write.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t)
        write.restype = ctypes.c_ssize_t
        return lambda fd: write(fd, b"\0", 1)
    except (OSError, AttributeError):
        def fallback(fd: int) -> None:
            try:
                os.write(fd, b"\0")
            except OSError:
                pass
        return fallback


_wake = _make_wake()


def _remove_stale_sockdirs() -> None:
    """The socket folders of engines whose process died without closing them (SIGKILL, a killed kernel)."""
    tmp = tempfile.gettempdir()
    try:
        names = os.listdir(tmp)
    except OSError:
        return
    for name in names:
        parts = name.split("-")
        if len(parts) != 3 or parts[0] != "scf_nb" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(os.path.join(tmp, name), ignore_errors=True)
        except (PermissionError, OverflowError):
            pass
