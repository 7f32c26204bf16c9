"""The engine's dispatcher: which instance runs the function's oldest waiting event, starting instances under the
limits, and sending events ahead to busy instances (``ahead.py`` has the records that make that safe).

``Dispatcher`` is mixed into :class:`scf_nb.core.engine.Engine` and runs only on the engine thread. Rules:

- Per function, events start in the order they were accepted. The oldest waiting event is the first one sent
  ahead that no worker has started (``Ahead.pending``), else the FIFO's head (events go ahead from the FIFO's
  head, so everything sent ahead is older than the FIFO).
- It goes to an idle instance of its function's revision, else to a new one (the warm spare if there is one) if
  ``concurrency`` and ``max_workers`` allow. Otherwise, while every instance is busy, the FIFO's next small
  events are sent ahead (up to ``AHEAD`` per busy instance), each to every busy instance; the first to finish
  claims the oldest, so a long event on one instance holds up nothing behind it.
- An event sent ahead stays QUEUED until a worker claims it; the worker's "done" for the event before it says
  which it claimed and when. Before anything kills an instance, ``_settle`` bans it from claiming and reads the
  "done" messages of what it had claimed already, so the kill hits exactly what runs there.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from . import wire
from .ahead import Shared, records_path
from .instances import BUSY, IDLE, STARTING, Instance, Outcome
from .status import Status
from .timers import RETRY_S

if TYPE_CHECKING:
    from .config import Config
    from .functions import Function
    from .records import EventState
    from .store import Store

log = logging.getLogger("scf_nb")
AHEAD = 8  # events sent ahead per busy instance at most (pending for the function: AHEAD x busy instances)
# Only small events are sent ahead, and only so many bytes a busy instance has not read yet: they always fit
# in its socket's buffer, so a send never blocks the engine on an instance that is busy and not reading.
AHEAD_MAX_BYTES = 16 * 1024
UNREAD_MAX_BYTES = 96 * 1024
UNREAD_MAX_RUNS = 32
_CPUS = os.cpu_count() or 1  # the default concurrency (os.cpu_count() reads a file each call)
START_DEATHS_MAX = 3  # instance processes of a function dying in a row before they connect: then an event fails


def _small(payload: str) -> bool:
    """At most AHEAD_MAX_BYTES in UTF-8 (a character takes up to 4 bytes: count them only when it matters)."""
    return len(payload) * 4 <= AHEAD_MAX_BYTES or len(payload.encode("utf-8", "surrogatepass")) <= AHEAD_MAX_BYTES


class Ahead:
    """One function's events sent ahead that no worker is known to have started, oldest first."""

    __slots__ = ("shared", "pending", "seq")

    def __init__(self, path: str) -> None:
        self.shared = Shared(path)
        self.pending: deque[tuple[EventState, int, bytes]] = deque()  # (event, record number, its "run" frame)
        self.seq = 0

    def take(self, seq: int) -> EventState | None:
        for i, (ev, s, _) in enumerate(self.pending):
            if s == seq:
                del self.pending[i]
                return ev
        return None

    def entry(self, ev: EventState) -> int | None:
        for e, s, _ in self.pending:
            if e is ev:
                return s
        return None


