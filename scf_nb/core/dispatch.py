"""The engine's dispatcher: which instances may run the function's oldest waiting event, starting instances under
the limits, and sending events ahead to busy instances (``ahead.py`` has the records that make that safe).

``Dispatcher`` is mixed into :class:`scf_nb.core.engine.Engine` and runs only on the engine thread. Rules:

- Per function, events start in the order they were accepted, each by a worker's claim. The oldest waiting
  event not offered yet is the first pending one (``Ahead.pending``) not offered to an idle instance, else
  the FIFO's head (events leave the FIFO from its head, so everything pending is older than the FIFO).
- It is offered to one idle instance of its function's revision (a new one, the warm spare if there is one,
  is started if ``concurrency`` and ``max_workers`` allow, and gets nothing before it has connected), and,
  as every pending event, sent to the busy instances: whichever claims it first runs it. While every
  instance is busy, the FIFO's next small events are sent ahead too (up to ``AHEAD`` per busy instance); the
  first to finish claims the oldest, so a long event on one instance holds up nothing behind it.
- An event stays QUEUED until a worker claims it; its ``run_time`` is the claim's. Before anything kills an
  instance, ``_settle`` bans it from claiming and catches up on what it had claimed already, so the kill hits
  exactly what runs there.
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

CLAIMS_POLL_S = 0.001  # an idle instance offered an event: the records are read after this (doubling) ...
CLAIMS_POLL_MAX_S = 0.05  # ... up to this, until it has claimed, or said it claimed none

if TYPE_CHECKING:
    from collections.abc import Callable

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
_POKE = wire.frame(("poke",))  # to an idle instance that holds an offered run already: claim now
_CPUS = os.cpu_count() or 1  # the default concurrency (os.cpu_count() reads a file each call)
START_DEATHS_MAX = 3  # instance processes of a function dying in a row before they connect: then an event fails


def _small(payload: str) -> bool:
    """At most AHEAD_MAX_BYTES in UTF-8 (a character takes up to 4 bytes: count them only when it matters)."""
    return len(payload) * 4 <= AHEAD_MAX_BYTES or len(payload.encode("utf-8", "surrogatepass")) <= AHEAD_MAX_BYTES


class Ahead:
    """One function's events sent ahead that no worker is known to have started, oldest first."""

    __slots__ = ("shared", "pending", "seq", "offered")

    def __init__(self, path: str) -> None:
        self.shared = Shared(path)
        self.pending: deque[tuple[EventState, int, bytes]] = deque()  # (event, record number, its "run" frame)
        self.seq = 0
        self.offered: dict[int, Instance] = {}  # record number -> the idle instance it was offered to

    def take(self, seq: int) -> EventState | None:
        """``seq`` is decided (claimed, or taken back): off the pending ones; the idle instance it was offered
        to (if any) may be offered another."""
        inst = self.offered.pop(seq, None)
        if inst is not None and inst.offer == seq:
            inst.offer = None
        for i, (ev, s, _) in enumerate(self.pending):
            if s == seq:
                del self.pending[i]
                return ev
        return None

    def add(self, ev: EventState) -> int:
        """``ev`` is pending as the next record (already reserved); its "run" frame is made once, for all."""
        self.seq += 1
        frame = wire.frame(("run", ev.request_id, ev.payload, ev.qualifier, ev.fn.version, self.seq))
        self.pending.append((ev, self.seq, frame))
        return self.seq

    def unoffer(self, inst: Instance) -> None:
        """``inst`` will not claim its offer (it read it and claimed none, it is banned, or it is gone)."""
        if inst.offer is not None:
            if self.offered.get(inst.offer) is inst:
                del self.offered[inst.offer]
            inst.offer = None

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
        _offering: dict[tuple[str, str], tuple[float, float]]
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

        clock: Callable[[], float]

        def _schedule(self, delay: float, kind: str, obj: Any) -> None: ...
        def _kill(self, inst: Instance, outcome: Any, sig: int = ..., grace: float = ...) -> None: ...
        def _on_conn(self, fd: int, inst: Instance) -> bool: ...
        def _handle_msgs(self, inst: Instance) -> bool: ...
        def _post(self, item: tuple[Any, ...]) -> None: ...
        def _on_pipe(self, fd: int, inst: Instance) -> bool: ...
        def _end(self, ev: EventState, status: Status, **fields: Any) -> None: ...
        def _load(self, inst: Instance) -> None: ...
        def _watch(self, inst: Instance) -> None: ...
        def _sync_claims(self, key: tuple[str, str] | None) -> bool: ...

    # -- dispatch ---------------------------------------------------------------------------------------------
    def _dispatch(self, key: tuple[str, str]) -> None:
        while not self._closing:
            ev = self._unoffered(key)
            if ev is None:
                break
            inst = self._instance_for(ev.fn)
            if inst is None:
                break
            if inst.state == STARTING:  # nothing is offered to it until it has connected
                continue
            if not self._offer(inst, ev):
                break
        queue = self._queues.get(key)
        if queue and not self._closing:
            self._fill_ahead(queue)
        if queue is not None and not queue:
            del self._queues[key]

    def _unoffered(self, key: tuple[str, str]) -> EventState | None:
        """The oldest waiting event not offered to an idle instance: pending ones are older than the FIFO."""
        ahead = self._ahead.get(key)
        if ahead is not None and len(ahead.pending) > len(ahead.offered):
            for ev, seq, _ in ahead.pending:
                if seq not in ahead.offered:
                    return ev
        queue = self._queues.get(key)
        return queue[0] if queue else None

    def _offer(self, inst: Instance, ev: EventState) -> bool:
        """Offer ``ev`` to the idle ``inst``: it becomes a pending record (if it was the FIFO's head, where it
        also goes to the busy instances, which may finish first), and ``inst`` gets every pending run up to it.
        The event runs where it is claimed first (``inst`` says "started"); False: try again later."""
        key = ev.fn.key
        ahead = self._ahead.get(key)
        if ahead is None:
            ahead = self._ahead[key] = Ahead(self.records_for(key))
        seq = ahead.entry(ev)
        if seq is None:  # the FIFO's head
            if not ahead.shared.reserve(ahead.seq + 1):  # a worker holds the records' lock: ask again shortly
                self._schedule(RETRY_S, "dispatch", key)
                return False
            seq = ahead.add(self._queues[key].popleft())
            for busy in self._pools.get(key, ()):
                if busy is not inst and self._claims_ahead(busy, ev.fn.revision):
                    self._feed(busy, ahead)
        ahead.offered[seq] = inst
        inst.offer = seq
        if inst.sent_upto >= seq:  # it holds the run already (sent ahead while it was busy, or banned): it looks
            self._poke(inst)  # again at what it holds only when something comes
        else:
            self._feed(inst, ahead, upto=seq)
        inst.offer_at = inst.acked + len(inst.unread)  # a "read" covering this many runs answers the offer
        if key not in self._offering:  # it says nothing when it claims: the loop looks at the records shortly,
            self._offering[key] = (time.monotonic() + CLAIMS_POLL_S, CLAIMS_POLL_S)  # unless its "done" comes first
        return True

    def _poke(self, inst: Instance) -> None:
        try:
            inst.conn.sendall(_POKE)
        except (OSError, ValueError):
            self._broken(inst)

    def _poll_claims(self) -> float:
        """Functions whose idle instances hold offers they have not answered: once due, read the records (has
        one claimed?). Returns the time until the next look is due."""
        now = time.monotonic()
        wait = 1.0
        for key, (due, delay) in list(self._offering.items()):
            ahead = self._ahead.get(key)
            if ahead is None or not ahead.offered:
                del self._offering[key]
                continue
            if now >= due:
                synced = self._sync_claims(key)
                if not ahead.offered and synced:
                    del self._offering[key]
                    continue
                delay = min(delay * 2, CLAIMS_POLL_MAX_S)
                due = now + delay
                self._offering[key] = (due, delay)
            wait = min(wait, due - now)
        return max(0.0, wait)

    @staticmethod
    def _claims_ahead(inst: Instance, revision: int) -> bool:
        """Whether ``inst`` may be sent runs ahead, to claim at the end of the event it runs (busy) or is
        about to run (idle, with an offer)."""
        return ((inst.state == BUSY and inst.event is not None or inst.state == IDLE and inst.offer is not None)
                and inst.conn is not None and not inst.settling and not inst.banned and inst.revision == revision)

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
                if inst.revision != fn.revision:
                    stale = inst
                elif inst.offer is None and not inst.banned:
                    return inst
            elif inst.state == STARTING and inst.event is None and inst.revision == fn.revision:
                coming += 1
        if coming and coming >= self._waiting(fn.key):
            return None
        if len(pool) >= (fn.concurrency or _CPUS):
            if stale is not None:
                self._kill_idle(stale)  # make room; the event goes once it is reaped (milliseconds)
            return None
        if sum(len(p) for p in self._pools.values()) >= self.config.max_workers:
            idle = [i for p in self._pools.values() for i in p if i.state == IDLE and i.offer is None]
            if idle:
                self._kill_idle(min(idle, key=lambda i: i.idle_since))
            return None
        return self._start(fn)

    def _waiting(self, key: tuple[str, str]) -> int:
        """Events of function ``key`` that wait for an instance: not offered to an idle one."""
        ahead = self._ahead.get(key)
        return len(self._queues.get(key, ())) + (len(ahead.pending) - len(ahead.offered) if ahead is not None else 0)

    def _kill_idle(self, inst: Instance) -> bool:
        """Stop an idle instance (to make room, or idle too long), unless it has just claimed an event: it is
        banned first, and what it sent read (``_settle``). False if it was not stopped."""
        if self._has_pending(inst) and not self._settle(inst):
            return False
        if inst.event is not None or inst.state != IDLE:
            self._unban(inst)
            return False
        self._kill(inst, None)
        return True

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
        targets = [inst for inst in pool if self._claims_ahead(inst, head.fn.revision)]
        if not targets:
            return
        if ahead is None:
            ahead = self._ahead[key] = Ahead(self.records_for(key))
        cap = AHEAD * len(targets)
        if len(ahead.pending) > cap // 2:  # refill in batches: one lock and one send per instance for several
            return
        batch: list[EventState] = []
        for ev in queue:
            if len(batch) + len(ahead.pending) >= cap or ev.fn.revision != head.fn.revision or not _small(ev.payload):
                break
            batch.append(ev)
        made = ahead.shared.reserve_many(ahead.seq + 1, len(batch)) if batch else 0
        for _ in range(made):
            ahead.add(queue.popleft())
        if made:
            for inst in targets:
                self._feed(inst, ahead)

    def _feed(self, inst: Instance, ahead: Ahead, upto: int | None = None) -> None:
        """Send ``inst`` the pending runs that it does not hold yet, in order: a busy one as far as its socket's
        buffer surely takes them (it reads them at the end of its current event); an idle one every run up to
        its offer ``upto``, whatever their size (it reads them now)."""
        if ahead.seq <= inst.sent_upto:  # it holds them all (the common case, once per event)
            return
        frames = []
        unread = inst.unread_bytes
        for ev, seq, frame in ahead.pending:
            if seq <= inst.sent_upto or ev.fn.revision != inst.revision:
                continue
            if upto is not None:
                if seq > upto:
                    break
            elif len(inst.unread) >= UNREAD_MAX_RUNS or unread + len(frame) > UNREAD_MAX_BYTES:
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
            ahead.unoffer(inst)  # what it was offered goes to another (or waits), unless it claimed it already
            if inst.event is None and not self._sync_claims(inst.key):  # idle: has it claimed one?
                return False
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
        ahead.unoffer(inst)
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
