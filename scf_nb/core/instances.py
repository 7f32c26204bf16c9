"""Instances: one process each, made and watched by loky, serving one function revision's events one at a
time. This module is the engine's side of an instance; ``worker.py`` is the process's side.

Why one single-worker loky executor per instance: killing one worker of a shared loky pool fails every
future of that pool and replaces all its workers, so an instance that may be terminated must be alone in
its executor. loky only starts the process (and reaps it); the engine talks to it over its own socket, which
is far cheaper than a loky ``submit`` per event.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from . import wire
from .functions import Function
from .logchannel import LineSplitter
from .records import EventState
from .status import Status
from .worker import INSTANCE_MARK, proc_stats

STARTING, IDLE, BUSY, DYING = "starting", "idle", "busy", "dying"


@dataclass
class Outcome:
    """How the event of an instance that is being killed ends."""

    status: Status | None
    error_type: str | None = None
    error_message: str | None = None
    exit_reason: str = ""


class Instance:
    """The engine's handle on one instance process. Only the engine thread touches it."""

    def __init__(self, fn: Function | None, number: int, token: str) -> None:
        self.fn = fn
        self.number = number
        self.token = token
        self.state = STARTING
        self.executor: Any = None
        self.process: Any = None
        self.conn: Any = None  # a socket.socket, once the instance has said hello
        self.reader: Any = None
        self.msgs: deque[tuple[Any, ...]] = deque()  # received, not handled yet
        self.conn_fd = -1
        self.pidfd: int | None = None
        self.pid: int | None = None
        self.streams: dict[int, LineSplitter] = {}
        self.open_fds: set[int] = set()
        self.event: EventState | None = None
        self.last_event: EventState | None = None
        self.dones: deque[tuple[Any, ...]] = deque()  # "done" messages not yet matched with their END markers
        self.outcome: Outcome | None = None  # set when the engine kills it (or finds it dead)
        self.exited = False
        self.exitcode: int | None = None  # as the pidfd told, when it did
        self.idle_since = 0.0
        # Events sent ahead (dispatch.py): the records of the function's, the newest one sent to this instance,
        # the sizes of those it has not read yet, how many it had read at its last "done", whether it is banned
        self.records = ""
        self.sent_upto = 0
        self.unread: deque[int] = deque()
        self.acked = 0
        self.banned = False
        self.settling = False  # the engine is catching up with what it claimed, before a kill
        self.deadline = 0.0  # time.monotonic() by which its event must end
        self.deadline_armed = False  # a "deadline" timer is pending for it
        self.started_at = 0.0

    @property
    def key(self) -> tuple[str, str] | None:
        return self.fn.key if self.fn is not None else None

    @property
    def revision(self) -> int:
        return self.fn.revision if self.fn is not None else -1

    def load(self) -> None:
        """Send the function's code, environment and settings (a spare learns here which function it serves);
        a "run" then carries only what differs per event."""
        fn = self.fn
        assert fn is not None and self.conn is not None
        context = {"function_name": fn.name, "namespace": fn.namespace, "memory_limit_in_mb": fn.memory_mb}
        self.send(("load", {"name": fn.name, "code": fn.code, "handler": fn.handler, "env": dict(fn.env),
                            "context": context, "timeout": fn.effective_timeout, "records": self.records,
                            "number": self.number}))

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
        for target in (lambda: os.killpg(pid, sig), lambda: os.kill(pid, sig)):
            try:
                target()
            except (ProcessLookupError, PermissionError):
                pass
        for p in targets:
            try:
                os.kill(p, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def exit_description(self) -> str:
        code = self.exitcode
        if code is None and self.process is not None:
            self.process.join(timeout=0.5)
            # loky's thread may have reaped it a moment before (then our waitpid finds no child) and not yet
            # stored the code, in its Process or through its exit callback: give it that moment
            deadline = time.monotonic() + _EXIT_CODE_WAIT_S
            while (code := self._exit_code()) is None and time.monotonic() < deadline:
                time.sleep(0.002)
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

    def _exit_code(self) -> int | None:
        return self.exitcode if self.exitcode is not None else self.process.exitcode


_EXIT_CODE_WAIT_S = 0.1  # on the engine thread; the other reaper stores the code within a few switch intervals


def descendants(pid: int) -> list[int]:
    """Every living descendant of ``pid``: walks /proc/PID/task/*/children (only the subtree) where the
    kernel has those files, else scans all of /proc."""
    if not _HAS_CHILDREN_FILES:
        return _descendants_by_scan(pid)
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
                out.extend(kids)
                todo.extend(kids)
        except OSError:  # it exited while we looked
            continue
    return out


def leftovers(groups: list[int]) -> list[int]:
    """The processes still alive in the process groups of a dead engine's instances that are really theirs:
    an instance (a loky worker) or a process started under one (it carries the instance's mark in its
    environment). After a reboot those group ids may belong to anything else: that is left alone."""
    wanted = set(groups)
    if not wanted:
        return []
    mark = f"{INSTANCE_MARK}=".encode()
    found = []
    for pid, fields in proc_stats():
        if len(fields) < 3 or int(fields[2]) not in wanted:
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
        except OSError:
            continue
        if b"loky" in cmdline or mark in environ:
            found.append(pid)
    return found


_HAS_CHILDREN_FILES = os.path.exists(f"/proc/self/task/{os.getpid()}/children")


def _descendants_by_scan(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for child, fields in proc_stats():
        children.setdefault(int(fields[1]), []).append(child)
    out, todo = [], list(children.get(pid, ()))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, ()))
    return out


