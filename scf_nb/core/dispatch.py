"""The engine's dispatcher: which instance runs the FIFO's next event, starting instances under the limits, and
sending events ahead to busy instances (``ahead.py`` has the records that make that safe).

``Dispatcher`` is mixed into :class:`scf_nb.core.engine.Engine` and runs only on the engine thread. Rules:

- An event goes to an idle instance of its function's revision, else to a new one (the warm spare if there is
  one) if ``concurrency`` and ``max_workers`` allow, else, if its payload is small, ahead to a busy instance
  (up to ``AHEAD`` each, round robin), else it waits in the FIFO.
- An event sent ahead stays QUEUED until the event before it on that instance returns. Before anything kills
  an instance, ``_settle`` takes back what was sent ahead (to the front of the FIFO) or, for what the worker
  has already started, reads the "done" messages that precede it, so the kill hits exactly what runs.
- An idle instance, or room for a new one, takes over events waiting behind a busy instance (the event
  running there may take hours).
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .ahead import Slots, slot_path
from .instances import BUSY, IDLE, Instance
from .status import Status

if TYPE_CHECKING:
    from .config import Config
    from .functions import Function
    from .records import EventState
    from .store import Store

log = logging.getLogger("scf_nb")
AHEAD = 4  # events sent ahead to each busy instance at most
# Only small events are sent ahead: a few of them always fit in the socket's buffer, so sending one never
# blocks the engine on an instance that is busy and not reading (a 6 MB sync payload would).
AHEAD_MAX_BYTES = 16 * 1024
_CPUS = os.cpu_count() or 1  # the default concurrency (os.cpu_count() reads a file each call)


def _small(payload: str) -> bool:
    """At most AHEAD_MAX_BYTES in UTF-8 (a character takes up to 4 bytes: count them only when it matters)."""
    return len(payload) * 4 <= AHEAD_MAX_BYTES or len(payload.encode("utf-8", "surrogatepass")) <= AHEAD_MAX_BYTES


class Dispatcher:
    """Dispatch and sending ahead, mixed into the Engine."""

    if TYPE_CHECKING:  # provided by Engine / InstanceIO
        config: Config
        store: Store
        _queues: dict[tuple[str, str], deque[EventState]]
        _pools: dict[tuple[str, str], list[Instance]]
        _all: set[Instance]
        _by_token: dict[str, Instance]
        _spare: Instance | None
        _closing: bool
        _closed: bool
        _need_dispatch: bool
        _address: str
        _numbers: Any
        _spawner: Any

        def clock(self) -> float: ...
        def _schedule(self, delay: float, kind: str, obj: Any) -> None: ...
        def _kill(self, inst: Instance, outcome: Any, sig: int = ..., grace: float = ...) -> None: ...
        def _on_conn(self, fd: int, inst: Instance) -> bool: ...
        def _handle_msgs(self, inst: Instance) -> bool: ...
        def _post(self, item: tuple[Any, ...]) -> None: ...
        def _on_pipe(self, fd: int, inst: Instance) -> bool: ...
        def _end(self, ev: EventState, status: Status, **fields: Any) -> None: ...
        def _load(self, inst: Instance) -> None: ...
        def _watch(self, inst: Instance) -> None: ...

    # -- dispatch ---------------------------------------------------------------------------------------------
    def _dispatch(self, key: tuple[str, str]) -> None:
        queue = self._queues.get(key)
        while queue and not self._closing:
            inst = self._instance_for(queue[0].fn)
            if inst is None:
                break
            self._assign(inst, queue.popleft())
        if queue and not self._closing:
            self._fill_ahead(queue)
        if not queue:
            self._queues.pop(key, None)

    def _dispatch_waiting(self) -> None:
        """Capacity changed somewhere: every queue, and every event waiting behind a busy instance, may move."""
        for key, pool in list(self._pools.items()):
            if any(inst.ahead for inst in pool):
                self._reclaim(key, pool)
        for key in list(self._queues):
            self._dispatch(key)

    def _instance_for(self, fn: Function) -> Instance | None:
        """An idle instance of ``fn``'s revision, or a new one if the limits allow (replacing an idle one
        of stale code, or of another function, when that is what stands in the way)."""
        pool = self._pools.setdefault(fn.key, [])
        stale = None
        for inst in pool:
            if inst.state == IDLE:
                if inst.revision == fn.revision:
                    return inst
                stale = inst
        if len(pool) >= (fn.concurrency or _CPUS):
            if stale is not None:
                self._kill(stale, None)  # make room; the event goes once it is reaped (milliseconds)
            return None
        if sum(len(p) for p in self._pools.values()) >= self.config.max_workers:
            idle = [i for p in self._pools.values() for i in p if i.state == IDLE]
            if idle:
                self._kill(min(idle, key=lambda i: i.idle_since), None)
            return None
        return self._start(fn)

    def _start(self, fn: Function) -> Instance:
        """An instance for ``fn``: the warm spare if there is one (no process start), else a new process."""
        inst, self._spare = self._spare, None
        if inst is None:
            inst = self._spawn(fn)
        else:
            inst.fn = fn
            if inst.conn is not None:
                try:
                    self._load(inst)
                except (OSError, ValueError):
                    self._broken(inst)
        self._pools.setdefault(fn.key, []).append(inst)
        self._ensure_spare()
        return inst

    def _spawn(self, fn: Function | None) -> Instance:
        inst = Instance(fn, next(self._numbers), os.urandom(16).hex())
        inst.started_at = time.monotonic()
        self._all.add(inst)
        self._by_token[inst.token] = inst
        self._spawner.spawn(inst, self._address)
        return inst

    def _ensure_spare(self) -> None:
        if self.config.warm_spare and self._spare is None and not self._closing and not self._closed:
            self._spare = self._spawn(None)

    def _assign(self, inst: Instance, ev: EventState) -> None:
        self._begin(inst, ev)
        if inst.state == IDLE:
            self._send_run(inst)

    def _begin(self, inst: Instance, ev: EventState) -> None:
        """``ev`` is RUNNING on ``inst`` from now."""
        with self.store.lock:
            ev.status = Status.RUNNING
            ev.run_time = self.clock()
            ev.instance_pid = inst.pid
            self.store.changed(ev)
        ev.instance = inst
        inst.event = ev
        inst.deadline = time.monotonic() + ev.fn.effective_timeout
        if not inst.deadline_armed:  # at most one timer per instance, not one per event (held for hours)
            inst.deadline_armed = True
            self._schedule(ev.fn.effective_timeout, "deadline", inst)
        if ev.fn.memory_mb:
            self._watch(inst)

    def _send_run(self, inst: Instance) -> None:
        ev = inst.event
        assert ev is not None
        inst.state = BUSY
        try:  # the function's name, settings and timeout came with "load" (an instance serves one revision)
            inst.send(("run", ev.request_id, ev.payload, ev.qualifier, ev.fn.version, None))
        except (OSError, ValueError):  # it is gone: the event never got there, so it goes first again
            inst.event = None
            ev.instance = None
            with self.store.lock:
                ev.status, ev.run_time, ev.instance_pid = Status.QUEUED, None, None
                self.store.changed(ev)
            self._queues.setdefault(ev.fn.key, deque()).appendleft(ev)
            self._broken(inst)

    # -- sending ahead ------------------------------------------------------------------------------------------
    def _fill_ahead(self, queue: deque[EventState]) -> None:
        """Every instance is busy: send the FIFO's next events ahead, one per busy instance per round, up to
        ``AHEAD`` each. The FIFO's head stops it (too big, or of another revision): nothing jumps it."""
        pool = [inst for inst in self._pools.get(queue[0].fn.key, ())
                if inst.state == BUSY and inst.event is not None and inst.conn is not None and not inst.settling]
        while queue and pool:
            for inst in list(pool):
                ev = queue[0]
                if (len(inst.ahead) >= AHEAD or inst.revision != ev.fn.revision or inst.state != BUSY
                        or not _small(ev.payload)):
                    pool.remove(inst)
                    continue
                queue.popleft()
                try:
                    sent = self._send_ahead(inst, ev)
                except Exception:  # never lose the event: it stays first in the FIFO
                    log.exception("scf_nb: sending an event ahead failed")
                    sent = False
                if not sent:
                    queue.appendleft(ev)
                    pool.remove(inst)
                if not queue:
                    return

    def _send_ahead(self, inst: Instance, ev: EventState) -> bool:
        if inst.slots is None:
            inst.slots = Slots(slot_path(self._address, inst.token))
        seq = inst.ahead_seq + 1
        if not inst.slots.reserve(seq):
            return False
        inst.ahead_seq = seq
        try:
            inst.send(("run", ev.request_id, ev.payload, ev.qualifier, ev.fn.version, seq))
        except (OSError, ValueError):  # it is gone: the run never got there whole, nothing can claim it
            inst.slots.revoke(seq)
            self._broken(inst)
            return False
        inst.ahead.append((ev, seq))
        ev.instance = inst
        return True

    def _broken(self, inst: Instance) -> None:
        """A send to ``inst`` failed (its process is gone). It is killed from the loop's next turn, not here:
        this may run in the middle of handling its messages, and a kill decision must see them all."""
        self._need_dispatch = True
        self._post(("broken", inst))

    def _settle(self, inst: Instance) -> bool:
        """Make the engine's view of ``inst`` exact before a kill: take back the events sent ahead, newest
        first (the worker takes them in order, so once one has started every one before it has); those go
        back to the front of the FIFO. If one has started, the "done" of each before it is readable now (sent
        before it started): read them, which makes it the current event. Nothing is dispatched meanwhile.

        Returns:
            False if the worker could not be asked (it holds the records' lock: stopped?): nothing is exact,
            try again later.
        """
        inst.settling = True
        try:
            back: list[EventState] = []
            answer: bool | None = True
            while inst.ahead:
                answer = inst.slots.revoke(inst.ahead[-1][1])
                if not answer:
                    break
                ev, _seq = inst.ahead.pop()
                ev.instance = None
                back.append(ev)
            if back:
                self._queues.setdefault(back[0].fn.key, deque()).extendleft(back)  # newest first: order kept
                self._need_dispatch = True
            if answer is None:
                return False
            for _ in range(10_000):
                if not inst.ahead:
                    return True
                progress = self._handle_msgs(inst)
                progress = (inst.conn_fd in inst.open_fds and self._on_conn(inst.conn_fd, inst)) or progress
                for fd in list(inst.streams):
                    progress = (fd in inst.open_fds and self._on_pipe(fd, inst)) or progress
                if not progress:
                    break
            return not inst.ahead  # else the worker is gone: _maybe_reap settles the rest
        finally:
            inst.settling = False

    def _steal(self, idle: Instance) -> None:
        """``idle`` has nothing to do: take over the oldest event sent ahead to a busy instance (it waits there
        behind an event that may run for hours, and it is older than anything in the FIFO)."""
        for inst in self._pools.get(idle.key, ()):  # type: ignore[arg-type]
            for i, (ev, seq) in enumerate(inst.ahead):
                if ev.fn.revision == idle.revision and inst.slots.revoke(seq):  # the worker will skip it
                    del inst.ahead[i]
                    self._assign(idle, ev)
                    return

    def _reclaim(self, key: tuple[str, str], pool: list[Instance]) -> None:
        """Room for another instance (one was reaped): the oldest event sent ahead goes back to the front of
        the FIFO, for a new instance to take."""
        waiting = [inst for inst in pool if inst.ahead and inst.state == BUSY]
        if not waiting:
            return
        inst = min(waiting, key=lambda i: i.ahead[0][0].key)
        ev, seq = inst.ahead[0]
        room = any(i.state == IDLE for i in pool) or (
            len(pool) < (ev.fn.concurrency or _CPUS)
            and sum(len(p) for p in self._pools.values()) < self.config.max_workers)
        if room and inst.slots.revoke(seq):
            inst.ahead.popleft()
            ev.instance = None
            self._queues.setdefault(key, deque()).appendleft(ev)

    def _release_ahead(self, inst: Instance) -> None:
        """``inst`` is gone: what was sent ahead and never started goes back to its FIFO (or fails, if the
        engine is stopping); what may have started fails with the instance. Its records tell which."""
        for ev, seq in reversed(inst.ahead):
            if ev.status.is_terminal:
                continue
            ev.instance = None
            revoked = inst.slots is not None and inst.slots.revoke(seq) is True
            if revoked and not self._closing:
                self._queues.setdefault(ev.fn.key, deque()).appendleft(ev)
                self._need_dispatch = True
            elif revoked:
                self._end(ev, Status.FAILED, duration_ms=0.0, error_type="EngineStopped",
                          error_message="the engine stopped before the event ran", exit_reason="engine stopped")
            else:
                self._end(ev, Status.FAILED, error_type="InstanceDied", exit_reason="instance died",
                          error_message="the instance it was sent ahead to died (it may have started)")
        inst.ahead.clear()
