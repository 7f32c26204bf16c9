"""What runs inside an instance process (a single-worker loky executor's worker).

The engine submits :func:`serve` once per instance; it never returns while the instance lives::

    engine process                                   instance process (loky worker, own process group)
    --------------                                   ----------------------------------------------
    Unix socket  <---- connect, send_fds(r1, r2) ----  fd 1 := pipe w1, fd 2 := pipe w2
                                                       (a spare waits here, warm, for any function)
    same socket  ----- ("load", code, env, ...) ---->  set the function's environment
    (wire.py)    ----- ("run", request_id, ..., record) -> offered: claim it (ahead.py), if nobody has
                                                       [cold: exec the function's code once]
                                                       handler(event, context)
    pipes r1/r2  <---- every byte the event writes --  print, logging, C code, child processes
    pipes r1/r2  <---- END marker on each stream ----  (after flushing Python's stdio)
    side socket  <---- send_fds(r3, r4) --------------  instead, if the event left a process behind:
                                                       fd 1 := pipe w3, fd 2 := pipe w4 (r1/r2 are its)
    same socket  <---- ("done", status, ...) ---------  the result (JSON text, and a pickle where JSON
                                                       would lose it), durations of the event and cold start
    same socket  ----- ("run", ..., record) -------->  sent ahead while busy: started right after the
                                                       current event, if claimed first
    same socket  <---- ("read", runs read) ----------  idle, offered runs that others took first

The read ends of the pipes live in the engine: what an event wrote before its process was killed is still in
the pipe and is read to EOF, so no line is lost or given to another event. An event that leaves a process
behind (a daemon) keeps the pipes it ran with: the worker moves fds 1/2 to new pipes for the events after it,
so whatever the leftover writes later is still known to be that event's. This module imports nothing heavy:
it is imported at every cold start.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import inspect
import json
import linecache
import os
import resource
import signal
import socket
import struct
import sys
import termios
import time
import traceback
import types
from collections import deque
from collections.abc import Iterator
from typing import Any

from ...core.logchannel import END_MARKER
from . import wire
from .ahead import Claims
from .worker_pipes import OWN_ENDS as _OWN_ENDS
from .worker_pipes import left_behind, move_stdio, new_pipe

INSTANCE_MARK = "SCF_NB_ENGINE_PID"
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_IOLBF = 1


class Terminated(BaseException):
    """Raised in the handler by SIGTERM (``terminate(grace=True)``): unwinds it, running its ``finally``."""


class Context(dict[str, Any]):
    """The handler's second argument: a dict (as in SCF's Python runtime) that also has attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self["_deadline"] - time.monotonic()) * 1000))


def init_instance(engine_pid: int, mark: str) -> None:
    """loky initializer: an own process group (a kill reaches the event's children; Ctrl-C does not reach
    us) and death with the engine even inside a GIL-holding C call."""
    os.setpgid(0, 0)
    # The engine's mark (its pid and a random token), which children of events inherit: a later engine kills
    # a dead one's leftovers by it, and nothing else. loky's env already put it in our starting environment.
    os.environ[INSTANCE_MARK] = mark
    try:
        libc = _libc()
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        # Orphans of the event (a daemon that double-forked) become our children, not init's, so the
        # engine still finds them among our descendants when it kills us.
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 1)
    except (OSError, AttributeError):
        pass
    if os.getppid() != engine_pid:  # the engine died before prctl: no signal will ever come
        os._exit(1)


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    return _LIBC


