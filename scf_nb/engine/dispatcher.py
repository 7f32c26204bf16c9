"""The dispatcher: per-function FIFO, the instances and their limits, and which instance is offered the oldest
waiting event. Runs on the engine thread only.

- Per function, events start in the order they were accepted, each by an instance's claim. The oldest
  waiting event is the backend's first pending one not offered to an idle instance (``Backend.unoffered``),
  else the FIFO's head (events leave the FIFO from its head, so everything pending is older than the FIFO).
- It is offered to one idle instance of its function's revision (a new one, the warm spare if there is one,
  is started if ``concurrency`` and ``max_workers`` allow, and gets nothing before it has connected); while
  every instance is busy the backend may take the FIFO's next events ahead (``Backend.send_ahead``).
- Before anything kills an instance, ``Backend.settle`` makes the engine's view of it exact, so the kill hits
  exactly what runs there (``kill``).
"""

from __future__ import annotations

import math
import os
from collections import deque
from typing import TYPE_CHECKING

from ..core.status import Status
from ..instances.backend import DYING, IDLE, REAPED, STARTING, Backend, Instance, Outcome

if TYPE_CHECKING:
    from ..core.functions import Function
    from ..core.records import EventState
    from .loop import Loop
    from .memory import MemoryLimits
    from .settings import Settings
    from .table import EventTable

CPUS = os.cpu_count() or 1  # the default concurrency (os.cpu_count() reads a file each call)
START_DEATHS_MAX = 3  # instance processes of a function dying in a row before they connect: then an event fails
RETRY_S = 0.02  # a dispatch, terminate or timeout waits this long when the backend could not say now


