"""The engine thread's loop: one epoll wait, an inbox of calls from other threads, timers, turn hooks.

Every part of the engine (and the instance backend) runs on this thread and schedules work with bound
callables: ``post(fn, *args)`` or ``send(fn, arg)`` from any thread, ``call_later(delay, fn, arg)`` and
``watch(fd, handler, obj)`` on this one. A turn: the inbox, the timers that are due, the ``TurnEnd`` parts that
asked for the end of this turn (in the order they were added; each says how soon it wants the next turn), then
the wait (polled for ``SPIN_S`` before it sleeps).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger("scf_nb")


class TurnEnd(Protocol):
    """A part with work for the end of a turn: it sets ``turn_due`` when it has some (a flag costs the loop
    nothing on the turns it is not set); ``turn_end`` does it and returns the longest wait it allows."""

    turn_due: bool

    def turn_end(self) -> float: ...


# After a turn that did something, the loop polls for this long before it sleeps: a worker's "done" and the
# caller's next invoke usually come within it, and a thread that never slept needs no wake-up (on the shared
# 2-core VMs here a wake-up costs 10-40 us, of a ~300 us no-op round trip). Bounded: an idle engine sleeps.
SPIN_S = 200e-6


class Poller:
    """What the engine thread waits on: ``select.epoll`` with each fd's (handler, object) kept beside it (a
    ``selectors`` selector does the same with a SelectorKey per ready fd, measurably slower per event)."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self.data: dict[int, tuple[Any, Any]] = {}

    def register(self, fd: Any, data: tuple[Any, Any]) -> None:
        fd = fd if isinstance(fd, int) else fd.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self.data[fd] = data

    def unregister(self, fd: int) -> None:
        del self.data[fd]
        self._epoll.unregister(fd)

    def select(self, timeout: float) -> list[tuple[int, tuple[Any, Any]]]:
        """The ready fds with their (handler, object); a handler may unregister a later one: check
        ``data[fd] is`` that pair before calling it."""
        data = self.data
        return [(fd, data[fd]) for fd, _ in self._epoll.poll(timeout) if fd in data]

    def close(self) -> None:
        self._epoll.close()