def serve(address: str, token: str) -> None:
    """The instance's serve loop: connect back, hand over the capture pipes, then run events one by one."""
    read_ends = _capture_stdio()  # first: the engine waits for the hello from the moment we connect
    # New pipes go to the engine over a socket of their own, so the main socket stays plain bytes (recv).
    side, engine_side = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(address)
    except OSError:  # the engine is gone: do not linger as an idle loky worker
        os._exit(1)
    try:
        socket.send_fds(sock, [f"{token} {os.getpid()}".encode()], [*read_ends, engine_side.fileno()])
    except BaseException:
        sock.close()  # the engine is waiting for our hello: let it see EOF at once
        raise
    for fd in read_ends:
        os.close(fd)
    engine_side.close()
    # Idle, a receive gives up after _REAP_EVERY_S, to collect adopted orphans now and then. Nothing is adopted
    # yet: the first scan is due a period from now, not between the first event's end and its "done" (a scan
    # of /proc there was 3-5 ms of every cold start's round trip, bench/README.md 2026-12-04).
    _last_reap[0] = time.monotonic()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", int(_REAP_EVERY_S), 0))
    runner = _Runner(sock, side)
    signal.signal(signal.SIGTERM, runner.on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    poll_until = 0.0  # just ran an event: look at the socket for a moment before blocking in recv
    while True:
        while runner.inbox:
            msg = runner.inbox.popleft()
            if msg[0] == "run":  # offered (to every busy instance, and to one idle one): a candidate to claim
                runner.candidates.append(msg)
                runner.received += 1
                runner.fresh = True
            elif msg[0] == "poke":  # offered a run we hold already (we could not claim it when it came)
                runner.fresh = True  # (with nothing held, it answers "read")
            elif msg[0] == "load":
                runner.spec = msg[1]
                os.environ.update(runner.spec["env"])
            elif msg[0] == "stop":
                return
        if runner.fresh:  # (banned, we keep what we hold undecided, and look again when more comes)
            runner.fresh = False
            runner.start_claimed()  # then whatever we claim at each end; what came meanwhile is in the inbox
            poll_until = time.monotonic() + SPIN_S
            continue
        if poll_until:
            _poll(sock, poll_until)
            poll_until = 0.0
        try:
            data = sock.recv(_RECV_BYTES)
        except BlockingIOError:  # SO_RCVTIMEO: nothing came for a while
            _reap_orphans()
            continue
        except OSError:
            return
        if not data:  # the engine is gone
            return
        runner.inbox.extend(runner.reader.feed(data))


_RECV_BYTES = 1 << 16
_FIONREAD = termios.FIONREAD
# After an event (or an answer to an offer) the worker polls its socket for this long before it blocks in
# recv: the caller's next invoke usually comes within it (a no-op round trip is ~200-300 us), and a process
# that is not asleep needs no wake-up, on either side (the engine's send to a sleeping worker cost ~20-60 us
# on the 2-core VMs here). Bounded, and it yields the core at each look: an idle instance sleeps.
SPIN_S = 300e-6


def _poll(sock: socket.socket, until: float) -> None:
    """Look at ``sock`` until something came or ``until`` (monotonic) passed, yielding the core between looks."""
    fd = sock.fileno()
    while not _unread(fd) and time.monotonic() < until:
        os.sched_yield()


def _unread(fd: int) -> int:
    """Bytes written to the pipe that the engine has not read yet."""
    buf = array.array("i", [0])
    try:
        fcntl.ioctl(fd, _FIONREAD, buf, True)
    except OSError:
        return 1
    return buf[0]


def _capture_stdio() -> list[int]:
    """Point fds 1 and 2 at fresh pipes (big, so a burst rarely blocks) and return their read ends."""
    read_ends = []
    for target, stream in ((1, "stdout"), (2, "stderr")):
        r, w = new_pipe()
        py = getattr(sys, stream)
        if py is not None:
            py.flush()
        os.dup2(w, target)
        _OWN_ENDS.append(w)  # our own copy (not inherited): markers still reach the pipe if fd 1 is moved
        read_ends.append(r)
        if py is None or not hasattr(py, "reconfigure"):
            setattr(sys, stream, open(target, "w", closefd=False))
        # Line buffering makes prints live even where PYTHONUNBUFFERED is not set.
        getattr(sys, stream).reconfigure(line_buffering=True)
    try:  # C code's stdout is line-buffered too (not fully buffered, as it is on a pipe by default)
        libc = _libc()
        libc.setvbuf(ctypes.c_void_p.in_dll(libc, "stdout"), None, _IOLBF, 0)
    except (OSError, AttributeError, ValueError):
        pass
    return read_ends


class _Runner:
    def __init__(self, sock: socket.socket, side: socket.socket) -> None:
        self.spec: dict[str, Any] = {}
        self.sock = sock
        self.side = side  # new capture pipes go to the engine over it (an event left a process behind)
        self.reader = wire.Reader()
        self.inbox: deque[tuple[Any, ...]] = deque()  # received, not handled yet
        self.candidates: list[tuple[Any, ...]] = []  # runs offered, in order: one may be claimed
        self.fresh = False  # runs came since we last tried to claim one while idle
        self.received = 0  # runs sent ahead that we have read: the engine counts what is still in our socket
        self.claims: Claims | None = None
        self.failed = False  # an event did not return: this instance is being replaced, start nothing more
        self.handler: Any = None
        self.module_name: str | None = None  # the module the function's code runs as
        self.running = False

    def on_sigterm(self, signum: int, frame: Any) -> None:
        if self.running:
            self.running = False
            raise Terminated()

    def start_claimed(self) -> None:
        """Idle, with runs offered: claim the oldest that nobody started and run it, then whatever we claim at
        each end; or say that we read them and claimed none. The claim itself tells the engine (it reads the
        records), so nothing is sent before the event runs: its "done" names it too."""
        nxt, claimed_at = self._claim_candidates()
        if nxt is None:
            self.sock.sendall(wire.frame(("read", self.received)))
            return
        self.run(nxt[1], nxt[2], nxt[3], nxt[4], own=(nxt[5], claimed_at))

    def run(self, request_id: str, event_json: str, qualifier: str, version: str,
            own: tuple[int, float] | None = None) -> None:
        """Run one claimed event, then, as long as we claim one, the oldest offered event nobody started."""
        while True:
            nxt = self._run_one(request_id, event_json, qualifier, version, own)
            if nxt is None:
                return
            _, request_id, event_json, qualifier, version, _seq = nxt
            own = None  # the "done" before it named it

    def _run_one(self, request_id: str, event_json: str, qualifier: str, version: str,
                 own: tuple[int, float] | None) -> tuple[Any, ...] | None:
        _reset_peak_memory(bool(self.spec.get("memory")))
        timeout = self.spec["timeout"]
        ctx = Context(self.spec["context"], request_id=request_id, qualifier=qualifier, function_version=version,
                      _deadline=time.monotonic() + timeout, time_limit_in_ms=int(timeout * 1000))
        started = time.perf_counter()
        init_ms: float | None = None
        pickled: bytes | None = None
        self.running = True
        try:
            if self.handler is None:
                try:
                    self.handler = self._load()
                finally:  # the cold start is reported apart (Lambda's "Init Duration"), not in the duration
                    now = time.perf_counter()
                    init_ms, started = (now - started) * 1000.0, now
            result = self.handler(json.loads(event_json), ctx)
            if inspect.iscoroutine(result):
                import asyncio

                result = asyncio.run(result)
            self.running = False
            text, pickled = ("null", None) if result is None else self._dump_result(result)
            outcome: tuple[str, Any] = ("FINISHED", text)
        except Terminated:
            outcome = ("ABORTED", None)
        except BaseException as e:  # the handler's failure, whatever it is, is the event's
            self.running = False
            outcome = ("FAILED", _describe(e))
        self.running = False
        self.failed = outcome[0] != "FINISHED"
        duration_ms = (time.perf_counter() - started) * 1000.0
        _flush_all()
        # A process the event left behind keeps writing to fds 1/2: those pipes stay the event's, and the
        # engine reads all that is in them when it gets our "done" (so no END markers are needed either).
        rotated = left_behind() and move_stdio(self.side)
        # If the engine has already read every byte on both pipes, it has also stored them (it reads and
        # stores in one step, before it looks at our "done"): no END markers needed, two wake-ups saved.
        drained = rotated or all(_unread(fd) == 0 for fd in _OWN_ENDS)
        if not drained:
            for fd in _OWN_ENDS:
                os.write(fd, END_MARKER + b"\n")
        limited = self.spec.get("memory")
        long = duration_ms + (init_ms or 0.0) >= _PEAK_AFTER_MS
        memory = _peak_memory() if long or limited else _resident_memory()
        outcome = self._within_memory(outcome, memory)  # before the claim: an instance over it claims nothing
        ended_at = time.time()  # before the claim: the next event's start is later
        if time.monotonic() - _last_reap[0] > _REAP_EVERY_S:
            _reap_orphans()  # (a scan of /proc: not between a claim and the start of what it claimed)
        nxt, claimed_at = self._claim()
        self.sock.sendall(wire.frame(("done", outcome[0], outcome[1], duration_ms, memory, drained,
                                      None if nxt is None else nxt[5], claimed_at, self.received, ended_at,
                                      init_ms, pickled, own, rotated)))
        return nxt

    def _claim(self) -> tuple[tuple[Any, ...] | None, float]:
        """At the end of an event: read what the engine sent meanwhile, and claim the first run sent ahead
        that is still PENDING (the oldest waiting event of this function), unless we are being replaced."""
        msgs, self.inbox = list(self.inbox), deque()  # runs sent ahead that came with the one just run come first
        try:
            while _unread(self.sock.fileno()):  # an ioctl: cheaper than a recv that raises when nothing came
                data = self.sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
                if not data:
                    break
                msgs += self.reader.feed(data)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the engine is gone: the serve loop sees it next
            pass
        for msg in msgs:
            if msg[0] == "run":
                self.candidates.append(msg)
                self.received += 1
            else:
                self.inbox.append(msg)
        return self._claim_candidates()

    def _claim_candidates(self) -> tuple[tuple[Any, ...] | None, float]:
        """Claim the first offered run that is still PENDING (the oldest waiting event of this function),
        unless we are being replaced; drop those that are decided."""
        if not self.candidates or self.failed:
            self.candidates.clear()
            return None, 0.0
        if self.claims is None:
            self.claims = Claims(self.spec["records"], self.spec["number"])
        cands = self.candidates
        i, decided = self.claims.claim_first([m[5] for m in cands])
        nxt = cands[i] if i is not None else None
        del cands[:decided + (i is not None)]  # what others took, what we take; the rest is checked next time
        return nxt, self.claims.claimed_at

    def _within_memory(self, outcome: tuple[str, Any], memory: int) -> tuple[str, Any]:
        """An event that went over its function's ``memory_mb`` fails, whatever the handler did, and this
        instance (it is replaced) starts nothing more, not even an event sent ahead, which would otherwise
        die with it. Over: the kernel's OOM killer killed in its cgroup, or (without one) its peak."""
        spec = self.spec.get("memory")
        if not spec or outcome[0] == "ABORTED":
            return outcome
        if spec["oom_file"]:
            from .cgroups import oom_kills  # (imported here: a function without memory_mb never needs it)

            over = oom_kills(spec["oom_file"]) > 0
        else:
            over = memory > spec["limit"]
        if not over:
            return outcome
        self.failed = True
        message = f"memory limit exceeded: {memory / 2**20:.0f} MB at peak, memory_mb={spec['limit'] >> 20}"
        tb = outcome[1]["traceback"] if outcome[0] == "FAILED" else ""  # what the handler raised, if it did
        return ("FAILED", {"type": "MemoryLimitExceeded", "message": message, "traceback": tb})

    def _load(self) -> Any:
        """Cold start: run the function's module top level once; its state stays for warm events."""
        _enter_cgroup(self.spec.get("memory"))
        name, code = self.spec["name"], self.spec["code"]
        filename = f"<scf_function {name}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        module = types.ModuleType(f"scf_function_{name.replace('-', '_')}")
        self.module_name = module.__name__
        module.__file__ = filename
        sys.modules[module.__name__] = module
        exec(compile(code, filename, "exec"), module.__dict__)
        handler = getattr(module, self.spec["handler"], None)
        if not callable(handler):
            raise TypeError(f"handler {self.spec['handler']!r} of {name} is not a function")
        return handler

    def _dump_result(self, result: Any) -> tuple[str, bytes | None]:
        """The return value's JSON text, and its pickle when JSON would not give it back (results.py). Nothing
        of it is dropped; what a form could not keep is said in the event's log."""
        from ...core import results  # (imported at the first result that is not None: ~5 ms of a cold start)

        text, pickled, notes = results.encode(result, self.module_name)
        for note in notes:
            print(note, file=sys.stderr)
        return text, pickled


_REAP_EVERY_S = 1.0
_last_reap = [0.0]


def proc_stats() -> Iterator[tuple[int, list[bytes]]]:
    """Every process's pid and the fields of its /proc/PID/stat after the command name (state, ppid, pgrp,
    ...); processes that exit meanwhile are skipped."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    yield int(entry.name), f.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue


def _reap_orphans() -> None:
    """Collect exited processes that were adopted as orphans (we are their subreaper), so they do not pile
    up as zombies in a long-lived instance; children the handler still holds a Popen for are left alone."""
    _last_reap[0] = time.monotonic()
    me = os.getpid()
    zombies = [pid for pid, fields in proc_stats() if fields[0] == b"Z" and int(fields[1]) == me]
    if not zombies:
        return
    import gc
    import multiprocessing
    import subprocess

    held: set[int | None] = {o.pid for o in gc.get_objects() if isinstance(o, subprocess.Popen)}
    held |= {p.pid for p in multiprocessing.active_children()}
    for pid in zombies:
        if pid not in held:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def _describe(e: BaseException) -> dict[str, str]:
    """Type, message and traceback of the handler's exception, even one whose ``str()`` raises."""
    try:
        message = str(e)
    except Exception as inner:
        message = f"<str() of the exception failed: {type(inner).__name__}: {inner}>"
    try:
        tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None))
    except Exception:
        tb = "".join(traceback.format_tb(e.__traceback__)) + f"{type(e).__name__}: {message}\n"
    return {"type": type(e).__name__, "message": _utf8(message), "traceback": _utf8(tb)}