class Dispatcher:
    """Which instance runs what, under the limits."""

    def __init__(self, settings: Settings, loop: Loop, table: EventTable, backend: Backend,
                 memory: MemoryLimits) -> None:
        self.settings = settings
        self.loop = loop
        self.table = table
        self.backend = backend
        self.memory = memory
        self.queues: dict[tuple[str, str], deque[EventState]] = {}  # the FIFO of each function
        self.pools: dict[tuple[str, str], list[Instance]] = {}  # instances not reaped, per function (dying too)
        self.instances: set[Instance] = set()  # every instance not reaped, the spare too
        self.spare: Instance | None = None
        self.start_deaths: dict[tuple[str, str], int] = {}  # instances dead before connecting, in a row
        self.closing = False  # the engine's loop is stopping
        self.closed = False  # the engine is closed (any thread may set it)
        self.turn_due = False  # capacity was freed somewhere: dispatch every function at the end of the turn

    # -- what other threads post ----------------------------------------------------------------------------
    def invoke(self, ev: EventState) -> None:
        if ev.status.is_terminal:  # terminated before we got here
            return
        if self.closing:
            self.table.end(ev, Status.FAILED, duration_ms=0.0, error_type="EngineStopped",
                           error_message="the engine stopped before the event ran", exit_reason="engine stopped")
            return
        queue = self.queues.get(ev.fn.key)
        if queue:  # others wait ahead of it: nothing is free for it either (they would have had it)
            queue.append(ev)
            if len(self.pools.get(ev.fn.key, ())) < (ev.fn.concurrency or CPUS):
                self.dispatch(ev.fn.key)  # but there is room to start one more instance (the others are starting)
            return
        self.queues[ev.fn.key] = deque((ev,))
        self.dispatch(ev.fn.key)

    def retire(self, key: tuple[str, str]) -> None:
        """Function ``key`` was deleted: stop its idle instances."""
        for inst in list(self.pools.get(key, ())):
            if inst.state == IDLE:
                self.kill_idle(inst)

    def need_dispatch(self) -> None:
        """Capacity was freed somewhere: dispatch at the end of this turn (never re-entrantly)."""
        self.turn_due = True

    def turn_end(self) -> float:
        self.turn_due = False
        self.dispatch_waiting()
        return math.inf

    def close(self) -> None:
        """The engine stops: queued and running events fail, every instance is killed; the loop ends once all
        are reaped."""
        self.closing = True
        stopped = Outcome(Status.FAILED, "EngineStopped", "the engine stopped while the event ran", "engine stopped")
        for inst in list(self.instances):  # first: an event sent ahead and not started is pending still
            self.kill(inst, stopped)
        never_ran = [*self.backend.take_back_all(), *(ev for queue in self.queues.values() for ev in queue)]
        for ev in never_ran:
            self.table.end(ev, Status.FAILED, duration_ms=0.0, error_type="EngineStopped",
                           error_message="the engine stopped before the event ran", exit_reason="engine stopped")
        self.queues.clear()
        self.loop.done = lambda: not self.instances

    # -- dispatch ---------------------------------------------------------------------------------------------
    def dispatch(self, key: tuple[str, str], freed: Instance | None = None) -> None:
        """Offer function ``key``'s oldest waiting events; ``freed``: the instance whose event just ended (if it
        stays idle, other functions may want the room it takes)."""
        while not self.closing:
            ev = self.backend.unoffered(key)
            from_fifo = ev is None
            if from_fifo:
                queue = self.queues.get(key)
                if not queue:
                    break
                ev = queue[0]
            assert ev is not None
            inst = self._instance_for(ev.fn)
            if inst is None:
                break
            if inst.state == STARTING:  # nothing is offered to it until it has connected
                continue
            if not self.backend.offer(inst, ev, from_fifo):  # the backend cannot now: ask again shortly
                self.loop.call_later(RETRY_S, self.dispatch, key)
                break
            if from_fifo:
                self.queues[key].popleft()
        queue = self.queues.get(key)
        if queue and not self.closing:
            for _ in range(self.backend.send_ahead(queue)):
                queue.popleft()
        if queue is not None and not queue:
            del self.queues[key]
        if freed is not None and freed.state == IDLE and self.queues:
            self.turn_due = True

    def dispatch_waiting(self) -> None:
        """Capacity changed somewhere: every queue, and every event pending in the backend, may move."""
        for key in [*self.queues, *(k for k in self.pools if k not in self.queues)]:
            self.dispatch(key)

    def _instance_for(self, fn: Function) -> Instance | None:
        """An idle instance of ``fn``'s revision, or a new one if the limits allow and the ones starting are fewer
        than the events waiting (replacing an idle one of stale code, or of another function, when that is
        what stands in the way). A new one may still be starting: it gets no event before it connects, so
        whichever instance is free first takes the oldest (a process start can take seconds)."""
        pool = self.pools.setdefault(fn.key, [])
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
        if len(pool) >= (fn.concurrency or CPUS):
            if stale is not None:
                self.kill_idle(stale)  # make room; the event goes once it is reaped (milliseconds)
            return None
        if sum(len(p) for p in self.pools.values()) >= self.settings.config.max_workers:
            idle = [i for p in self.pools.values() for i in p if i.state == IDLE and i.offer is None]
            if idle:
                self.kill_idle(min(idle, key=lambda i: i.idle_since))
            return None
        return self.start(fn)

    def _waiting(self, key: tuple[str, str]) -> int:
        """Events of function ``key`` that wait for an instance: not offered to an idle one."""
        return len(self.queues.get(key, ())) + self.backend.waiting(key)

    # -- instances ------------------------------------------------------------------------------------------
    def start(self, fn: Function) -> Instance:
        """An instance for ``fn``: the warm spare if there is one (no process start), else a new process."""
        inst, self.spare = self.spare, None
        if inst is None:
            inst = self.backend.start(fn)
            self.instances.add(inst)
        else:
            inst.fn = fn
            if inst.connected:
                self.load(inst)
        self.pools.setdefault(fn.key, []).append(inst)
        self.ensure_spare()
        return inst

    def load(self, inst: Instance) -> None:
        """The connected ``inst`` learns its function; a limited one first gets its memory limit."""
        self.memory.prepare(inst)
        self.backend.load(inst)

    def ensure_spare(self) -> None:
        if (self.settings.config.warm_spare and self.backend.keeps_spare and self.spare is None
                and not self.closing and not self.closed):
            self.spare = self.backend.start(None)
            self.instances.add(self.spare)

    def forget(self, inst: Instance) -> None:
        """``inst`` is being reaped: it serves no new event."""
        self.instances.discard(inst)
        if inst is self.spare:
            self.spare = None
        pool = self.pools.get(inst.key) if inst.key is not None else None
        if pool is not None and inst in pool:
            pool.remove(inst)

    def kill(self, inst: Instance, outcome: Outcome | None, grace: float = 0.0) -> None:
        """Stop ``inst`` (with grace: ask first); its event (if any) ends as ``outcome`` once every line it
        wrote is in (``outcome`` None: as an unexpected death, with the cause)."""
        if inst.state == REAPED:
            return
        self.backend.settle(inst)  # an event sent ahead must not die with this one
        if inst.state == REAPED:  # settling read it to its end
            return
        if inst.outcome is None:
            inst.outcome = outcome
        if inst.state != DYING:
            inst.state = DYING  # it stays in its pool, counting against concurrency, until reaped
            if inst is self.spare:
                self.spare = None
        self.backend.kill(inst, grace)
        self.turn_due = True

    def kill_idle(self, inst: Instance) -> bool:
        """Stop an idle instance (to make room, or idle too long), unless it has just claimed an event: it is
        settled first. False if it was not stopped."""
        if not self.backend.settle(inst):
            return False
        if inst.event is not None or inst.state != IDLE:
            self.backend.unban(inst)
            return False
        self.kill(inst, None)
        return True

    def died_starting(self, inst: Instance) -> None:
        """``inst`` died before it connected (so with no event). A start error fails the oldest waiting event
        of its function with it, as does the third such death in a row (a process that cannot start is not
        retried forever); a first death from outside (a kill, the OOM killer) fails nothing."""
        key = inst.key
        if key is None or self.closing:
            return
        deaths = self.start_deaths[key] = self.start_deaths.get(key, 0) + 1
        out = inst.outcome
        if out is None or out.status is not Status.FAILED or out.error_type != "InstanceStartError":
            if deaths < START_DEATHS_MAX:
                return
            how = self.backend.cause_of_death(inst).description
            out = Outcome(Status.FAILED, "InstanceDied", f"{how}, {deaths} times in a row before it started",
                          "instance died")
        self.start_deaths[key] = 0
        ev = self._take_oldest(key, inst)
        if ev is not None:
            self.table.end(ev, Status.FAILED, duration_ms=0.0, error_type=out.error_type,
                           error_message=out.error_message, exit_reason=out.exit_reason)

    def _take_oldest(self, key: tuple[str, str], inst: Instance) -> EventState | None:
        """Take the oldest event waiting for ``inst``'s revision: the first pending one that can still be taken
        back, else the FIFO's head. The FIFO's head is newer than every pending one, except one put back
        after a failed send: then it goes first."""
        queue = self.queues.get(key)
        head = queue[0] if queue and queue[0].fn.revision == inst.revision else None
        ev = self.backend.take_oldest(key, inst.revision, head.key if head is not None else None)
        if isinstance(ev, str):  # not known now: start nothing out of order, ask again shortly
            self.loop.call_later(RETRY_S, self.dispatch, key)
            return None
        if ev is not None:
            return ev
        return queue.popleft() if queue is not None and head is not None else None
