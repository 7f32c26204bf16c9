"""Starting instance processes: one single-worker loky executor each, from one long-lived thread.

Why one executor per instance: killing one worker of a shared loky pool fails every future of that pool
and replaces all its workers, so an instance that may be terminated must be alone in its executor. loky only
starts the process (and reaps it); the engine talks to it over its own socket, which is far cheaper than a
loky ``submit`` per event.
"""

from __future__ import annotations

import os
import queue
import re
import threading
from collections.abc import Callable
from typing import Any

from ...core.status import Status
from ..backend import Outcome
from .instance import LokyInstance
from .processes import new_mark
from .worker import INSTANCE_MARK


class Spawner:
    """A long-lived thread that starts (and shuts down) loky executors.

    Starting from one long-lived thread matters: PR_SET_PDEATHSIG fires when the *thread* that forked a
    process exits, so instances must not be forked by whichever short-lived thread called ``invoke``.
    """

    def __init__(self, on_exit: Callable[[LokyInstance], None]) -> None:
        self.mark = new_mark()  # in every instance's environment from its start (see leftovers)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_exit = on_exit
        self._thread = threading.Thread(target=self._run, name="scf_nb-spawner", daemon=True)
        self._thread.start()

    def spawn(self, inst: LokyInstance, address: str) -> None:
        self._jobs.put(("spawn", inst, address))

    def started(self, inst: LokyInstance) -> None:
        """``inst`` said hello: its process has opened its executor's semaphores (see _unname_semaphores)."""
        self._jobs.put(("started", inst, None))

    def dispose(self, inst: LokyInstance) -> None:
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

    def _spawn(self, loky: Any, worker: Any, inst: LokyInstance, address: str) -> None:
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

    def _exited(self, inst: LokyInstance, future: Any) -> None:
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