def _utf8(text: str) -> str:
    """``text`` as UTF-8 can hold it (the store refuses lone surrogates, as in a path decoded with
    surrogateescape): each such character as its backslash escape."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _flush_all() -> None:
    """Everything written so far reaches the pipes before the END markers: Python's and C's stdio."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    try:
        _libc().fflush(None)
    except (OSError, AttributeError):
        pass


_PROC_FDS: dict[str, int] = {}


def _proc_fd(name: str, flags: int) -> int:
    fd = _PROC_FDS.get(name)
    if fd is None:
        fd = _PROC_FDS[name] = os.open(f"/proc/self/{name}", flags)
    return fd


def _enter_cgroup(spec: dict[str, Any] | None) -> None:
    """Move into the memory cgroup the engine made for this instance, before the function's code runs (what
    it starts is born inside). If that is refused, the limit is checked at each event's end only."""
    if spec is None or not spec["cgroup"]:
        return
    try:
        fd = os.open(spec["cgroup"], os.O_WRONLY)
        try:
            os.write(fd, str(os.getpid()).encode())
        finally:
            os.close(fd)
    except OSError as e:
        spec["oom_file"] = None
        print(f"scf_nb: could not enter the instance's memory cgroup ({e}); memory_mb is checked against "
              f"each event's peak instead", file=sys.stderr)