class Dispatcher:
    """Dispatch and sending ahead, mixed into the Engine."""

    if TYPE_CHECKING:  # provided by Engine / InstanceIO
        config: Config
        store: Store
        _queues: dict[tuple[str, str], deque[EventState]]
        _pools: dict[tuple[str, str], list[Instance]]
        _ahead: dict[tuple[str, str], Ahead]
        _start_deaths: dict[tuple[str, str], int]
        _all: set[Instance]
        _by_token: dict[str, Instance]
        _spare: Instance | None
        _closing: bool
        _closed: bool
        _need_dispatch: bool
        _address: str
        _sockdir: str
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
        ahead = self._ahead.get(key)
        while not self._closing:
            queue = self._queues.get(key)  # anew each time: a failed send puts its event back in a new one
            if ahead is not None and ahead.pending:
                fn = ahead.pending[0][0].fn
            elif queue:
                fn = queue[0].fn
            else:
                break
            inst = self._instance_for(fn)
            if inst is None:
                break
            if inst.state == STARTING:  # no event until it has connected: then it takes the oldest waiting
                continue
            ev, now = self._oldest(key, inst)
            if ev is None:
                break
            self._assign(inst, ev, now)
        queue = self._queues.get(key)
        if queue and not self._closing:
            self._fill_ahead(queue)
        if queue is not None and not queue:
            del self._queues[key]

    def _oldest(self, key: tuple[str, str], inst: Instance) -> tuple[EventState | None, float]:
        """Take the oldest event waiting for ``inst``'s revision: the first event sent ahead that can still be
        taken back, else the FIFO's head; with its start time. The FIFO's head is newer than every event sent
        ahead, except one put back after a failed send: then it goes first."""
        queue = self._queues.get(key)
        head = queue[0] if queue and queue[0].fn.revision == inst.revision else None
        ahead = self._ahead.get(key)
        if ahead is not None:
            for ev, seq, _ in list(ahead.pending):
                if ev.fn.revision != inst.revision:
                    continue
                if head is not None and head.key < ev.key:
                    break
                taken = ahead.shared.revoke(seq)
                if taken is None:  # a worker holds the lock: ask again shortly, start nothing out of order
                    self._schedule(RETRY_S, "dispatch", key)
                    return None, 0.0
                if not taken and self._orphaned(ahead, ev, seq):  # claimed by a gone instance: pending again
                    taken = ahead.shared.revoke(seq)
                if taken:
                    ahead.take(seq)
                    return ev, self._from_wall(ahead.shared.revoked_at)
        if head is not None:
            return queue.popleft(), self.clock()  # type: ignore[union-attr]
        return None, 0.0

    def _orphaned(self, ahead: Ahead, ev: EventState, seq: int) -> bool:
        """Make ``ev`` pending again if the instance that claimed it is gone without saying so (True if so):
        its "done" naming the claim never came (a gone instance's socket is read to its end), and a worker
        starts a claimed event only after sending that "done", so the event never ran."""
        owner = (ahead.shared.started_by([seq]) or {}).get(seq)
        if owner is None or any(i.number == owner for i in self._all):
            return False
        return bool(ahead.shared.release(seq, owner))

    def _from_wall(self, at: float) -> float:
        """A time.time() reading (a worker's, or one taken in the records' lock) on the engine's clock."""
        clock = self.clock
        return at if clock is time.time else clock()  # an injected clock (tests) stands still between its steps

    def _timer_dispatch(self, key: tuple[str, str]) -> None:
        self._dispatch(key)

    def _dispatch_waiting(self) -> None:
        """Capacity changed somewhere: every queue, and every event sent ahead, may move."""
        keys = [*self._queues, *(k for k, a in self._ahead.items() if a.pending and k not in self._queues)]
        for key in keys:
            self._dispatch(key)

    def _has_pending(self, inst: Instance) -> bool:
        """Whether events of ``inst``'s function wait, sent ahead (it may have claimed one of them)."""
        ahead = self._ahead.get(inst.key) if inst.key is not None else None
        return ahead is not None and bool(ahead.pending)

    def _may_claim(self, inst: Instance) -> bool:
        """Whether ``inst`` holds a run sent ahead that is still pending, so it may start it on its own."""
        ahead = self._ahead.get(inst.key) if inst.key is not None else None
        return ahead is not None and bool(ahead.pending) and inst.sent_upto >= ahead.pending[0][1]

    def _instance_for(self, fn: Function) -> Instance | None:
        """An idle instance of ``fn``'s revision, or a new one if the limits allow and the ones starting are fewer
        than the events waiting (replacing an idle one of stale code, or of another function, when that is
        what stands in the way). A new one may still be starting: it gets no event before it connects, so
        whichever instance is free first takes the oldest (a process start can take seconds)."""
        pool = self._pools.setdefault(fn.key, [])
        stale = None
        coming = 0
        for inst in pool:
            if inst.state == IDLE:
                if inst.revision == fn.revision:
                    return inst
                stale = inst
            elif inst.state == STARTING and inst.event is None and inst.revision == fn.revision:
                coming += 1
        if coming and coming >= self._waiting(fn.key):
            return None
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

    def _waiting(self, key: tuple[str, str]) -> int:
        ahead = self._ahead.get(key)
        return len(self._queues.get(key, ())) + (len(ahead.pending) if ahead is not None else 0)

    def _died_starting(self, inst: Instance) -> None:
        """``inst`` died before it connected (so with no event). A start error fails the oldest waiting event
        of its function with it, as does the third such death in a row (a process that cannot start is not
        retried forever); a first death from outside (a kill, the OOM killer) fails nothing."""
        key = inst.key
        if key is None or self._closing:
            return
        deaths = self._start_deaths[key] = self._start_deaths.get(key, 0) + 1
        out = inst.outcome
        if out is None or out.status is not Status.FAILED or out.error_type != "InstanceStartError":
            if deaths < START_DEATHS_MAX:
                return
            out = Outcome(Status.FAILED, "InstanceDied", f"{inst.exit_description()}, {deaths} times in a row "
                                                         "before it started", "instance died")
        self._start_deaths[key] = 0
        ev, _ = self._oldest(key, inst)
        if ev is not None:
            self._end(ev, Status.FAILED, duration_ms=0.0, error_type=out.error_type,
                      error_message=out.error_message, exit_reason=out.exit_reason)

    def _start(self, fn: Function) -> Instance:
        """An instance for ``fn``: the warm spare if there is one (no process start), else a new process."""
        inst, self._spare = self._spare, None
        if inst is None:
            inst = self._spawn(fn)
            inst.records = self.records_for(fn.key)
        else:
            inst.fn = fn
            inst.records = self.records_for(fn.key)
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

    def _assign(self, inst: Instance, ev: EventState, now: float | None = None) -> None:
        self._begin(inst, ev, now)
        if inst.state == IDLE:
            self._send_run(inst)

    def _begin(self, inst: Instance, ev: EventState, now: float | None = None) -> None:
        """``ev`` is RUNNING on ``inst`` from ``now`` (the engine's clock by default)."""
        with self.store.lock:
            ev.status = Status.RUNNING
            ev.run_time = self.clock() if now is None else now
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
            return
        ahead = self._ahead.get(ev.fn.key)
        if ahead is not None and ahead.pending:
            self._feed(inst, ahead)  # it must hold every event sent ahead before it may claim one

    # -- sending ahead ------------------------------------------------------------------------------------------
    def records_for(self, key: tuple[str, str]) -> str:
        """The path of the records of function ``key``'s events sent ahead (made on first use)."""
        name = hashlib.sha1(repr(key).encode()).hexdigest()[:20]
        return records_path(self._sockdir, name)

    def _fill_ahead(self, queue: deque[EventState]) -> None:
        """Every instance is busy: send the FIFO's next events ahead, each to every busy instance of its
        revision, up to ``AHEAD`` per busy instance. The FIFO's head stops it (too big, or of another revision):
        nothing jumps it."""
        head = queue[0]
        key = head.fn.key
        ahead = self._ahead.get(key)
        pool = self._pools.get(key, ())
        if ahead is not None and len(ahead.pending) > AHEAD * len(pool) // 2:  # enough are waiting (see below)
            return
        targets = [inst for inst in self._pools.get(key, ())
                   if inst.state == BUSY and inst.event is not None and inst.conn is not None and not inst.settling
                   and not inst.banned and inst.revision == head.fn.revision]
        if not targets:
            return
        if ahead is None:
            ahead = self._ahead[key] = Ahead(self.records_for(key))
        cap = AHEAD * len(targets)
        if len(ahead.pending) > cap // 2:  # refill in batches: one lock and one send per instance for several
            return
        batch = []
        for ev in queue:
            if len(batch) + len(ahead.pending) >= cap or ev.fn.revision != head.fn.revision or not _small(ev.payload):
                break
            batch.append(ev)
        made = ahead.shared.reserve_many(ahead.seq + 1, len(batch)) if batch else 0
        for ev in batch[:made]:
            queue.popleft()
            ahead.seq += 1
            frame = wire.frame(("run", ev.request_id, ev.payload, ev.qualifier, ev.fn.version, ahead.seq))
            ahead.pending.append((ev, ahead.seq, frame))
        if made:
            for inst in targets:
                self._feed(inst, ahead)

    def _feed(self, inst: Instance, ahead: Ahead) -> None:
        """Send ``inst`` the events sent ahead that it does not hold yet, in order, as far as its socket's buffer
        surely takes them (it reads them at the end of its current event)."""
        if ahead.seq <= inst.sent_upto:  # it holds them all (the common case, once per event)
            return
        frames = []
        unread = inst.unread_bytes
        for ev, seq, frame in ahead.pending:
            if seq <= inst.sent_upto or ev.fn.revision != inst.revision:
                continue
            if len(inst.unread) >= UNREAD_MAX_RUNS or unread + len(frame) > UNREAD_MAX_BYTES:
                break
            frames.append(frame)
            inst.unread.append(len(frame))
            unread += len(frame)
            inst.sent_upto = seq
        inst.unread_bytes = unread
        if frames:
            try:
                inst.conn.sendall(b"".join(frames) if len(frames) > 1 else frames[0])
            except (OSError, ValueError):  # it is gone: nothing it was sent can be claimed by it any more
                self._broken(inst)

    def _read_up_to(self, inst: Instance, received: int) -> None:
        """The worker had read ``received`` runs sent ahead when it sent its "done": they left its socket."""
        for _ in range(received - inst.acked):
            if inst.unread:
                inst.unread_bytes -= inst.unread.popleft()
        inst.acked = received

    def _broken(self, inst: Instance) -> None:
        """A send to ``inst`` failed (its process is gone). It is killed from the loop's next turn, not here:
        this may run in the middle of handling its messages, and a kill decision must see them all."""
        self._need_dispatch = True
        self._post(("broken", inst))

    def _settle(self, inst: Instance) -> bool:
        """Make the engine's view of ``inst`` exact before a kill: ban it from claiming events sent ahead; if it
        has claimed some already, the "done" of each event before them is readable now (sent before the claim
        was acted on): read them, which makes the newest the current event. Nothing is dispatched meanwhile.

        Returns:
            False if the workers could not be asked (one holds the records' lock: stopped?): nothing is exact,
            try again later.
        """
        ahead = self._ahead.get(inst.key) if inst.key is not None else None
        if ahead is None or inst.conn is None or inst.sent_upto == 0:
            return True  # it never held an event sent ahead: it cannot have claimed one
        inst.settling = True
        try:
            mine = ahead.shared.ban(inst.number, [seq for _, seq, _ in ahead.pending])
            if mine is None:
                return False
            inst.banned = True
            claimed = set(mine)
            for _ in range(10_000):
                if not any(seq in claimed for _, seq, _ in ahead.pending):
                    return True
                progress = self._handle_msgs(inst)
                progress = (inst.conn_fd in inst.open_fds and self._on_conn(inst.conn_fd, inst)) or progress
                for fd in list(inst.streams):
                    progress = (fd in inst.open_fds and self._on_pipe(fd, inst)) or progress
                if not progress:
                    break
            return not any(seq in claimed for _, seq, _ in ahead.pending)  # else the worker is gone: reaping ends it
        finally:
            inst.settling = False

    def _unban(self, inst: Instance) -> None:
        """``inst`` was settled but not killed (its event had returned): it may claim events sent ahead again.
        (Until then it only claims nothing: never wrong, so a worker holding the lock just delays this.)"""
        if inst.banned:
            ahead = self._ahead.get(inst.key) if inst.key is not None else None
            if ahead is None or ahead.shared.unban(inst.number):
                inst.banned = False
            else:
                self._schedule(RETRY_S, "unban", inst)

    def _timer_unban(self, inst: Instance) -> None:
        self._unban(inst)  # also for one that is gone: its slot in the ban table must come free

    def _steal(self, idle: Instance) -> None:
        """``idle`` has nothing to do: it takes the oldest waiting event of its function (sent ahead or not)."""
        if idle.key is not None:
            self._dispatch(idle.key)

    def _release_ahead(self, inst: Instance) -> None:
        """``inst`` is gone. An event sent ahead that it claimed without the engine ever reading its "done"
        (it died between the two) never ran (see ``_orphaned``): it is pending again, for the instances still
        there, as is every other one."""
        ahead = self._ahead.get(inst.key) if inst.key is not None else None
        if ahead is None:
            return
        self._unban(inst)
        if not ahead.pending or inst.sent_upto == 0:
            return
        owners = ahead.shared.started_by([seq for _, seq, _ in ahead.pending])
        if owners is None:  # cannot ask now: the next look at the records after a revoke fails decides
            return
        for _ev, seq, _ in list(ahead.pending):
            if owners.get(seq) == inst.number:
                ahead.shared.release(seq, inst.number)  # no lock now: the next look at it releases it
        self._need_dispatch = True

    def _abandon_ahead(self) -> None:
        """The engine stops: what was sent ahead and never started fails as never run."""
        for ahead in self._ahead.values():
            for ev, seq, _ in list(ahead.pending):
                if ahead.shared.revoke(seq):
                    ahead.take(seq)
                    self._end(ev, Status.FAILED, duration_ms=0.0, error_type="EngineStopped",
                              error_message="the engine stopped before the event ran", exit_reason="engine stopped")
