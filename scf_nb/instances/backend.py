"""The instance backend: how the engine starts, feeds and kills instances, and what they report back.

::

    engine (engine thread)                      backend                               instances
    ----------------------                      -------                               ---------
    Dispatcher: start(fn) / load(inst) ---->    make a process (an actor), a channel  -- hello --> connected(inst)
                offer(inst, ev), send_ahead ->  pending events; an instance claims one ------> started(inst, ev, at)
    Lifecycle:  take_back(ev), settle(inst) ->  is it started? stop claims, catch up
                kill(inst, grace) ---------->   signal the instance and all it started
                                                lines from fds 1/2, tagged by event  -------> lines(ev, stream, lines)
                                                "done" after the event's last line  --------> finished(inst, ev, done)
                                                a death nobody asked for  ------------------> lost(inst)
                                                reaped: pipes at EOF, process gone  --------> forget(inst), gone(inst)

Every event starts by an instance's claim: the engine offers an event (the oldest waiting) to one idle
instance and may send it (and the next ones) ahead to busy ones; whichever claims it first runs it. The
engine keeps the FIFO order (a backend only ever takes the FIFO's head, or a prefix of it), the limits, the
statuses, the timeouts and the store; the backend keeps everything about processes, channels and claims.
All calls, both ways, are made on the engine thread; a backend's own threads use ``Loop.post``.
``docs/architecture.md`` has the table of calls; this module is the contract.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..core.functions import Function
    from ..core.records import EventState
    from ..core.status import Status

# An instance's states. The engine moves them (STARTING -> IDLE <-> BUSY -> DYING); the backend sets REAPED.
STARTING, IDLE, BUSY, DYING = "starting", "idle", "busy", "dying"
REAPED = "reaped"

# What take_back(ev) says: taken back (it never started and never will), decided now (look again at once),
# not known now (a worker holds what decides it: ask again shortly), or not held by the backend at all.
TAKEN, AGAIN, LATER, NOT_HELD = "taken", "again", "later", "not held"


@dataclass
class Outcome:
    """How the event of an instance that is being killed ends (``status`` None: as an unasked death)."""

    status: Status | None
    error_type: str | None = None
    error_message: str | None = None
    exit_reason: str = ""
    mem_usage_bytes: int | None = None  # as measured when the engine decided (a memory limit)


@dataclass
class Death:
    """Why an instance died on its own."""

    description: str  # e.g. "the instance process was killed by SIGKILL (killed from outside, or out of memory)"
    oom_peak: int | None = None  # the kernel's OOM killer killed inside its memory limit, at this peak (bytes)


class Done:
    """An event's end, reported once its last line is in (``Host.finished``)."""

    __slots__ = ("status", "payload", "duration_ms", "mem", "end_time", "init_ms", "pickled")

    def __init__(self, status: str, payload: Any, duration_ms: float, mem: int | None, end_time: float,
                 init_ms: float | None, pickled: bytes | None) -> None:
        self.status = status  # "FINISHED", "FAILED" (the handler raised; payload: type, message, traceback), "ABORTED"
        self.payload = payload  # the result's JSON text, or the error's dict (None: a SIGTERM nobody sent)
        self.duration_ms = duration_ms
        self.mem = mem  # peak (or resident) memory of the event, bytes
        self.end_time = end_time  # on the engine's clock
        self.init_ms = init_ms  # the cold start, when this event paid it
        self.pickled = pickled  # the result's pickle, where JSON would lose it


