"""An event that leaves processes behind (a daemon, a background job) keeps the pipes it ran with.

Every event of an instance writes to the same two pipes, an END marker on each separating one event's bytes
from the next's, as long as no process outlives its event. When one does, the worker moves its fds 1/2 to
new pipes before it sends the event's "done" and hands their read ends over on the instance's side socket::

    worker: event E returns, a child is still there -> new pipes on fds 1/2 -> side socket: their read ends
                                                    -> ("done", ..., rotated=True)
    engine: that "done" -> read the old pipes until empty (events before E end there, by their markers)
                        -> the old pipes are "retired": every line from them is E's, until EOF
                        -> the new pipes are the current ones: the events after E

So a line's event is known from the pipe it came through: what E's daemon prints goes to E's log, also after
E ended, and never to another event's. A retired pipe is at EOF when the last process holding it exits (or
is killed with the instance); reaping waits for that as for any pipe.

``Leftovers`` is a part of the channels (``channels.py``) and runs on the engine thread only.
"""

from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING

from ...core.logchannel import LineSplitter, read_to_eof
from ..backend import REAPED

if TYPE_CHECKING:
    from ...core.records import EventState
    from .channels import Channels
    from .instance import LokyInstance


class Leftovers:
    """The current and retired pipes of instances."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels
        self.loop = channels.loop

    def add_pipes(self, inst: LokyInstance, fds: list[int]) -> None:
        """``fds`` (read ends of the worker's fds 1 and 2) are the current pipes from now."""
        for pipe_fd, stream in zip(fds, ("stdout", "stderr"), strict=True):
            os.set_blocking(pipe_fd, False)
            inst.streams[pipe_fd] = LineSplitter(stream)
            self.loop.watch(pipe_fd, self.channels.on_pipe, inst)
            inst.open_fds.add(pipe_fd)

    def rotate(self, inst: LokyInstance) -> None:
        """The "done" being handled says its event left processes behind, so the worker moved fds 1/2 to new
        pipes (sent before the "done", on the side socket). Everything the worker wrote before that "done" is
        in the old pipes now: read it through the usual path, which ends the events whose END markers are in
        there (their "done" came first). What is left, and whatever those processes write from now on until
        they exit, is the event's whose "done" this is."""
        if inst.state == REAPED:
            return
        for fd, splitter in list(inst.streams.items()):
            if fd in inst.open_fds:
                self._read_available(inst, fd, splitter)
        new_fds = self._receive_pipes(inst)
        if not new_fds:  # the instance is replaced (``_broken``); until then the old pipes stay current
            return
        owner = inst.event or inst.last_event
        for fd, splitter in list(inst.streams.items()):
            del inst.streams[fd]
            if fd not in inst.open_fds:
                continue
            held, splitter.held, splitter.ended = splitter.held, [], False  # empty unless a marker was lost
            self._store_owned(owner, splitter, held)
            inst.retired[fd] = (splitter, owner)
            try:
                self.loop.unwatch(fd)
            except KeyError:  # not being watched right now (a test holding it): watched as retired from now
                pass
            self.loop.watch(fd, self._on_retired, inst)
        self.add_pipes(inst, new_fds)

    def _receive_pipes(self, inst: LokyInstance) -> list[int]:
        """The read ends of the worker's new pipes: one byte and two fds on the side socket per rotation."""
        try:
            _msg, fds, _flags, _a = socket.recv_fds(inst.side, 1, 2, socket.MSG_DONTWAIT)
        except (OSError, AttributeError):
            fds = []
        if len(fds) == 2:
            return fds
        for fd in fds:
            os.close(fd)
        self.channels.broken(inst)
        return []

    def _read_available(self, inst: LokyInstance, fd: int, splitter: LineSplitter) -> None:
        """Read a current pipe until it is empty (or at EOF, which its reader sees next)."""
        while True:
            try:
                data = os.read(fd, 1 << 18)
            except OSError:  # empty (EAGAIN)
                return
            if not data:
                return
            self.channels.lines(inst, splitter, splitter.feed(data))

    def _on_retired(self, fd: int, inst: LokyInstance) -> None:
        """Read a pipe that an event left to its leftover processes: all of it is that event's."""
        splitter, owner = inst.retired[fd]
        try:
            data = os.read(fd, 1 << 18)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            self._store_owned(owner, splitter, splitter.feed(data))
            return
        self.drain_retired(inst, fd)
        self.channels.close_fd(inst, fd)
        self.channels.maybe_reap(inst)

    def drain_retired(self, inst: LokyInstance, fd: int) -> None:
        splitter, owner = inst.retired.pop(fd)
        read_to_eof(fd, splitter, lambda items: self._store_owned(owner, splitter, items))

    def _store_owned(self, ev: EventState | None, splitter: LineSplitter, items: list[str | None]) -> None:
        lines = [x for x in items if x is not None]  # an END marker here is nobody's: only leftovers write
        if lines and ev is not None:
            self.channels.host.lines(ev, splitter.stream, lines)
