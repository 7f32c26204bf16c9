"""The engine's timers for instances: each instance's deadline (the timeout of the event it runs) and the tick
that stops idle instances, instances that do not start and instances over their function's ``memory_mb``.

``Timers`` is mixed into :class:`scf_nb.core.engine.Engine`; its ``_timer_<kind>`` methods run on the engine
thread when ``Engine._schedule(delay, kind, obj)`` comes due.
"""

from __future__ import annotations

import resource
import time
from typing import TYPE_CHECKING, Any

from .instance_io import REAPED
from .instances import BUSY, DYING, IDLE, STARTING, Instance, Outcome, descendants
from .status import Status

if TYPE_CHECKING:
    from .config import Config

_PAGE = resource.getpagesize()
_START_TIMEOUT_S = 60.0
RETRY_S = 0.02  # a terminate or timeout waits this long when an instance could not be asked what it runs


class Timers:
    """Deadlines and the tick, mixed into the Engine."""

    if TYPE_CHECKING:  # provided by Engine and its other mixins
        config: Config
        _all: set[Instance]

        def _schedule(self, delay: float, kind: str, obj: Any) -> None: ...
        def _settle(self, inst: Instance) -> bool: ...
        def _kill(self, inst: Instance, outcome: Outcome | None, sig: int = ..., grace: float = ...) -> None: ...

    def _timer_deadline(self, inst: Instance) -> None:
        """The timeout of the event ``inst`` runs, if it has come; else wait for that event's deadline."""
        inst.deadline_armed = False
        ev = inst.event
        if ev is None or ev.status is not Status.RUNNING or inst.state == DYING or inst.state == REAPED:
            return
        if inst.deadline - time.monotonic() <= 0.001 and inst.ahead:
            # it may have returned, and the one sent ahead started (with its own deadline)
            if not self._settle(inst):
                inst.deadline_armed = True
                self._schedule(RETRY_S, "deadline", inst)
                return
            ev = inst.event
            if ev is None or ev.status is not Status.RUNNING or inst.deadline_armed:
                return
        left = inst.deadline - time.monotonic()
        if left > 0.001:
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
                self._kill(inst, None)
            elif inst.state == STARTING and now - inst.started_at > _START_TIMEOUT_S:
                self._kill(inst, Outcome(Status.FAILED, "InstanceStartError",
                                         f"the instance did not start within {_START_TIMEOUT_S:g} s", "start"))
            elif inst.state == BUSY and inst.fn.memory_mb and inst.pid:
                limited = True
                if inst.ahead and not self._settle(inst):  # know which event runs before blaming it
                    continue
                if inst.state != BUSY:
                    continue
                used = _rss(inst.pid)
                if used > inst.fn.memory_mb * 1024 * 1024:
                    self._kill(inst, Outcome(
                        Status.FAILED, "MemoryLimitExceeded",
                        f"memory limit exceeded: {used / 2**20:.0f} MB used, memory_mb={inst.fn.memory_mb}",
                        "memory limit", mem_usage_bytes=used))
        self._schedule(0.1 if limited else 0.5, "tick", None)


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