class Instance:
    """One instance, as the engine and its backend share it (the backend subclasses it). Only the engine thread
    touches it."""

    def __init__(self, fn: Function | None, number: int) -> None:
        self.fn = fn  # None: a spare, not yet given a function
        self.number = number
        self.state = STARTING
        self.connected = False  # it said hello (``Host.connected``): before that it gets no event
        self.pid: int | None = None  # recorded with the events it runs (instance_pid)
        self.event: EventState | None = None  # the event it runs
        self.last_event: EventState | None = None  # the one it ran last (its leftovers' lines go there)
        self.outcome: Outcome | None = None  # set when the engine kills it (or finds it dead)
        self.idle_since = 0.0
        self.started_at = 0.0
        self.deadline = 0.0  # time.monotonic() by which its event must end
        self.deadline_armed = False  # a deadline timer is pending for it
        self.offer: Any = None  # idle: the backend's token of an event offered to it, not yet answered
        self.banned = False  # settled for a kill decision: it claims nothing until unbanned

    @property
    def key(self) -> tuple[str, str] | None:
        return self.fn.key if self.fn is not None else None

    @property
    def revision(self) -> int:
        return self.fn.revision if self.fn is not None else -1


class Host(Protocol):
    """What a backend reports to the engine (``engine.lifecycle.Lifecycle``), on the engine thread."""

    @property
    def pools(self) -> Mapping[tuple[str, str], Sequence[Instance]]:
        """Per function, its instances not yet reaped (read only): the busy ones may be sent events ahead."""

    def connected(self, inst: Instance) -> None:
        """``inst`` can serve: the engine loads its function (if it has one), makes it IDLE and dispatches."""

    def started(self, inst: Instance, ev: EventState, at: float) -> bool:
        """``inst`` claimed ``ev`` (pending for it) at ``at`` (engine clock): RUNNING. False if ``inst`` is being
        stopped: ``ev`` then fails (it died with the instance)."""

    def lines(self, ev: EventState, stream: str, lines: list[str]) -> None:
        """Lines ``ev`` wrote on ``stream``, in order (also after it ended: processes it left behind)."""

    def finished(self, inst: Instance, ev: EventState, done: Done) -> bool:
        """``ev`` ended on ``inst`` after its last line: the engine ends it. False if ``inst`` serves no more
        (the engine is killing it: an exception, a memory limit)."""

    def idle(self, inst: Instance) -> None:
        """``inst`` finished its event and claimed no other."""

    def lost(self, inst: Instance) -> None:
        """``inst``'s process died or its channel broke, unasked: the engine kills it (its event ends as a
        death, with ``Backend.cause_of_death``)."""

    def forget(self, inst: Instance) -> None:
        """``inst`` is being reaped: it serves no new event."""

    def gone(self, inst: Instance) -> None:
        """``inst`` is reaped (every line is in): its event ends with ``inst.outcome`` or the cause of death."""

    def watch_memory(self, inst: Instance) -> None:
        """The backend cannot hold ``inst`` to its memory limit after all: the engine samples it."""

    def need_dispatch(self) -> None:
        """Room may have come free: the engine dispatches on its next turn."""

    def dispatch(self, key: tuple[str, str], freed: Instance | None = None) -> None:
        """Dispatch function ``key``'s waiting events now; ``freed``: the instance whose event just ended (if it
        stays idle, other functions may want its room)."""

    def wall(self, at: float) -> float:
        """A ``time.time()`` reading (an instance's, or one taken in a lock) on the engine's clock."""


class InstanceRecords(Protocol):
    """The store's record of instances, for recovery after an engine dies (``store.Store`` has these)."""

    def record_instance(self, pgid: int, pid: int, engine_pid: int, mark: str) -> None: ...
    def forget_instance(self, pgid: int) -> None: ...
    def dead_instances(self) -> tuple[dict[int, int], set[str]]: ...


