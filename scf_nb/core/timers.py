"""The engine's timers for instances: each instance's deadline (the timeout of the event it runs), the tick
that stops idle instances and instances that do not start, and the enforcement of a function's ``memory_mb``.

``Timers`` is mixed into :class:`scf_nb.core.engine.Engine`; its ``_timer_<kind>`` methods run on the engine
thread when ``Engine._schedule(delay, kind, obj)`` comes due.

``memory_mb``, in the engine's ``memory_limit_mode``:

- ``cgroup2`` / ``cgroup1``: each limited instance is in a memory cgroup of its own (cgroups.py) and the
  kernel stops it the moment it (with everything it started) reaches the limit: the OOM killer kills in that
  cgroup. A dead instance whose cgroup saw an OOM kill fails its event ``MemoryLimitExceeded``; a child the
  OOM killer killed makes the event fail too (found by the tick, or when the event ends).
- ``watchdog``: the memory of every busy limited instance and its descendants is sampled every
  ``WATCH_S`` and the instance is killed over the limit; a spike between two samples is caught when the
  event ends, by its peak (the worker's VmHWM, reset per event, and its children's).

Either way, the worker itself fails an event that went over (so it starts nothing sent ahead after it), and
the engine checks again when the event ends (:meth:`Timers._ended_over_memory`).
"""

from __future__ import annotations

import os
import resource
import time
from typing import TYPE_CHECKING, Any

from .cgroups import MemoryCgroups
from .instances import BUSY, DYING, IDLE, REAPED, STARTING, Instance, Outcome, descendants
from .status import Status

if TYPE_CHECKING:
    from .config import Config
    from .records import EventState

_PAGE = resource.getpagesize()
_START_TIMEOUT_S = 60.0
RETRY_S = 0.02  # a terminate or timeout waits this long when an instance could not be asked what it runs
WATCH_S = 0.01  # the watchdog's period while a limited instance without a cgroup is busy
_MB = 1 << 20


