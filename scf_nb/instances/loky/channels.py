"""Each instance's channel to the engine: the hello that hands over the pipes, the socket and pipe readers, the
end of an event (its "done" and an END marker on both pipes), and the end of an instance (kill, then reap once
its fds are at EOF and its process is gone). Runs on the engine thread, on the engine's loop; what it learns
goes to the engine as ``Host`` reports. The pipes an event keeps when it leaves processes behind are
``leftover_output.py``'s.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

from ...core.logchannel import LineSplitter, read_to_eof
from ..backend import BUSY, DYING, REAPED, Done, Host, InstanceRecords, Outcome
from . import wire
from .instance import LokyInstance
from .leftover_output import Leftovers

if TYPE_CHECKING:
    from ...engine.loop import Loop
    from .cgroups import MemoryCgroups
    from .sending import Sending
    from .spawner import Spawner

_RECV_BYTES = 1 << 16
# An instance that died on its own: how long its event's end may wait for the exit status (see _cause_pending).
CAUSE_WAIT_S = 1.0
_CAUSE_RETRY_S = 0.002
REAP_AFTER_KILL_S = 2.0  # a killed instance is reaped by then even if a grandchild keeps its pipes open


class Channels:
    """The I/O of every instance of one loky backend."""

    def __init__(self, loop: Loop, spawner: Spawner, sending: Sending, cgroups: MemoryCgroups,
                 listener: socket.socket, live: dict[int, LokyInstance]) -> None:
        self.loop = loop
        self.spawner = spawner
        self.sending = sending
        self.cgroups = cgroups
        self.listener = listener
        self.live = live
        self.by_token: dict[str, LokyInstance] = {}  # started, not yet said hello
        self.leftovers = Leftovers(self)
        self.records: InstanceRecords | None = None  # the store's record of process groups (set by recover)
        self.host: Host

    def on_accept(self, fd: int, _: Any) -> None:
        try:
            sock, _addr = self.listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(True)
        sock.settimeout(5.0)
        try:
            msg, fds, _flags, _a = socket.recv_fds(sock, 256, 3)
            token, pid = msg.decode().split()
        except (OSError, ValueError):
            sock.close()
            return
        sock.settimeout(None)
        inst = self.by_token.pop(token, None)
        if inst is None or len(fds) != 3 or inst.state == REAPED:
            sock.close()
            for extra in fds:
                os.close(extra)
            return
        inst.pid = int(pid)
        inst.conn = sock
        inst.reader = wire.Reader()
        inst.conn_fd = sock.fileno()
        inst.side = socket.socket(fileno=fds[2])  # read only when a "done" says new pipes were sent on it
        self.loop.watch(inst.conn_fd, self.on_conn, inst)
        inst.open_fds = {inst.conn_fd}
        self.leftovers.add_pipes(inst, fds[:2])
        try:  # readable the moment the process has exited: no wait for loky to notice
            inst.pidfd = os.pidfd_open(inst.pid)
            self.loop.watch(inst.pidfd, self._on_pidfd, inst)
        except (OSError, AttributeError):
            inst.pidfd = None
        if self.records is not None:
            self.records.record_instance(inst.pid, inst.pid, os.getpid(), self.spawner.mark)
        self.spawner.started(inst)
        self.host.connected(inst)  # no event is offered to an instance before it has connected
        if inst.state == DYING:
            inst.signal(signal.SIGKILL)

    def on_conn(self, fd: int, inst: LokyInstance) -> bool:
        """Read what the instance sent; True if anything came."""
        data = wire.read_now(inst.conn, _RECV_BYTES)
        if data is None:
            return False
        if not data:
            self.close_fd(inst, fd)
            self.host.lost(inst)
            self.maybe_reap(inst)
            return False
        inst.msgs.extend(inst.reader.feed(data))
        self.handle_msgs(inst)
        return True

    def handle_msgs(self, inst: LokyInstance) -> bool:
        """Handle what the instance sent, in order. The messages wait on the instance, not in a local list,
        so a kill decision made while handling one (``Sending.settle``) still sees the ones after it."""
        handled = False
        while inst.msgs:
            msg = inst.msgs.popleft()
            handled = True
            inst.looking = False  # (it may have looked before the last send: then it is poked once more)
            if msg[0] == "done":
                self._on_done(inst, msg)
            elif msg[0] == "read":
                self.sending.on_read(inst, msg[1])
        return handled

    def broken(self, inst: LokyInstance) -> None:
        """A send to ``inst`` failed (its process is gone). It is killed from the loop's next turn, not here:
        this may run in the middle of handling its messages, and a kill decision must see them all."""
        self.host.need_dispatch()
        self.loop.post(self.host.lost, inst)

    def exited(self, inst: LokyInstance) -> None:
        """loky saw the process end (or it could not start)."""
        inst.exited = True
        self.host.lost(inst)
        self.maybe_reap(inst)

    def _on_done(self, inst: LokyInstance, msg: tuple[Any, ...]) -> None:
        if msg[-1]:  # the event left processes behind: the pipes it ran with are theirs now, new ones came
            self.leftovers.rotate(inst)
        if inst.state == DYING:  # being terminated with grace: it stopped, so stop it for good
            inst.signal(signal.SIGKILL)
            nxt = self.sending.claimed(inst, msg[6])  # it started one sent ahead (could not be banned): that dies too
            if nxt is not None:
                self.host.started(inst, nxt, 0.0)  # refused (the instance is dying): it fails
            return
        inst.dones.append(msg[:-1])
        self._try_complete(inst)

    def _on_pidfd(self, fd: int, inst: LokyInstance) -> None:
        self._close_pidfd(inst)
        self.exited(inst)

    def _close_pidfd(self, inst: LokyInstance) -> None:
        """Stop watching the process; first read how it ended, if it has (``LokyInstance.exit_code``)."""
        fd = inst.pidfd
        if fd is not None:
            inst.exit_code()
            inst.pidfd = None
            try:
                self.loop.unwatch(fd)
            except (KeyError, ValueError):
                pass
            os.close(fd)

    def _cause_pending(self, inst: LokyInstance, force: bool) -> bool:
        """Whether the end of ``inst``, dead on its own with its event running, must wait for the cause: its
        exit status can lag its pidfd a little, and once loky's manager thread has reaped it, loky stores the
        status only when that thread has the GIL back (measured: 1 in 30 SIGKILLs from outside lost their
        cause, read in that gap). Look again every 2 ms, up to ``CAUSE_WAIT_S``; nothing else waits."""
        ev = inst.event
        if ev is None or ev.status.is_terminal or (inst.outcome is not None and inst.outcome.status is not None):
            return False
        if inst.exit_code() is not None:
            return False
        now = time.monotonic()
        if not inst.cause_until:
            inst.cause_until = now + CAUSE_WAIT_S
            inst.outcome = Outcome(None)  # it died on its own: a kill decided meanwhile does not become the cause
        if now >= inst.cause_until:
            return False
        self.loop.call_later(_CAUSE_RETRY_S, self._reap_later, (inst, force))
        return True

    def _reap_later(self, args: tuple[LokyInstance, bool]) -> None:
        self.maybe_reap(*args)

    def on_pipe(self, fd: int, inst: LokyInstance) -> bool:
        """Read a capture pipe; True if anything came."""
        if inst.conn_fd in inst.open_fds and self.sending.may_claim(inst):
            # The event sent ahead may be running already: then the "done" of the one before it is waiting on
            # the socket (sent before the next one started), and must be read first, so that what is in the
            # pipe after it goes to the right event; idle, it may have claimed one (the records say).
            self.on_conn(inst.conn_fd, inst)
        splitter = inst.streams.get(fd)
        if splitter is None or fd not in inst.open_fds:
            return False
        try:
            data = os.read(fd, 1 << 18)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if data:
            self.lines(inst, splitter, splitter.feed(data))
            return True
        self.lines(inst, splitter, splitter.close())
        self.close_fd(inst, fd)
        self.maybe_reap(inst)
        return False

    def lines(self, inst: LokyInstance, splitter: LineSplitter, items: list[str | None]) -> None:
        """Store lines for the event that wrote them; ``None`` is an event's END marker on this stream: what
        comes after it is the next event's, held until the one before has ended."""
        while True:
            if splitter.ended:  # waiting for the rest of the current event's end: not its lines
                splitter.held.extend(items)
                return
            if None not in items:
                break
            i = items.index(None)
            self._store_lines(inst, splitter, items[:i])  # type: ignore[arg-type]
            items = items[i + 1:]
            splitter.ended = True
            self._try_complete(inst)  # may make the event sent ahead the current one, and re-feed held lines
            if not items:
                return
        self._store_lines(inst, splitter, items)  # type: ignore[arg-type]

    def _store_lines(self, inst: LokyInstance, splitter: LineSplitter, lines: list[str], sure: bool = False) -> None:
        if not lines:
            return
        if not sure and (inst.unbound or inst.event is None and self.sending.may_claim(inst)
                         and not self.sending.sync_claims(inst.key)):
            # it may have claimed an event while idle (these would be its lines), and the records cannot be
            # read now: keep them (and what comes after them) until they can
            if not inst.unbound:
                self.loop.call_later(_CAUSE_RETRY_S, self._store_unbound, inst)
            inst.unbound.append((splitter, lines))
            return
        ev = inst.event or inst.last_event
        if ev is not None:
            self.host.lines(ev, splitter.stream, lines)

    def _store_unbound(self, inst: LokyInstance) -> None:
        held, inst.unbound = inst.unbound, []
        for splitter, lines in held:
            self._store_lines(inst, splitter, lines)

    def close_fd(self, inst: LokyInstance, fd: int) -> None:
        if fd not in inst.open_fds:
            return
        inst.open_fds.discard(fd)
        try:
            self.loop.unwatch(fd)
        except (KeyError, ValueError):
            pass
        if fd == inst.conn_fd:
            inst.conn.close()
        else:
            os.close(fd)

    def kill(self, inst: LokyInstance, grace: float) -> None:
        """Signal ``inst``'s process tree: SIGKILL, or SIGTERM and SIGKILL after ``grace``; it is reaped once
        its fds are at EOF, or by force ``REAP_AFTER_KILL_S`` later."""
        inst.signal(signal.SIGTERM if grace > 0 else signal.SIGKILL)
        if grace > 0:
            self.loop.call_later(grace, self._grace_over, inst)
        self.loop.call_later(grace + REAP_AFTER_KILL_S, self._reap_now, inst)

    def _grace_over(self, inst: LokyInstance) -> None:
        if inst.state != REAPED:
            inst.signal(signal.SIGKILL)

    def _reap_now(self, inst: LokyInstance) -> None:
        self.maybe_reap(inst, force=True)

    def maybe_reap(self, inst: LokyInstance, force: bool = False) -> None:
        if inst.state == REAPED or (not force and (inst.open_fds or not inst.exited)):
            return
        if inst.conn_fd in inst.open_fds:  # forced: what it sent is read first (a claim it made, say)
            self._drain_conn(inst)
        if self._cause_pending(inst, force):
            return
        for fd in list(inst.open_fds):
            if fd in inst.streams:
                self._drain(inst, fd)
            elif fd in inst.retired:
                self.leftovers.drain_retired(inst, fd)
            self.close_fd(inst, fd)
        inst.state = REAPED
        if inst.side is not None:
            inst.side.close()
            inst.side = None
        self._close_pidfd(inst)
        self.live.pop(inst.number, None)
        self.by_token.pop(inst.token, None)
        self.host.forget(inst)
        for splitter in inst.streams.values():  # lines after an END marker whose event never completed
            if splitter.held:
                held, splitter.held = splitter.held, []
                self._store_lines(inst, splitter, [x for x in held if x is not None])
        if inst.event is None:
            self.sending.sync_claims(inst.key)  # it claimed while idle: that event may have run, and dies with it
        unbound, inst.unbound = inst.unbound, []
        for splitter, lines in unbound:  # (the records could not be read: the best guess)
            self._store_lines(inst, splitter, lines, sure=True)
        self.host.gone(inst)
        self.sending.release(inst)  # only if it could not be settled before (the worker was stuck)
        if inst.pid and self.records is not None:
            self.records.forget_instance(inst.pid)
        if inst.cgroup is not None:
            self.cgroups.remove(inst.cgroup)
            inst.cgroup = None
        self.spawner.dispose(inst)

    def _drain_conn(self, inst: LokyInstance) -> None:
        while True:
            data = wire.read_now(inst.conn, _RECV_BYTES)
            if not data:  # nothing more now, or gone
                return
            inst.msgs.extend(inst.reader.feed(data))
            self.handle_msgs(inst)

    def _drain(self, inst: LokyInstance, fd: int) -> None:
        splitter = inst.streams[fd]
        read_to_eof(fd, splitter, lambda items: self.lines(inst, splitter, items))

    # -- the end of an event: its "done" and the END markers on both pipes --------------------------------
    def _try_complete(self, inst: LokyInstance) -> None:
        """An event ends when its "done" message and the END marker on both pipes have all arrived, so every
        line it printed is stored before its terminal status."""
        while inst.dones:  # an event sent ahead may have ended right after
            if inst.event is None and inst.dones[0][-1] is not None:  # claimed while idle, not bound yet
                self.sending.started(inst, *inst.dones[0][-1])
            if inst.event is None or not self._complete_one(inst):
                return

    def _complete_one(self, inst: LokyInstance) -> bool:
        """End ``inst``'s current event with the first "done" waiting, if its END markers are in too."""
        (_, status, payload, duration_ms, mem, drained, claimed, claimed_at, received, ended_at, init_ms,
         pickled, _own) = inst.dones[0]
        if drained:  # the pipes were empty when it ended: all its lines are read, and no END markers come
            for splitter in inst.streams.values():
                if not splitter.ended:
                    if splitter.pending:
                        self.lines(inst, splitter, splitter.close())  # a last line with no newline
                    splitter.ended = True
        ev = inst.event
        if ev is None or not inst.dones or not all(s.ended for s in inst.streams.values()):
            return False
        inst.dones.popleft()
        for s in inst.streams.values():
            s.ended = False
        host = self.host
        if not host.finished(inst, ev, Done(status, payload, duration_ms, mem, host.wall(ended_at), init_ms, pickled)):
            return True  # the engine is replacing it (an exception, a memory limit)
        nxt = self.sending.claimed(inst, claimed)
        if inst.state != BUSY:  # being killed: it serves nothing more
            if nxt is not None:  # (it was banned first, so this cannot be; never leave an event hanging)
                host.started(inst, nxt, 0.0)  # refused: it fails
            self._refeed_held(inst)
            host.need_dispatch()
            return True
        self.sending.read_up_to(inst, received)
        if nxt is not None:  # the worker started the oldest event sent ahead right after this one
            if host.started(inst, nxt, host.wall(claimed_at)):
                self.sending.feed_all(inst)
        else:
            host.idle(inst)
            self.sending.unban(inst)  # it claims only at the end of an event: nothing to fear until the next run
        self._refeed_held(inst)
        if inst.settling:  # in the middle of a kill decision: dispatch later, never onto this instance now
            host.need_dispatch()
            return True
        host.dispatch(ev.fn.key, inst)  # an idle instance takes the oldest waiting event
        return True

    def _refeed_held(self, inst: LokyInstance) -> None:
        """Lines read after an END marker belong to the event after the one that just ended."""
        for splitter in inst.streams.values():
            if splitter.held:
                held, splitter.held = splitter.held, []
                self.lines(inst, splitter, held)
