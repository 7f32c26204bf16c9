"""The loky backend: :class:`scf_nb.instances.backend.Backend` with one loky worker process per instance.

::

    LokyBackend
      |-- Spawner (spawner.py)     a long-lived thread starting single-worker loky executors (PDEATHSIG)
      |-- Channels (channels.py)   per instance: its Unix socket (wire.py) and capture pipes on the engine's
      |     `-- Leftovers          loop; "done" + END markers end an event; kill, reap (pidfd, exit status)
      |-- Sending (sending.py)     pending events as records shared with the workers (ahead.py): offers,
      |                            sending ahead, claims, take back, settle before a kill
      `-- MemoryCgroups            memory_mb by the kernel where the machine allows it (cgroups.py)

An instance is a single-worker loky executor running ``worker.serve``: its own process group, the engine's
mark in its environment, dead with the engine (PR_SET_PDEATHSIG), the subreaper of what it starts. Its
process groups are recorded in the store, so the next engine kills what a dead one left (``recover``).
"""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...core.errors import invalid
from ..backend import Death, Host, Instance, InstanceRecords, Outcome
from .cgroups import MemoryCgroups
from .channels import Channels
from .instance import LokyInstance
from .processes import leftovers, rss
from .sending import Sending
from .spawner import Spawner, at_exit, cancel_at_exit

if TYPE_CHECKING:
    from ...core.config import Config
    from ...core.functions import Function
    from ...engine.loop import Loop