class Timers:
    """Deadlines and the tick, mixed into the Engine."""

    if TYPE_CHECKING:  # provided by Engine and its other mixins
        config: Config
        _all: set[Instance]

        def _schedule(self, delay: float, kind: str, obj: Any) -> None: ...
        def _settle(self, inst: Instance) -> bool: ...
        def _has_pending(self, inst: Instance) -> bool: ...
        def _unban(self, inst: Instance) -> None: ...
        def _kill(self, inst: Instance, outcome: Outcome | None, sig: int = ..., grace: float = ...) -> None: ...
        def _kill_idle(self, inst: Instance) -> bool: ...
        def _end(self, ev: EventState, status: Status, **fields: Any) -> None: ...

    _memory: MemoryCgroups
    _watched: set[Instance]  # limited instances without a cgroup: the watchdog samples them while busy
    _watch_armed: bool

    def _timer_deadline(self, inst: Instance) -> None:
        """The timeout of the event ``inst`` runs, if it has come; else wait for that event's deadline."""
        inst.deadline_armed = False
        ev = inst.event
        if ev is None or ev.status is not Status.RUNNING or inst.state == DYING or inst.state == REAPED:
            return
        if inst.deadline - time.monotonic() <= 0.001 and self._has_pending(inst):
            # it may have returned, and started an event sent ahead (with its own deadline)
            if not self._settle(inst):
                inst.deadline_armed = True
                self._schedule(RETRY_S, "deadline", inst)
                return
            ev = inst.event
            if ev is None or ev.status is not Status.RUNNING or inst.deadline_armed:
                self._unban(inst)
                return
        left = inst.deadline - time.monotonic()
        if left > 0.001:
            self._unban(inst)
            inst.deadline_armed = True
            self._schedule(left, "deadline", inst)
            return
        t = ev.fn.effective_timeout
        self._kill(inst, Outcome(Status.FAILED, "TimeoutError", f"timed out after {t:g} s", "timeout"))

    def _timer_tick(self, _: Any) -> None:
        now = time.monotonic()
        limited = False
        for inst in list(self._all):
            if inst.fn is None:  # the spare
                if inst.state == STARTING and now - inst.started_at > _START_TIMEOUT_S:
                    self._kill(inst, None)
            elif inst.state == IDLE and now - inst.idle_since > self.config.idle_instance_seconds:
                self._kill_idle(inst)
            elif inst.state == STARTING and now - inst.started_at > _START_TIMEOUT_S:
                self._kill(inst, Outcome(Status.FAILED, "InstanceStartError",
                                         f"the instance did not start within {_START_TIMEOUT_S:g} s", "start"))
            elif inst.state == BUSY and inst.cgroup is not None:
                limited = True
                self._check_cgroup(inst)
        self._memory.sweep()
        self._schedule(0.1 if limited else 0.5, "tick", None)

    # -- memory_mb -------------------------------------------------------------------------------------------
    @property
    def memory_limit_mode(self) -> str:
        """How ``memory_mb`` is enforced here: ``cgroup2``, ``cgroup1`` (the kernel, at once) or
        ``watchdog`` (samples every 10 ms, and each event's peak when it ends)."""
        return self._memory.mode

    def _init_memory(self) -> None:
        self._memory = MemoryCgroups(self.config.memory_cgroups, os.getpid())
        self._watched = set()
        self._watch_armed = False

    def _load(self, inst: Instance) -> None:
        """Send ``inst`` its function (``Instance.load``); a limited one first gets its cgroup (it moves itself
        in before its code runs) or is watched."""
        fn = inst.fn
        if fn is not None and fn.memory_mb and inst.pid and inst.cgroup is None and inst not in self._watched:
            inst.cgroup = self._memory.prepare(f"i{inst.number}", inst.pid, fn.memory_mb * _MB)
            if inst.cgroup is None:
                self._watched.add(inst)
                self._watch(inst)
        inst.load()

    def _watch(self, inst: Instance) -> None:
        """``inst`` (of a limited function) starts an event: keep the watchdog running if it is watched."""
        if not self._watch_armed and inst in self._watched:
            self._watch_armed = True
            self._schedule(WATCH_S, "memory", None)

    def _timer_memory(self, _: Any) -> None:
        """The watchdog: sample each busy watched instance (with its descendants); again soon while any is."""
        self._watch_armed = False
        busy = False
        for inst in list(self._watched):
            if inst.state != BUSY or not inst.pid:
                continue
            busy = True
            used = _rss(inst.pid)
            if used > inst.fn.memory_mb * _MB:  # type: ignore[union-attr, operator]
                self._over_memory(inst, used, f"{used / _MB:.0f} MB used")
        if busy:
            self._watch_armed = True
            self._schedule(WATCH_S, "memory", None)

    def _check_cgroup(self, inst: Instance) -> None:
        """A busy instance with a cgroup: the OOM killer killed in it (a child: the instance lives on); or, if
        it is not inside after all (its move was refused), watch it."""
        cg = inst.cgroup
        assert cg is not None
        if not cg.entered and not self._entered(inst):
            return
        if cg.oom_kills():
            peak = cg.peak()
            self._over_memory(inst, peak, f"the kernel's OOM killer stopped it at {peak / _MB:.0f} MB")

    def _entered(self, inst: Instance, ended: bool = False) -> bool:
        """Whether ``inst`` moved into its cgroup (it does so as its code loads, which its first event, once
        ended or running for a second, has done); if it did not, watch it instead."""
        cg = inst.cgroup
        assert cg is not None
        if inst.pid and cg.holds(inst.pid):
            cg.entered = True
            return True
        ev = inst.event
        if ended or (ev is not None and time.monotonic() - (inst.deadline - ev.fn.effective_timeout) > 1.0):
            inst.cgroup = None
            self._memory.remove(cg)
            self._watched.add(inst)
            self._watch(inst)
        return False

    def _over_memory(self, inst: Instance, used: int, how: str) -> None:
        if self._has_pending(inst) and not self._settle(inst):  # know which event runs before blaming it
            return
        if inst.state != BUSY:
            self._unban(inst)
        else:
            self._kill(inst, Outcome(Status.FAILED, "MemoryLimitExceeded", _exceeded(inst, how), "memory limit",
                                     mem_usage_bytes=used))

    def _ended_over_memory(self, inst: Instance, ev: EventState, status: str, payload: Any,
                           duration_ms: float, mem: int | None) -> bool:
        """Called by ``_complete_one`` for an event of a limited function that has just ended on ``inst``: if
        it went over ``memory_mb`` (the worker says so, or its peak is over, or the OOM killer killed in its
        cgroup), end it FAILED ``MemoryLimitExceeded`` whatever it returned, replace the instance, and say
        True."""
        if status == "ABORTED":
            return False
        cg = inst.cgroup
        if cg is not None and not cg.entered and not self._entered(inst, ended=True):
            cg = None
        said = status == "FAILED" and isinstance(payload, dict) and payload.get("type") == "MemoryLimitExceeded"
        if cg is not None and cg.oom_kills():
            used = max(mem or 0, cg.peak())
            how = f"the kernel's OOM killer stopped it at {used / _MB:.0f} MB"
        elif said or (cg is None and ev.fn.memory_mb is not None and (mem or 0) > ev.fn.memory_mb * _MB):
            used = mem or 0
            how = f"{used / _MB:.0f} MB at its peak"
        else:
            return False
        self._end(ev, Status.FAILED, duration_ms=duration_ms, mem_usage_bytes=used,
                  error_type="MemoryLimitExceeded", error_message=_exceeded(inst, how),
                  error_traceback=payload.get("traceback", "") if isinstance(payload, dict) else "",
                  exit_reason="memory limit")
        self._kill(inst, None)
        return True

    def _died_of_memory(self, inst: Instance) -> Outcome | None:
        """The outcome of an instance that died by itself, if the OOM killer killed in its cgroup."""
        cg = inst.cgroup
        if cg is None or not cg.oom_kills():
            return None
        peak = cg.peak()
        how = f"the kernel's OOM killer stopped it at {peak / _MB:.0f} MB"
        return Outcome(Status.FAILED, "MemoryLimitExceeded", _exceeded(inst, how), "memory limit",
                       mem_usage_bytes=peak)

    def _release_memory(self, inst: Instance) -> None:
        """``inst`` is reaped: forget it, and remove its cgroup."""
        self._watched.discard(inst)
        if inst.cgroup is not None:
            self._memory.remove(inst.cgroup)
            inst.cgroup = None


def _exceeded(inst: Instance, how: str) -> str:
    limit = inst.fn.memory_mb if inst.fn is not None else None
    return f"memory limit exceeded: {how}, memory_mb={limit}"


def _rss(pid: int) -> int:
    """Resident memory of ``pid`` and all its descendants, in bytes."""
    total = 0
    for p in [pid, *descendants(pid)]:
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, ValueError, IndexError):
            pass
    return total

