"""An instance's watchdog: a small process beside its Ray actor, on the actor's node, started by the actor as it
starts (``actor.py``) and orphaned at once (its own session; neither Ray nor a kill of the actor's group stops
it). It is the instance's only link to the engine::

    engine  <== TCP, authenticated (link.py) ==>  watchdog  <== socketpair ==>  actor (the event runs here)
                                                     ^
                                                     `---- read ends of the actor's fd 1/2 pipes

- Lines: it reads the pipes and sends every line tagged with the run (event) it belongs to. An event's "done"
  goes to the engine only after its last line: at once if the actor found the pipes empty when it ended,
  else once the END marker the actor wrote after its output came through on both pipes. An event that left
  a process behind hands over its pipes (``loky/worker_pipes.py``): what that process writes later stays the
  event's.
- Kills: ("kill", signal) from the engine reaches the actor, its process group, its descendants and every
  process carrying the instance's token in its environment (a child that called ``setsid``). This process
  holds no GIL the handler could be holding, so a kill always lands, even in a C call.
- The actor dies (its pidfd): it says whether the node's raylet is still alive (a lost node is named as
  such), kills what the actor left, reads the pipes to their end (at most ``DRAIN_S``) and exits.
- The engine goes (EOF): it kills the actor's whole tree and exits, so nothing outlives its engine.

Run as ``python -m scf_nb.instances.ray.watchdog`` with its settings as JSON on stdin. Standard library and
scf_nb's light modules only.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ...core.logchannel import LineSplitter
from ..loky import wire
from ..loky.processes import descendants, environments, rss
from . import link
from .actor import INSTANCE_TOKEN

DRAIN_S = 2.0  # after the actor died, its pipes may stay open this long (a process stuck in the kernel)
MEM_EVERY_S = 0.05  # a limited function's instance: its memory goes to the engine this often while busy


class Watchdog:
    def __init__(self, cfg: dict[str, Any], engine: socket.socket) -> None:
        out, err, ctl, side = cfg["fds"]
        self.pid: int = cfg["pid"]
        self.pgid: int = cfg["pgid"]
        self.raylet: int = cfg["raylet_pid"]
        self.needle = f"{INSTANCE_TOKEN}={cfg['token']}".encode()
        self.engine = engine
        self.ctl = socket.socket(fileno=ctl)
        self.side = socket.socket(fileno=side)
        self.sel = selectors.DefaultSelector()
        self.streams: dict[int, LineSplitter] = {}  # the pipes fds 1/2 of the actor point at now
        self.retired: dict[int, tuple[LineSplitter, int | None]] = {}  # pipes left to an event's leftovers
        self.run: int | None = None  # the run (event) the current pipes' lines belong to
        self.done: tuple[Any, ...] | None = None  # its "done", waiting for the END markers
        self.marked: set[str] = set()  # streams whose END marker came
        self.out: list[bytes] = []  # frames for the engine, sent at the end of each turn
        self.limited = False
        self.busy = False
        self.alive = True
        self.dead_at = 0.0
        self.next_mem = 0.0
        self.ereader = wire.Reader()
        self.creader = wire.Reader()
        for fd, stream in ((out, "stdout"), (err, "stderr")):
            self._add_pipe(fd, stream)
        self.sel.register(engine, selectors.EVENT_READ, self._on_engine)
        self.sel.register(self.ctl, selectors.EVENT_READ, self._on_ctl)
        self.pidfd = os.pidfd_open(self.pid)
        self.sel.register(self.pidfd, selectors.EVENT_READ, self._on_exit)

    def _add_pipe(self, fd: int, stream: str) -> None:
        os.set_blocking(fd, False)
        self.streams[fd] = LineSplitter(stream)
        self.sel.register(fd, selectors.EVENT_READ, self._on_pipe)

    # -- the loop ----------------------------------------------------------------------------------------------
    def serve(self) -> None:
        while True:
            now = time.monotonic()
            timeout = None
            if not self.alive:
                timeout = max(0.0, self.dead_at + DRAIN_S - now)
            elif self.busy and self.limited:
                timeout = max(0.0, self.next_mem - now)
            for key, _mask in self.sel.select(timeout):
                handler: Callable[[int], None] = key.data
                handler(key.fd)
            now = time.monotonic()
            if self.alive and self.busy and self.limited and now >= self.next_mem:
                self.next_mem = now + MEM_EVERY_S
                self.out.append(wire.frame(("mem", rss(self.pid))))
            if not self.alive and (not self.streams and not self.retired or now >= self.dead_at + DRAIN_S):
                self._finish()
                return
            self._flush()

    def _flush(self) -> None:
        if self.out:
            data, self.out = b"".join(self.out), []
            try:
                self.engine.sendall(data)
            except OSError:
                self._engine_gone()

    def _finish(self) -> None:
        """The actor is dead: the last of its lines, then close (the engine reaps the instance at EOF)."""
        self.kill(signal.SIGKILL)
        for fd in list(self.streams):
            self._read(fd, self.streams[fd], self.run, final=True)
        for fd in list(self.retired):
            splitter, owner = self.retired[fd]
            self._read(fd, splitter, owner, final=True)
        self._flush()
        self.engine.close()

    def _engine_gone(self) -> None:
        """The engine died or dropped us: nothing of this instance may outlive it."""
        self.kill(signal.SIGKILL)
        os._exit(0)

    # -- the engine's orders -----------------------------------------------------------------------------------
    def _on_engine(self, fd: int) -> None:
        try:
            data = self.engine.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._engine_gone()
        for msg in self.ereader.feed(data):
            kind = msg[0]
            if kind == "kill":
                self.kill(msg[1])
                continue
            if kind == "run":
                self.run, self.busy = msg[1], True
                self.next_mem = time.monotonic() + MEM_EVERY_S
            elif kind == "load":
                self.limited = bool(msg[1].get("memory"))
            try:
                self.ctl.sendall(wire.frame(msg))
            except OSError:  # the actor is gone: its pidfd says so
                pass

    def kill(self, sig: int) -> None:
        """Signal the actor, its group, its descendants and every process with the instance's token."""
        targets = set(self._tokened())
        if self.alive:
            targets.add(self.pid)
            targets.update(descendants(self.pid))
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        targets.discard(os.getpid())
        for pid in targets:
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _tokened(self) -> list[int]:
        needle = b"\0" + self.needle + b"\0"
        return [pid for pid, _fields, environ in environments() if needle in b"\0" + environ]

    # -- the actor: its pipes, its messages, its end -------------------------------------------------------------
    def _on_pipe(self, fd: int) -> None:
        splitter = self.streams.get(fd)
        if splitter is not None:
            self._read(fd, splitter, self.run)
        elif fd in self.retired:
            splitter, owner = self.retired[fd]
            self._read(fd, splitter, owner)

    def _read(self, fd: int, splitter: LineSplitter, run: int | None, final: bool = False) -> None:
        """Read what is in the pipe (all of it, if ``final``); at EOF close it."""
        while True:
            try:
                data = os.read(fd, 1 << 18)
            except BlockingIOError:
                if final:
                    self._lines(splitter, splitter.close(), run)
                return
            except OSError:
                data = b""
            if not data:
                self._lines(splitter, splitter.close(), run)
                self.sel.unregister(fd)
                os.close(fd)
                self.streams.pop(fd, None)
                self.retired.pop(fd, None)
                return
            self._lines(splitter, splitter.feed(data), run)
            if not final:
                return

    def _lines(self, splitter: LineSplitter, items: list[str | None], run: int | None) -> None:
        batch: list[str] = []
        for item in items:
            if item is not None:
                batch.append(item)
            elif splitter in self.streams.values():  # an END marker: the run's output on this stream is all in
                self._send_lines(run, splitter.stream, batch)
                batch = []
                self.marked.add(splitter.stream)
                if self.done is not None and len(self.marked) == 2:
                    self._send_done()
        self._send_lines(run, splitter.stream, batch)

    def _send_lines(self, run: int | None, stream: str, lines: list[str]) -> None:
        if lines and run is not None:
            self.out.append(wire.frame(("lines", run, stream, lines)))

    def _on_ctl(self, fd: int) -> None:
        try:
            data = self.ctl.recv(1 << 16)
        except OSError:
            data = b""
        if not data:  # the actor is going: its pidfd says when it is gone
            self.sel.unregister(self.ctl)
            return
        for msg in self.creader.feed(data):
            if msg[0] == "done":
                self._on_done(msg)

    def _on_done(self, msg: tuple[Any, ...]) -> None:
        drained, rotated = msg[5], msg[-1]
        if rotated:  # the event left a process behind: its pipes are that process's now, new ones came
            self._rotate()
        self.done = msg
        if drained or rotated:  # every byte it wrote was read before it sent this: no END markers come
            for splitter in list(self.streams.values()):
                if splitter.pending:
                    self._lines(splitter, splitter.close(), self.run)
            self._send_done()
        elif len(self.marked) == 2:
            self._send_done()

    def _send_done(self) -> None:
        msg, self.done = self.done, None
        assert msg is not None
        (_, status, payload, duration_ms, mem, _drained, _nxt, _claimed_at, _received, ended_at, init_ms,
         pickled, _own, _rotated) = msg
        self.out.append(wire.frame(("done", self.run, status, payload, duration_ms, mem, ended_at, init_ms, pickled)))
        self.marked.clear()
        self.busy = False

    def _rotate(self) -> None:
        for fd, splitter in list(self.streams.items()):
            self._read(fd, splitter, self.run, final=True)  # all it wrote before its "done"
        try:
            _msg, fds, _flags, _addr = socket.recv_fds(self.side, 1, 2)
        except OSError:
            fds = []
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            return
        for fd, splitter in list(self.streams.items()):
            self.retired[fd] = (splitter, self.run)
            del self.streams[fd]
        for fd, stream in zip(fds, ("stdout", "stderr"), strict=True):
            self._add_pipe(fd, stream)

    def _on_exit(self, fd: int) -> None:
        """The actor process ended: a lost node (its raylet is gone too) or a death on its own."""
        self.sel.unregister(fd)
        os.close(fd)
        self.alive = False
        self.dead_at = time.monotonic()
        self.out.append(wire.frame(("died", {"node_lost": not _alive(self.raylet)})))
        self.kill(signal.SIGKILL)  # what it started: the pipes reach EOF once those are gone


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except (OSError, IndexError):
        return False


def main() -> None:
    cfg = json.loads(sys.stdin.buffer.read())
    if os.fork() > 0:  # the actor waits for this one: the watchdog is orphaned, no child of the actor
        os._exit(0)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the actor's group gets SIGTERM on a graceful stop: not us
    hello = ("hello", cfg["token"], cfg["pid"], cfg["node_id"], cfg["node_ip"])
    try:
        engine = link.connect(cfg["address"], bytes.fromhex(cfg["key"]), hello)
    except Exception:  # no engine to serve (it is gone, or the key is wrong): stop the actor
        try:
            os.kill(cfg["pid"], signal.SIGKILL)
        except OSError:
            pass
        os._exit(1)
    Watchdog(cfg, engine).serve()
    os._exit(0)


if __name__ == "__main__":
    main()