class Loop:
    """The engine's one thread and what it waits on."""

    def __init__(self) -> None:
        self.inbox: deque[tuple[Callable[[Any], Any], Any]] = deque()  # (fn, arg): fn(arg), in order
        self.timers: list[tuple[float, int, Callable[[Any], Any], Any]] = []  # a heap: (due, seq, fn, arg)
        self._timer_seq = itertools.count()
        self.poller = Poller()
        self.turn_ends: list[TurnEnd] = []  # asked for at the end of a turn, before the wait
        self.done: Callable[[], bool] | None = None  # once set, the loop ends on the first turn it says True
        self.sleeping = False
        self.errors = 0
        self.thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.poller.register(self._wake_r, (self._on_wake, None))
        self._wake = _waker(self._wake_w)
        self._wake_lock = threading.Lock()  # a wake against close: never a write to a closed (reused) fd
        self._closed = False

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop's thread, soon (any thread), in order with ``send``."""
        self.send(_apply, (fn, args))

    def send(self, fn: Callable[[Any], Any], arg: Any) -> None:
        """Run ``fn(arg)`` on the loop's thread, soon (any thread): ``post`` of one argument with one tuple in
        the inbox instead of three objects. For the invoke path, with ``fn`` bound once: each object the
        garbage collector tracks brings its next pass nearer, and a pass (~100 us with the GIL held) is what a
        burst's slowest invokes wait for (bench/README.md, 2026-12-03)."""
        self.inbox.append((fn, arg))
        if self.sleeping:
            with self._wake_lock:
                if not self._closed:
                    self._wake()

    def call_later(self, delay: float, fn: Callable[[Any], Any], arg: Any = None) -> None:
        """Run ``fn(arg)`` on the loop's thread ``delay`` seconds from now (the loop's thread only)."""
        heapq.heappush(self.timers, (time.monotonic() + delay, next(self._timer_seq), fn, arg))

    def watch(self, fd: int, handler: Callable[[int, Any], Any], obj: Any) -> None:
        """Call ``handler(fd, obj)`` whenever ``fd`` is readable (the loop's thread only)."""
        self.poller.register(fd, (handler, obj))

    def unwatch(self, fd: int) -> None:
        self.poller.unregister(fd)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="scf_nb-engine", daemon=True)
        self.thread.start()

    def join(self, timeout: float) -> None:
        if self.thread is not None:
            self.thread.join(timeout=timeout)

    def close(self) -> None:
        with self._wake_lock:  # a later post only queues: no write to a closed (maybe reused) descriptor
            self._closed = True
            self.poller.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)

    def _run(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except Exception:
                self.errors += 1
                log.exception("scf_nb engine loop error")

    def _step(self) -> bool:
        inbox = self.inbox
        while inbox:
            fn, arg = inbox.popleft()
            fn(arg)
        timeout = self._run_timers()
        for part in self.turn_ends:
            if part.turn_due:
                wait = part.turn_end()
                if wait < timeout:
                    timeout = wait
        if self.done is not None and self.done():
            return True
        if timeout > 0.0 and SPIN_S > 0.0:
            ready = self._spin(timeout)
        else:
            ready = self._sleep(timeout)
        self.sleeping = False
        current = self.poller.data
        for fd, item in ready:
            if current.get(fd) is item:  # not unregistered (or its number reused) by an earlier handler
                item[0](fd, item[1])
        return False

    def _sleep(self, timeout: float) -> list[tuple[int, tuple[Any, Any]]]:
        self.sleeping = True
        if self.inbox:
            return []
        return self.poller.select(timeout)

    def _spin(self, timeout: float) -> list[tuple[int, tuple[Any, Any]]]:
        """Wait for up to ``SPIN_S`` without sleeping (polling, the GIL let go at each poll), then sleep."""
        now = time.monotonic()
        end = now + min(SPIN_S, timeout)
        inbox, select_ = self.inbox, self.poller.select
        while True:
            ready = select_(0.0)
            if ready or inbox:
                return ready
            if time.monotonic() >= end:
                break
        return self._sleep(max(0.0, timeout - (time.monotonic() - now)))

    def _run_timers(self) -> float:
        timers = self.timers
        now = time.monotonic()
        while timers and timers[0][0] <= now:
            _, _, fn, arg = heapq.heappop(timers)
            fn(arg)
        return max(0.0, timers[0][0] - now) if timers else 1.0

    def _on_wake(self, fd: int, _: Any) -> None:
        try:
            while os.read(fd, 4096):
                pass
        except BlockingIOError:
            pass


def _apply(call: tuple[Callable[..., Any], tuple[Any, ...]]) -> None:
    fn, args = call
    fn(*args)


def _waker(fd: int) -> Callable[[], Any]:
    """A one-byte write to ``fd`` that keeps the GIL. ``os.write`` releases it, and the engine thread it just
    woke takes it and dispatches before ``invoke`` can return. A ``partial`` of the C function, its length a
    ready ``c_size_t``, and no ``argtypes`` to convert through: a post to a sleeping loop 12-15 us on a cold
    call against 20-23 us with ``argtypes`` (bench/README.md, 2026-12-03)."""
    try:
        import ctypes

        write = ctypes.PyDLL(None).write  # PyDLL: the call holds the GIL
        write.restype = ctypes.c_ssize_t
        return functools.partial(write, fd, b"\0", ctypes.c_size_t(1))  # (an int fd is passed as a C int)
    except (OSError, AttributeError):
        def fallback() -> None:
            try:
                os.write(fd, b"\0")
            except OSError:
                pass
        return fallback