class Spawner:
    """A long-lived thread that starts (and shuts down) loky executors.

    Starting from one long-lived thread matters: PR_SET_PDEATHSIG fires when the *thread* that forked a
    process exits, so instances must not be forked by whichever short-lived thread called ``invoke``.
    """

    def __init__(self, on_exit: Callable[[Instance], None]) -> None:
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._run, name="scf_nb-spawner", daemon=True)
        self._thread.start()

    def spawn(self, inst: Instance, address: str) -> None:
        self._jobs.put(("spawn", inst, address))

    def dispose(self, inst: Instance) -> None:
        self._jobs.put(("dispose", inst, None))

    def stop(self) -> None:
        self._jobs.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        import loky

        from . import worker

        while True:
            job = self._jobs.get()
            if job is None:
                return
            kind, inst, address = job
            try:
                if kind == "spawn":
                    self._spawn(loky, worker, inst, address)
                elif inst.executor is not None:
                    inst.executor.shutdown(wait=False, kill_workers=True)
            except Exception as e:  # an instance that cannot start fails its event, not the engine
                inst.outcome = inst.outcome or Outcome(Status.FAILED, "InstanceStartError", repr(e),
                                                       "the instance could not start")
                self._on_exit(inst)

    def _spawn(self, loky: Any, worker: Any, inst: Instance, address: str) -> None:
        if inst.outcome is not None:  # killed before it started
            self._on_exit(inst)
            return
        executor = loky.ProcessPoolExecutor(max_workers=1, initializer=worker.init_instance,
                                            initargs=(os.getpid(),))
        future = executor.submit(worker.serve, address, inst.token)
        inst.executor = executor
        inst.process = next(iter(executor._processes.values()), None)
        _register_exit_hook()
        future.add_done_callback(lambda f: self._exited(inst, f))

    def _exited(self, inst: Instance, future: Any) -> None:
        """loky saw the process end. Its error names the exit code ("... {SIGKILL(-9)}"): a second source
        for the cause, for when loky reaped the process before the engine could read its pidfd."""
        if inst.exitcode is None:
            try:
                error = future.exception(timeout=0)
            except BaseException:  # cancelled, or anything else: no code to learn
                error = None
            found = re.search(r"\((-?\d+)\)\}", str(error)) if error is not None else None
            if found:
                inst.exitcode = int(found.group(1))
        self._on_exit(inst)


_exit_hooks: list[Callable[[], None]] = []


def at_exit(fn: Callable[[], None]) -> None:
    """Run ``fn`` at interpreter exit before loky's own exit handler, which would otherwise wait forever
    for serve loops that never return."""
    _exit_hooks.append(fn)


def cancel_at_exit(fn: Callable[[], None]) -> None:
    """Forget ``fn`` (a closed engine need not be kept alive until exit)."""
    if fn in _exit_hooks:
        _exit_hooks.remove(fn)


def _register_exit_hook() -> None:
    # loky registers its _python_exit again for every executor started (its "registered once" guard keeps
    # the None that threading._register_atexit returns), so move ours to the end each time.
    atexits = threading._threading_atexits  # type: ignore[attr-defined]
    atexits[:] = [f for f in atexits if getattr(f, "func", None) is not _run_exit_hooks]
    # threading's exit callbacks run in reverse order of registration: registered after loky's (made by
    # the first executor), ours runs first.
    threading._register_atexit(_run_exit_hooks)  # type: ignore[attr-defined]


def _run_exit_hooks() -> None:
    for fn in reversed(_exit_hooks):
        try:
            fn()
        except Exception:
            pass