class Backend(Protocol):
    """Instances of function versions, made, fed and killed for the engine. Called on the engine thread only
    (``recover`` and ``close`` before and after it runs)."""

    name: str
    mark: str  # this engine's owner mark: recorded in the store, so a later engine finds what this one left
    # Whether a spare (``start(None)``) can serve any function later: not where an instance's resources are
    # fixed when it starts (a Ray actor's). The engine keeps a warm spare only then (``Config.warm_spare``).
    keeps_spare: bool

    def attach(self, host: Host) -> None:
        """Where reports go (the engine's parts call each other: set once, before any instance starts)."""

    @property
    def memory_limit_mode(self) -> str:
        """How ``memory_mb`` is enforced: by the backend (e.g. ``cgroup2``), or ``watchdog`` (the engine samples)."""

    def validate(self, fn: Function) -> None:
        """Refuse (``ScfError``) a function whose settings cannot apply on this backend."""

    def recover(self, records: InstanceRecords) -> list[int]:
        """Stop what the engines that used this store before left running (they are gone); returns the
        processes that could not be stopped. Keeps ``records`` to record this engine's instances."""

    def info(self) -> dict[str, Any]:
        """Which backend, and where its instances run."""

    # -- the life of an instance -----------------------------------------------------------------------------
    def start(self, fn: Function | None) -> Instance:
        """A new instance for ``fn`` (None: a spare, given a function later by ``load``). STARTING: it gets no
        event before ``Host.connected``."""

    def load(self, inst: Instance) -> None:
        """Give the connected ``inst`` its function ``inst.fn`` (code, environment, settings)."""

    def kill(self, inst: Instance, grace: float = 0.0) -> None:
        """Stop ``inst`` and everything it started; ``grace`` > 0: ask it to stop first (its handler unwinds),
        kill after ``grace`` s. ``Host.gone`` follows once every line it wrote is in."""

    def cause_of_death(self, inst: Instance) -> Death:
        """Why ``inst`` died, when nobody killed it."""

    def tick(self) -> None:
        """Housekeeping, about twice a second."""

    # -- every event starts by an instance's claim -------------------------------------------------------------
    def unoffered(self, key: tuple[str, str]) -> EventState | None:
        """The oldest event of ``key`` pending here (older than the engine's FIFO) not offered to an idle
        instance."""

    def waiting(self, key: tuple[str, str]) -> int:
        """How many events of ``key`` are pending here and not offered to an idle instance."""

    def offer(self, inst: Instance, ev: EventState, from_fifo: bool) -> bool:
        """Offer ``ev`` to the idle ``inst`` (``from_fifo``: it is the FIFO's head, which the engine pops when
        this returns True; it is pending here from now); the busy instances of its function may claim it
        too. The claim comes as ``Host.started``. False: not now, the engine asks again shortly."""

    def send_ahead(self, queue: Sequence[EventState]) -> int:
        """Every instance of the FIFO head's function may be busy: send events ahead, to be claimed as each
        finishes. Returns how many of ``queue``'s first events are pending here now (the engine pops them)."""

    def take_back(self, ev: EventState) -> str:
        """Terminate of the QUEUED ``ev``: ``TAKEN``, ``AGAIN``, ``LATER`` or ``NOT_HELD``."""

    def take_oldest(self, key: tuple[str, str], revision: int, before: int | None) -> EventState | str | None:
        """Take back the oldest pending event of ``key``'s ``revision`` older than event key ``before``: it, or
        ``LATER`` (not known now), or None."""

    def take_back_all(self) -> list[EventState]:
        """The engine stops: take back every pending event that no instance started."""

    def settle(self, inst: Instance) -> bool:
        """Before a kill decision: stop ``inst`` claiming and catch up on what it claimed, so ``inst.event`` is
        exactly what runs there. False: it cannot be known now (ask again shortly)."""

    def unban(self, inst: Instance) -> None:
        """``inst`` was settled and not killed: it may claim again."""

    # -- memory ---------------------------------------------------------------------------------------------------
    def limit_memory(self, inst: Instance, limit: int) -> bool:
        """Hold ``inst`` (with all it starts) to ``limit`` bytes, before its code loads. False: the backend
        cannot; the engine samples ``memory`` instead."""

    def memory(self, inst: Instance) -> int:
        """Resident memory of ``inst`` and its descendants now, bytes."""

    def oom_killed(self, inst: Instance, ended: bool = False) -> int | None:
        """If the OOM killer killed inside ``inst``'s limit: its peak, bytes. ``ended``: its event has ended."""

    def close(self) -> None:
        """Release everything (the engine's loop has stopped); kill what is still alive."""
