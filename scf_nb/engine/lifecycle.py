"""Instance and event life cycles: terminate, timeouts, the tick, and what the backend reports (this is its
``Host``): an instance connected, claimed an event, wrote lines, finished, died, was reaped. Runs on the
engine thread only; every status change goes through the event table.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..core.status import Status
from ..instances.backend import (
    AGAIN,
    BUSY,
    DYING,
    IDLE,
    LATER,
    REAPED,
    STARTING,
    TAKEN,
    Backend,
    Done,
    Instance,
    Outcome,
)
from .dispatcher import RETRY_S

if TYPE_CHECKING:
    from ..core.records import EventState
    from .dispatcher import Dispatcher
    from .loop import Loop
    from .memory import MemoryLimits
    from .settings import Settings
    from .table import EventTable

START_TIMEOUT_S = 60.0


class Lifecycle:
    """Terminate, deadlines and the tick; the backend's ``Host``."""

    def __init__(self, settings: Settings, loop: Loop, table: EventTable, dispatcher: Dispatcher,
                 memory: MemoryLimits, backend: Backend) -> None:
        self.settings = settings
        self.loop = loop
        self.table = table
        self.dispatcher = dispatcher
        self.memory = memory
        self.backend = backend
        self.pools = dispatcher.pools  # (read only)
        # Host reports that are another part's call, as is (one call less on the way of every event)
        self.dispatch = dispatcher.dispatch
        self.need_dispatch = dispatcher.need_dispatch
        self.forget = dispatcher.forget
        self.watch_memory = memory.watch

    # -- terminate and timeouts ------------------------------------------------------------------------------
    def terminate(self, ev: EventState, grace: bool) -> None:
        if ev.status.is_terminal:
            return
        if ev.status is Status.QUEUED:
            taken = self.backend.take_back(ev)  # pending in the backend: take it back, unless it has just started
            if taken == TAKEN:
                self.table.end(ev, Status.ABORTED, duration_ms=0.0, exit_reason="terminated while queued")
                return
            if taken == AGAIN:
                self.terminate(ev, grace)
                return
            if taken == LATER:
                self.loop.call_later(RETRY_S, self._terminate_later, (ev, grace))
                return
        inst = ev.instance
        if inst is not None:
            if not self.backend.settle(inst):  # which event runs there, exactly, before anything is killed
                self.loop.call_later(RETRY_S, self._terminate_later, (ev, grace))  # it could not be asked yet
                return
            if ev.status.is_terminal:  # it returned just before: nothing to stop
                return
            inst = ev.instance
        if ev.status is Status.QUEUED or inst is None:
            queue = self.dispatcher.queues.get(ev.fn.key)
            if queue is not None and ev in queue:
                queue.remove(ev)
            self.table.end(ev, Status.ABORTED, duration_ms=0.0, exit_reason="terminated while queued")
            return
        grace_s = self.settings.config.grace_seconds
        if grace and grace_s > 0:
            reason = f"terminated: SIGTERM, then SIGKILL after {grace_s:g} s if still running"
            self.dispatcher.kill(inst, Outcome(Status.ABORTED, None, None, reason), grace_s)
        else:
            self.dispatcher.kill(inst, Outcome(Status.ABORTED, None, None, "terminated: SIGKILL"))

    def _terminate_later(self, args: tuple[EventState, bool]) -> None:
        self.terminate(*args)

    def begin(self, inst: Instance, ev: EventState, at: float) -> None:
        """``ev`` is RUNNING on ``inst`` from ``at``, with its deadline."""
        self.table.begin(ev, inst.pid, at)
        ev.instance = inst
        inst.event = ev
        inst.deadline = time.monotonic() + ev.fn.effective_timeout
        if not inst.deadline_armed:  # at most one timer per instance, not one per event (held for hours)
            inst.deadline_armed = True
            self.loop.call_later(ev.fn.effective_timeout, self._deadline, inst)
        if ev.fn.memory_mb:
            self.memory.on_begin(inst)

    def _deadline(self, inst: Instance) -> None:
        """The timeout of the event ``inst`` runs, if it has come; else wait for that event's deadline."""
        inst.deadline_armed = False
        ev = inst.event
        if ev is None or ev.status is not Status.RUNNING or inst.state == DYING or inst.state == REAPED:
            return
        if inst.deadline - time.monotonic() <= 0.001:
            # it may have returned, and started an event sent ahead (with its own deadline)
            if not self.backend.settle(inst):
                inst.deadline_armed = True
                self.loop.call_later(RETRY_S, self._deadline, inst)
                return
            ev = inst.event
            if ev is None or ev.status is not Status.RUNNING or inst.deadline_armed:
                self.backend.unban(inst)
                return
        left = inst.deadline - time.monotonic()
        if left > 0.001:
            self.backend.unban(inst)
            inst.deadline_armed = True
            self.loop.call_later(left, self._deadline, inst)
            return
        t = ev.fn.effective_timeout
        self.dispatcher.kill(inst, Outcome(Status.FAILED, "TimeoutError", f"timed out after {t:g} s", "timeout"))

    def tick(self, _: Any = None) -> None:
        """Idle instances stopped, instances that do not start killed, limited ones checked."""
        now = time.monotonic()
        limited = False
        dispatcher = self.dispatcher
        for inst in list(dispatcher.instances):
            if inst.fn is None:  # the spare
                if inst.state == STARTING and now - inst.started_at > START_TIMEOUT_S:
                    dispatcher.kill(inst, None)
            elif inst.state == IDLE and now - inst.idle_since > self.settings.config.idle_instance_seconds:
                dispatcher.kill_idle(inst)
            elif inst.state == STARTING and now - inst.started_at > START_TIMEOUT_S:
                dispatcher.kill(inst, Outcome(Status.FAILED, "InstanceStartError",
                                              f"the instance did not start within {START_TIMEOUT_S:g} s", "start"))
            elif inst.state == BUSY and self.memory.by_backend(inst):
                limited = True
                self.memory.check(inst)
        self.backend.tick()
        self.loop.call_later(0.1 if limited else 0.5, self.tick)

    # -- what the backend reports (Host) ---------------------------------------------------------------------
    def connected(self, inst: Instance) -> None:
        inst.connected = True
        if inst.key is not None:
            self.dispatcher.start_deaths.pop(inst.key, None)
        if inst.state == DYING:  # the backend kills it
            return
        if inst.fn is not None:
            self.dispatcher.load(inst)
        inst.state = IDLE  # no event is offered to an instance before it has connected
        inst.idle_since = time.monotonic()
        if inst.fn is not None:
            self.dispatcher.dispatch(inst.fn.key)  # events may wait behind a busy instance of its function
            self.dispatcher.need_dispatch()  # or in the FIFO

    def started(self, inst: Instance, ev: EventState, at: float) -> bool:
        if inst.state == DYING or inst.state == REAPED:  # being stopped: the event dies with it
            self.table.end(ev, Status.FAILED, error_type="InstanceDied", exit_reason="instance died",
                           error_message="the instance was being stopped as it started the event")
            return False
        inst.state = BUSY
        self.begin(inst, ev, at)
        return True

    def lines(self, ev: EventState, stream: str, lines: list[str]) -> None:
        self.table.store.add_lines(ev.key, ev.log_seq + 1, self.settings.clock(), stream, lines)
        ev.log_seq += len(lines)

    def finished(self, inst: Instance, ev: EventState, done: Done) -> bool:
        inst.event, inst.last_event = None, ev
        if ev.fn.memory_mb and self.memory.ended_over(inst, ev, done):
            return False
        if done.status == "FINISHED":
            self.table.end(ev, Status.FINISHED, duration_ms=done.duration_ms, result=done.payload,
                           mem_usage_bytes=done.mem, exit_reason="returned", end_time=done.end_time,
                           init_duration_ms=done.init_ms, result_pickle=done.pickled)
            return True
        payload = done.payload
        if payload is None:  # SIGTERM that the engine did not send (someone ran `kill`)
            payload = {"type": "Terminated", "message": "the instance received SIGTERM", "traceback": ""}
        self.table.end(ev, Status.FAILED, duration_ms=done.duration_ms, mem_usage_bytes=done.mem,
                       init_duration_ms=done.init_ms, end_time=done.end_time, error_type=payload["type"],
                       error_message=payload["message"], error_traceback=payload["traceback"],
                       exit_reason="the handler raised; instance replaced")
        self.dispatcher.kill(inst, None)  # SCF's instance repossession: the next event gets a fresh process
        return False

    def idle(self, inst: Instance) -> None:
        inst.state = IDLE
        inst.idle_since = time.monotonic()

    def lost(self, inst: Instance) -> None:
        if inst.state != DYING and inst.state != REAPED:
            self.dispatcher.kill(inst, None)

    def gone(self, inst: Instance) -> None:
        ev, inst.event = inst.event, None
        if ev is not None and not ev.status.is_terminal:
            out = inst.outcome
            if out is None or out.status is None:
                death = self.backend.cause_of_death(inst)
                out = self.memory.died(inst, death) or Outcome(Status.FAILED, "InstanceDied", death.description,
                                                               "instance died")
            assert out.status is not None  # both outcomes above have one
            self.table.end(ev, out.status, error_type=out.error_type,
                           error_message=out.error_message, exit_reason=out.exit_reason,
                           mem_usage_bytes=out.mem_usage_bytes)
        elif not inst.connected:
            self.dispatcher.died_starting(inst)
        self.memory.release(inst)
        self.dispatcher.need_dispatch()

    def wall(self, at: float) -> float:
        clock = self.settings.clock
        return at if clock is time.time else clock()  # an injected clock (tests) stands still between its steps
