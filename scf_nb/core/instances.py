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
import secrets
import signal
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import wire
from .cgroups import Cgroup
from .functions import Function
from .logchannel import LineSplitter
from .records import EventState
from .status import Status
from .worker import INSTANCE_MARK, proc_stats

STARTING, IDLE, BUSY, DYING = "starting", "idle", "busy", "dying"
REAPED = "reaped"
_BY_SIGNAL = {getattr(os, "CLD_KILLED", 2), getattr(os, "CLD_DUMPED", 3)}


@dataclass
class Outcome:
    """How the event of an instance that is being killed ends."""

    status: Status | None
    error_type: str | None = None
    error_message: str | None = None
    exit_reason: str = ""
    mem_usage_bytes: int | None = None  # as measured when the engine decided (a memory limit)


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
        self.streams: dict[int, LineSplitter] = {}  # the pipes fds 1/2 point at now
        # Pipes left to the processes an event left behind (after its end): fd -> (splitter, that event).
        self.retired: dict[int, tuple[LineSplitter, EventState | None]] = {}
        self.side: Any = None  # a socket.socket: the worker sends new pipes' read ends over it
        self.open_fds: set[int] = set()
        self.event: EventState | None = None
        self.last_event: EventState | None = None
        self.dones: deque[tuple[Any, ...]] = deque()  # "done" messages not yet matched with their END markers
        self.outcome: Outcome | None = None  # set when the engine kills it (or finds it dead)
        self.exited = False
        self.exitcode: int | None = None  # how it ended, once known (see exit_code)
        self.cause_until = 0.0  # time.monotonic() until which its event's end waits for that (see InstanceIO)
        self.idle_since = 0.0
        # Events sent ahead (dispatch.py): the records of the function's, the newest one sent to this instance,
        # the sizes of those it has not read yet, how many it had read at its last "done", whether it is banned
        self.records = ""
        self.sent_upto = 0
        self.unread: deque[int] = deque()
        self.unread_bytes = 0
        self.acked = 0
        self.banned = False
        self.offer: int | None = None  # idle: the record of the event offered to it (to claim now), if any
        self.offer_at = 0  # ... and how many runs it had been sent by then
        # lines that may be of an event it claimed idle (unsure)
        self.unbound: list[tuple[LineSplitter, list[str]]] = []
        self.settling = False  # the engine is catching up with what it claimed, before a kill
        self.deadline = 0.0  # time.monotonic() by which its event must end
        self.deadline_armed = False  # a "deadline" timer is pending for it
        self.started_at = 0.0
        self.cgroup: Cgroup | None = None  # a limited instance's memory cgroup, where the machine allows one

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


def new_mark() -> str:
    """This engine's mark: its pid and a random token, so no other engine's (nor a process that got the same
    pid later, or after a reboot) can ever be taken for it."""
    return f"{os.getpid()}:{secrets.token_hex(8)}"


def leftovers(groups: dict[int, int], marks: set[str]) -> list[int]:
    """The processes a dead engine left running, found by what proves they are its own:

    - its mark in their environment (``SCF_NB_ENGINE_PID=<pid>:<token>``, see ``new_mark``): an instance
      starts with it and everything under it inherits it, whatever its process group or session (a child that
      called ``setsid``, a daemon that double-forked);
    - for a store written before marks had a token: a recorded process group (``groups``: group -> the dead
      engine's pid) and that engine's old mark, or no mark at all and a loky command line (an instance).

    A process with any other engine's mark is never one. After a reboot the recorded groups and pids may
    belong to anything; the tokens do not."""
    if not groups and not marks:
        return []
    wanted = {m.encode() for m in marks}
    legacy = {group: str(pid).encode() for group, pid in groups.items()}
    me = os.getpid()
    found = []
    for pid, fields in proc_stats():
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                mark = _mark_of(f.read())
        except OSError:  # gone, or not ours to read (then not ours to kill either)
            continue
        if mark is not None and mark in wanted:
            found.append(pid)
        elif len(fields) > 2 and int(fields[2]) in legacy and (
                mark == legacy[int(fields[2])] or (mark is None and _is_loky(pid))):
            found.append(pid)
    return found


_MARK = f"{INSTANCE_MARK}=".encode()


def _mark_of(environ: bytes) -> bytes | None:
    """The value of the first ``SCF_NB_ENGINE_PID`` in a /proc/PID/environ (NUL-separated), if any."""
    if environ.startswith(_MARK):
        start = len(_MARK)
    else:
        i = environ.find(b"\0" + _MARK)
        if i < 0:
            return None
        start = i + 1 + len(_MARK)
    end = environ.find(b"\0", start)
    return environ[start:] if end < 0 else environ[start:end]


def _is_loky(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"loky" in f.read()
    except OSError:
        return False


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
        self.mark = new_mark()  # in every instance's environment from its start (see leftovers)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._run, name="scf_nb-spawner", daemon=True)
        self._thread.start()

    def spawn(self, inst: Instance, address: str) -> None:
        self._jobs.put(("spawn", inst, address))

    def started(self, inst: Instance) -> None:
        """``inst`` said hello: its process has opened its executor's semaphores (see _unname_semaphores)."""
        self._jobs.put(("started", inst, None))

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
                elif kind == "started":
                    _unname_semaphores(inst.executor)
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
        # The mark goes into the environment the process is started with (loky's env), not only os.environ:
        # /proc/PID/environ of the instance and of whatever it forks without an exec shows it too.
        executor = loky.ProcessPoolExecutor(max_workers=1, initializer=worker.init_instance,
                                            initargs=(os.getpid(), self.mark), env={INSTANCE_MARK: self.mark})
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


def _unname_semaphores(executor: Any) -> None:
    """Remove the names of an instance executor's semaphores, now that both processes have them open.

    loky names each one (``/dev/shm/sem.loky-*``) so that the worker can open it, and registers it with its
    resource tracker, which removes the names of a process that died without doing so and warns, in the
    user's terminal: "There appear to be 21 leaked semlock objects to clean up at shutdown" after a killed
    kernel (7 per instance). The names are needed only to open them (a single-worker executor starts one
    process); once removed there is nothing to leak, so nothing stays registered and no finalizer removes
    them again. Best effort: on any surprise (another loky) loky's own clean-up stays as it was."""
    try:
        import weakref
        from multiprocessing import util

        from loky.backend import resource_tracker
        from loky.backend.synchronize import SemLock, sem_unlink

        found: dict[str, Any] = {}
        for holder in (executor, executor._call_queue, executor._result_queue, *executor._processes.values()):
            for value in vars(holder).values():  # the locks, and the worker's arguments (its exit lock)
                items = value.values() if isinstance(value, dict) else value if isinstance(value, tuple) else (value,)
                found.update((item._semlock.name, item) for item in items if isinstance(item, SemLock))
        for name, lock in found.items():
            for ref in weakref.getweakrefs(lock):  # loky's finalizer would remove the name again
                # (Finalize's _callback is private: not in its type stubs)
                if isinstance(ref.__callback__, util.Finalize) and getattr(
                        ref.__callback__, "_callback", None) is SemLock._cleanup:
                    ref.__callback__.cancel()
            try:
                sem_unlink(name)
            except FileNotFoundError:
                pass
            resource_tracker.unregister(name, "semlock")
    except Exception:
        pass


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
