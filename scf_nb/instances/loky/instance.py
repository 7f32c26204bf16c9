"""The loky backend's handle on one instance process: its channel (socket, capture pipes), its claims of
events sent ahead, and how its process ended. Only the engine thread touches it."""

from __future__ import annotations

import os
import signal
from collections import deque
from typing import TYPE_CHECKING, Any

from ..backend import Instance
from . import wire
from .processes import descendants

if TYPE_CHECKING:
    from ...core.functions import Function
    from ...core.logchannel import LineSplitter
    from ...core.records import EventState
    from .cgroups import Cgroup

_BY_SIGNAL = {getattr(os, "CLD_KILLED", 2), getattr(os, "CLD_DUMPED", 3)}


class LokyInstance(Instance):
    """One single-worker loky executor running ``worker.serve``, talking to the engine over its own socket."""

    def __init__(self, fn: Function | None, number: int, token: str) -> None:
        super().__init__(fn, number)
        self.token = token
        self.executor: Any = None
        self.process: Any = None
        self.conn: Any = None  # a socket.socket, once the instance has said hello
        self.reader: Any = None
        self.msgs: deque[tuple[Any, ...]] = deque()  # received, not handled yet
        self.conn_fd = -1
        self.pidfd: int | None = None
        self.streams: dict[int, LineSplitter] = {}  # the pipes fds 1/2 point at now
        # Pipes left to the processes an event left behind (after its end): fd -> (splitter, that event).
        self.retired: dict[int, tuple[LineSplitter, EventState | None]] = {}
        self.side: Any = None  # a socket.socket: the worker sends new pipes' read ends over it
        self.open_fds: set[int] = set()
        self.dones: deque[tuple[Any, ...]] = deque()  # "done" messages not yet matched with their END markers
        self.exited = False
        self.exitcode: int | None = None  # how it ended, once known (see exit_code)
        self.cause_until = 0.0  # time.monotonic() until which its event's end waits for that (see channels.py)
        # Events sent ahead (sending.py): the records of the function's, the newest one sent to this instance,
        # the sizes of those it has not read yet, how many it had read at its last "done"
        self.records = ""
        self.sent_upto = 0
        self.unread: deque[int] = deque()
        self.unread_bytes = 0
        self.acked = 0
        self.offer_at = 0  # how many runs it had been sent when it was offered ``offer`` (a record number)
        # It was sent a run or a poke since its last message: it will look at every run it holds (and say
        # what it did, by a "done" or a "read") without being poked again.
        self.looking = False
        # lines that may be of an event it claimed idle (unsure)
        self.unbound: list[tuple[LineSplitter, list[str]]] = []
        self.settling = False  # the engine is catching up with what it claimed, before a kill
        self.cgroup: Cgroup | None = None  # a limited instance's memory cgroup, where the machine allows one

    def load(self) -> None:
        """Send the function's code, environment and settings (a spare learns here which function it serves);
        a "run" then carries only what differs per event."""
        fn = self.fn
        assert fn is not None and self.conn is not None
        context = {"function_name": fn.name, "namespace": fn.namespace, "memory_limit_in_mb": fn.memory_mb}
        cg = self.cgroup  # the worker moves itself into it, and checks each event against the limit
        memory = fn.memory_mb and {"limit": fn.memory_mb << 20, "cgroup": cg and cg.procs,
                                   "oom_file": cg and cg.events_file}
        self.send(("load", {"name": fn.name, "code": fn.code, "handler": fn.handler, "env": dict(fn.env),
                            "context": context, "timeout": fn.effective_timeout, "records": self.records,
                            "number": self.number, "memory": memory or None}))

    def send(self, msg: tuple[Any, ...]) -> None:
        self.conn.sendall(wire.frame(msg))

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the instance, its process group and every descendant, including children that
        started a session of their own (the instance is their subreaper, so orphans stay descendants)."""
        pid = self.pid or (self.process.pid if self.process is not None else None)
        if pid is None:
            return
        # Find the descendants before the kill: once the instance is dead its orphans belong to init.
        targets = descendants(pid)
        for kill in (os.killpg, os.kill):
            try:
                kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
        for p in targets:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def exit_code(self) -> int | None:
        """How the process ended, if anyone knows yet, without blocking: its pidfd's status (read by the
        engine), else what loky's ``Popen`` recorded when it reaped it (or records now, if it is a zombie
        nobody reaped yet), else loky's error text (``Spawner._exited``). None while it runs, and for a moment
        after loky's manager thread reaped it: it stores the status only once it has the GIL back."""
        if self.exitcode is None and self.pidfd is not None:
            try:  # without reaping it: loky does, and keeps the status in its Popen
                info = os.waitid(os.P_PIDFD, self.pidfd, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except (OSError, AttributeError):  # reaped already
                info = None
            if info is not None:
                self.exitcode = -info.si_status if info.si_code in _BY_SIGNAL else info.si_status
        if self.exitcode is None and self.process is not None:
            try:
                code = self.process.exitcode  # the stored status; a WNOHANG waitpid while there is none
            except ValueError:  # the Process object was closed
                code = None
            if code is not None and self.exitcode is None:
                self.exitcode = code
        return self.exitcode

    def exit_description(self) -> str:
        code = self.exit_code()
        if code is None:
            return "the instance process died"
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            hint = {"SIGKILL": " (killed from outside, or out of memory)", "SIGSEGV": " (segmentation fault)"}
            return f"the instance process was killed by {name}{hint.get(name, '')}"
        return f"the instance process exited with code {code}"