class LokyBackend:
    """Instances as loky worker processes on this machine."""

    name = "loky"
    keeps_spare = True

    def __init__(self, config: Config, loop: Loop, close_at_exit: Callable[[], None]) -> None:
        self.loop = loop
        _remove_stale_sockdirs()
        self.sockdir = tempfile.mkdtemp(prefix=f"scf_nb-{os.getpid()}-")
        self.address = os.path.join(self.sockdir, "engine.sock")
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.address)
        self.listener.listen(128)
        self.listener.setblocking(False)
        # finds out (on a thread of its own) whether memory_mb can be a cgroup's limit
        self.cgroups = MemoryCgroups(config.memory_cgroups, os.getpid())
        self.live: dict[int, LokyInstance] = {}  # not reaped, by number
        self._numbers = itertools.count(1)
        self.sending = Sending(loop, self.sockdir, self.live)
        self.spawner = Spawner(lambda inst: loop.post(self.channels.exited, inst))
        self.mark = self.spawner.mark
        self.channels = Channels(loop, self.spawner, self.sending, self.cgroups, self.listener, self.live)
        self.sending.channels = self.channels
        self.ahead = self.sending.ahead  # each function's pending events
        # Every event starts by an instance's claim: those calls are the send-ahead part's own (bound here, so
        # there is no call in between on the way of every event)
        sending = self.sending
        self.unoffered = sending.unoffered
        self.waiting = sending.waiting
        self.offer = sending.offer
        self.send_ahead = sending.send_ahead
        self.take_back = sending.take_back
        self.take_oldest = sending.take_oldest
        self.take_back_all = sending.take_back_all
        self.settle = sending.settle
        self.unban = sending.unban
        loop.watch(self.listener.fileno(), self.channels.on_accept, None)
        loop.turn_ends.append(self.sending)  # an idle worker's claim is in the records only: look there
        self._close_at_exit = close_at_exit
        at_exit(close_at_exit)  # before loky's own exit handler, which would wait for the serve loops forever

    def attach(self, host: Host) -> None:
        self.sending.host = host
        self.channels.host = host

    @property
    def memory_limit_mode(self) -> str:
        """``cgroup2``, ``cgroup1`` (the kernel, at once) or ``watchdog`` (samples every 10 ms, and each
        event's peak when it ends)."""
        return self.cgroups.mode

    def validate(self, fn: Function) -> None:
        """Instances here are processes on this machine: ``num_cpus`` is a hint (each instance is one process;
        ``concurrency`` and ``max_workers`` bound them), GPUs and custom resources are not scheduled."""
        if fn.num_gpus:
            raise invalid("NumGpus", f"{fn.name}: num_gpus={fn.num_gpus:g} needs the ray backend (GPUs are scheduled "
                                     f"on a Ray cluster); the loky backend runs instances on this machine: "
                                     f"scf_nb.configure(backend='ray', ray_address=...)")
        if fn.resources:
            raise invalid("Resources", f"{fn.name}: custom resources {dict(fn.resources)} need the ray backend; "
                                       f"the loky backend runs instances on this machine: "
                                       f"scf_nb.configure(backend='ray', ray_address=...)")

    def recover(self, records: InstanceRecords) -> list[int]:
        """Kill what dead engines left running: every process with their mark, in any process group or
        session (``processes.leftovers``)."""
        self.channels.records = records
        groups, marks = records.dead_instances()
        unstoppable = []
        for pid in leftovers(groups, marks):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            except PermissionError:
                unstoppable.append(pid)
        return unstoppable

    def info(self) -> dict[str, Any]:
        return {"backend": self.name, "machine": os.uname().nodename, "memory_limit_mode": self.memory_limit_mode}

    # -- the life of an instance -------------------------------------------------------------------------------
    def start(self, fn: Function | None) -> Instance:
        inst = LokyInstance(fn, next(self._numbers), os.urandom(16).hex())
        inst.started_at = time.monotonic()
        self.live[inst.number] = inst
        self.channels.by_token[inst.token] = inst
        self.spawner.spawn(inst, self.address)
        return inst

    def load(self, inst: Instance) -> None:
        assert isinstance(inst, LokyInstance) and inst.key is not None
        inst.records = self.sending.records_for(inst.key)
        if inst.conn is not None:
            try:
                inst.load()
            except (OSError, ValueError):  # gone already: its event (if any) fails to send too, and goes back
                self.channels.broken(inst)

    def kill(self, inst: Instance, grace: float = 0.0) -> None:
        assert isinstance(inst, LokyInstance)
        self.channels.kill(inst, grace)

    def cause_of_death(self, inst: Instance) -> Death:
        assert isinstance(inst, LokyInstance)
        return Death(inst.exit_description(), self.oom_killed(inst, dead=True))

    def tick(self) -> None:
        self.cgroups.sweep()

    # -- memory ---------------------------------------------------------------------------------------------------
    def limit_memory(self, inst: Instance, limit: int) -> bool:
        """A cgroup of its own, which the worker moves into as its code loads."""
        assert isinstance(inst, LokyInstance) and inst.pid
        if inst.cgroup is None:
            inst.cgroup = self.cgroups.prepare(f"i{inst.number}", inst.pid, limit)
        return inst.cgroup is not None

    def memory(self, inst: Instance) -> int:
        return rss(inst.pid) if inst.pid else 0

    def oom_killed(self, inst: Instance, ended: bool = False, dead: bool = False) -> int | None:
        """The peak, if the OOM killer killed in ``inst``'s cgroup. One it has not moved into (it does so as its
        code loads, which its first event, once ended or running for a second, has done) is removed, and the
        engine told to watch the instance instead."""
        assert isinstance(inst, LokyInstance)
        cg = inst.cgroup
        if cg is None:
            return None
        if not dead and not cg.entered:
            if inst.pid and cg.holds(inst.pid):
                cg.entered = True
            else:
                ev = inst.event
                if ended or (ev is not None and time.monotonic() - (inst.deadline - ev.fn.effective_timeout) > 1.0):
                    inst.cgroup = None
                    self.cgroups.remove(cg)
                    self.channels.host.watch_memory(inst)
                return None
        return cg.peak() if cg.oom_kills() else None

    def close(self) -> None:
        cancel_at_exit(self._close_at_exit)
        alive = list(self.live.values())  # none, unless the engine could not start (or its loop hung)
        for inst in alive:
            if inst.outcome is None:
                inst.outcome = Outcome(None)
            inst.signal(signal.SIGKILL)
        self.spawner.stop()
        for inst in alive:
            if inst.executor is not None:
                inst.executor.shutdown(wait=False, kill_workers=True)
        self.cgroups.close()
        self.sending.close()
        self.listener.close()
        shutil.rmtree(self.sockdir, ignore_errors=True)


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