_children_peak = [0]  # the largest child's peak (KiB) when the event started
_NOT_COUNTED = -1  # ... or children are not counted for this event


def _reset_peak_memory(children: bool) -> None:
    """Start measuring an event's peak; ``children`` (a function with ``memory_mb``): theirs too (a syscall
    the others need not pay, since their ``mem_usage_bytes`` is the instance process's own)."""
    try:
        os.write(_proc_fd("clear_refs", os.O_WRONLY), b"5")
    except OSError:
        pass
    _children_peak[0] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if children else _NOT_COUNTED


# Reading the peak (VmHWM) makes the kernel write all of /proc/self/status: ~7 us, more than a short event's
# whole round trip. For events shorter than this the resident memory at the end (statm, ~1 us) is reported.
_PEAK_AFTER_MS = 1.0


def _resident_memory() -> int:
    try:
        return int(os.pread(_proc_fd("statm", os.O_RDONLY), 128, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return _peak_memory()


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _peak_memory() -> int:
    """Peak resident memory of this process since the event started, in bytes; with a child process that
    ended in this event (and was waited for), at least what this process holds now plus that child's peak."""
    try:
        data = os.pread(_proc_fd("status", os.O_RDONLY), 16384, 0)
        peak = _status_kb(data, b"VmHWM:") * 1024
    except (OSError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if _children_peak[0] == _NOT_COUNTED:
        return peak
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if child > _children_peak[0]:  # the biggest child so far was this event's
        peak = max(peak, (_status_kb(data, b"VmRSS:") + child) * 1024)
    return peak


def _status_kb(data: bytes, name: bytes) -> int:
    i = data.index(name)
    return int(data[i + len(name):data.index(b"kB", i)])
