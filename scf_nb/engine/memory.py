"""``memory_mb``: the engine's verdicts, and the watchdog where the backend cannot hold an instance to a limit.

The backend says how it is enforced (``Backend.memory_limit_mode``):

- by the backend (the loky one: a memory cgroup per limited instance, ``cgroup2`` / ``cgroup1``): the kernel
  stops the instance the moment it (with everything it started) reaches the limit. A dead instance whose
  limit saw an OOM kill fails its event ``MemoryLimitExceeded``; a child the OOM killer killed makes the
  event fail too (found by the tick, ``check``, or when the event ends).
- ``watchdog``: the memory of every busy limited instance and its descendants is sampled every ``WATCH_S``
  (``Backend.memory``) and the instance is killed over the limit; a spike between two samples is caught when
  the event ends, by its peak.

Either way, the instance itself fails an event that went over (so it starts nothing sent ahead after it),
and the engine checks again when the event ends (``ended_over``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.status import Status
from ..instances.backend import BUSY, Backend, Death, Done, Instance, Outcome

if TYPE_CHECKING:
    from ..core.records import EventState
    from .dispatcher import Dispatcher
    from .loop import Loop
    from .table import EventTable

WATCH_S = 0.01  # the watchdog's period while a limited instance the backend cannot limit is busy
_MB = 1 << 20


class MemoryLimits:
    """The instances of limited functions, and what happens when one goes over."""

    def __init__(self, loop: Loop, backend: Backend, table: EventTable) -> None:
        self.loop = loop
        self.backend = backend
        self.table = table
        self.dispatcher: Dispatcher  # set once it is made (it kills over the limit; it asks to prepare)
        self.watched: set[Instance] = set()  # limited instances the backend cannot limit: sampled while busy
        self._armed = False

    def prepare(self, inst: Instance) -> None:
        """``inst`` (connected) is about to load its function: a limited one is limited by the backend, or
        watched."""
        fn = inst.fn
        if fn is not None and fn.memory_mb and inst.pid and inst not in self.watched:
            if not self.backend.limit_memory(inst, fn.memory_mb * _MB):
                self.watch(inst)

    def watch(self, inst: Instance) -> None:
        """Sample ``inst`` from now (``Host.watch_memory``)."""
        self.watched.add(inst)
        self.on_begin(inst)

    def on_begin(self, inst: Instance) -> None:
        """``inst`` (of a limited function) starts an event: keep the watchdog running if it is watched."""
        if not self._armed and inst in self.watched:
            self._armed = True
            self.loop.call_later(WATCH_S, self._sample)

    def by_backend(self, inst: Instance) -> bool:
        """Whether ``inst`` is held to its function's limit by the backend (not the watchdog)."""
        return bool(inst.fn is not None and inst.fn.memory_mb) and inst not in self.watched

    def _sample(self, _: Any) -> None:
        """The watchdog: sample each busy watched instance (with its descendants); again soon while any is."""
        self._armed = False
        busy = False
        for inst in list(self.watched):
            if inst.state != BUSY or not inst.pid:
                continue
            busy = True
            used = self.backend.memory(inst)
            if used > inst.fn.memory_mb * _MB:  # type: ignore[union-attr, operator]
                self._over(inst, used, f"{used / _MB:.0f} MB used")
        if busy:
            self._armed = True
            self.loop.call_later(WATCH_S, self._sample)

    def check(self, inst: Instance) -> None:
        """(The tick, for a busy instance the backend limits.) The OOM killer killed inside its limit (a child:
        the instance lives on)."""
        peak = self.backend.oom_killed(inst)
        if peak is not None:
            self._over(inst, peak, f"the kernel's OOM killer stopped it at {peak / _MB:.0f} MB")

    def _over(self, inst: Instance, used: int, how: str) -> None:
        if not self.backend.settle(inst):  # know which event runs before blaming it
            return
        if inst.state != BUSY:
            self.backend.unban(inst)
        else:
            self.dispatcher.kill(inst, Outcome(Status.FAILED, "MemoryLimitExceeded", _exceeded(inst, how),
                                               "memory limit", mem_usage_bytes=used))

    def ended_over(self, inst: Instance, ev: EventState, done: Done) -> bool:
        """An event of a limited function has just ended on ``inst``: if it went over ``memory_mb`` (the
        instance says so, or its peak is over, or the OOM killer killed inside its limit), end it FAILED
        ``MemoryLimitExceeded`` whatever it returned, replace the instance, and say True."""
        if done.status == "ABORTED":
            return False
        peak = self.backend.oom_killed(inst, ended=True)
        payload, mem = done.payload, done.mem
        said = done.status == "FAILED" and isinstance(payload, dict) and payload.get("type") == "MemoryLimitExceeded"
        if peak is not None:
            used = max(mem or 0, peak)
            how = f"the kernel's OOM killer stopped it at {used / _MB:.0f} MB"
        elif said or (inst in self.watched and ev.fn.memory_mb is not None and (mem or 0) > ev.fn.memory_mb * _MB):
            used = mem or 0
            how = f"{used / _MB:.0f} MB at its peak"
        else:
            return False
        self.table.end(ev, Status.FAILED, duration_ms=done.duration_ms, mem_usage_bytes=used,
                       error_type="MemoryLimitExceeded", error_message=_exceeded(inst, how),
                       error_traceback=payload.get("traceback", "") if isinstance(payload, dict) else "",
                       exit_reason="memory limit")
        self.dispatcher.kill(inst, None)
        return True

    def died(self, inst: Instance, death: Death) -> Outcome | None:
        """The outcome of an instance that died by itself, if the OOM killer killed inside its limit."""
        if death.oom_peak is None:
            return None
        how = f"the kernel's OOM killer stopped it at {death.oom_peak / _MB:.0f} MB"
        return Outcome(Status.FAILED, "MemoryLimitExceeded", _exceeded(inst, how), "memory limit",
                       mem_usage_bytes=death.oom_peak)

    def release(self, inst: Instance) -> None:
        """``inst`` is reaped: forget it."""
        self.watched.discard(inst)


def _exceeded(inst: Instance, how: str) -> str:
    limit = inst.fn.memory_mb if inst.fn is not None else None
    return f"memory limit exceeded: {how}, memory_mb={limit}"
