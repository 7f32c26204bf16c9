"""The engine's side of its instances' plumbing: the hello that hands over the pipes, the connection and pipe
readers, and the end of an instance (kill, then reap once its fds are at EOF and its process is gone).

``InstanceIO`` is one half of :class:`scf_nb.core.engine.Engine`, split out to keep each file readable; it
runs only on the engine thread and uses the engine's selector, store and dispatch state. The pipes that an
event keeps when it leaves processes behind are ``leftover_output.py``'s (mixed in here).
"""

from __future__ import annotations

import logging
import os
import select
import signal
import socket
import time
from typing import TYPE_CHECKING, Any

from . import wire
from .instances import BUSY, DYING, IDLE, REAPED, Instance, Outcome
from .leftover_output import LeftoverOutput
from .logchannel import LineSplitter, read_to_eof
from .status import Status

if TYPE_CHECKING:
    from .records import EventState
    from .store import Store

log = logging.getLogger("scf_nb")
_RECV_BYTES = 1 << 16
# An instance that died on its own: how long its event's end may wait for the exit status (see _cause_pending).
CAUSE_WAIT_S = 1.0
_CAUSE_RETRY_S = 0.002
REAP_AFTER_KILL_S = 2.0  # a killed instance is reaped by then even if a grandchild keeps its pipes open


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


class InstanceIO(LeftoverOutput):
    """Instance I/O and end of life, mixed into the Engine."""

    if TYPE_CHECKING:  # provided by Engine
        store: Store
        _sel: Poller
        _listener: socket.socket
        _by_token: dict[str, Instance]
        _all: set[Instance]
        _pools: dict[tuple[str, str], list[Instance]]
        _spare: Instance | None
        _need_dispatch: bool
        _spawner: Any

        clock: Any
        _queues: dict[tuple[str, str], Any]

        def _dispatch(self, key: tuple[str, str]) -> None: ...
        def _end(self, ev: EventState, status: Status, **fields: Any) -> None: ...
        def _cmd_exited(self, inst: Instance) -> None: ...
        def _settle(self, inst: Instance) -> bool: ...
        def _release_ahead(self, inst: Instance) -> None: ...
        def _died_starting(self, inst: Instance) -> None: ...
        _start_deaths: dict[tuple[str, str], int]
        def _has_pending(self, inst: Instance) -> bool: ...
        def _may_claim(self, inst: Instance) -> bool: ...
        def _unban(self, inst: Instance) -> None: ...
        def _from_wall(self, at: float) -> float: ...
        def _read_up_to(self, inst: Instance, received: int) -> None: ...
        def _feed(self, inst: Instance, ahead: Any) -> None: ...
        def _begin(self, inst: Instance, ev: EventState, now: float | None = None) -> None: ...
        _ahead: dict[tuple[str, str], Any]
        def _broken(self, inst: Instance) -> None: ...
        def _steal(self, idle: Instance) -> None: ...
        def _schedule(self, delay: float, kind: str, obj: Any) -> None: ...
        def _load(self, inst: Instance) -> None: ...
        def _ended_over_memory(self, inst: Instance, ev: EventState, status: str, payload: Any,
                               duration_ms: float, mem: int | None) -> bool: ...
        def _died_of_memory(self, inst: Instance) -> Outcome | None: ...
        def _release_memory(self, inst: Instance) -> None: ...

    def _on_accept(self, fd: int, _: Any) -> None:
        try:
            sock, _addr = self._listener.accept()
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
        inst = self._by_token.pop(token, None)
        if inst is None or len(fds) != 3 or inst.state == REAPED:
            sock.close()
            for extra in fds:
                os.close(extra)
            return
        inst.pid = int(pid)
        inst.conn = sock
        if inst.key is not None:
            self._start_deaths.pop(inst.key, None)
        inst.reader = wire.Reader()
        inst.conn_fd = sock.fileno()
        inst.side = socket.socket(fileno=fds[2])  # read only when a "done" says new pipes were sent on it
        self._sel.register(inst.conn_fd, (self._on_conn, inst))
        inst.open_fds = {inst.conn_fd}
        self._add_pipes(inst, fds[:2])
        try:  # readable the moment the process has exited: no wait for loky to notice
            inst.pidfd = os.pidfd_open(inst.pid)
            self._sel.register(inst.pidfd, (self._on_pidfd, inst))
        except (OSError, AttributeError):
            inst.pidfd = None
        self.store.record_instance(inst.pid, inst.pid, os.getpid(), self._spawner.mark)
        self._spawner.started(inst)
        if inst.state == DYING:
            inst.signal(signal.SIGKILL)
            return
        if inst.fn is not None:
            try:
                self._load(inst)
            except (OSError, ValueError):  # gone already: its event (if any) fails to send too, and goes back
                self._broken(inst)
        inst.state = IDLE  # no event is offered to an instance before it has connected
        inst.idle_since = time.monotonic()
        if inst.fn is not None:
            self._steal(inst)  # events may wait behind a busy instance of its function
            self._need_dispatch = True  # or in the FIFO

    def _on_conn(self, fd: int, inst: Instance) -> bool:
        """Read what the instance sent; True if anything came."""
        try:
            data = inst.conn.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close_fd(inst, fd)
            if inst.state != DYING:
                self._kill(inst, None)
            self._maybe_reap(inst)
            return False
        inst.msgs.extend(inst.reader.feed(data))
        self._handle_msgs(inst)
        return True

    def _handle_msgs(self, inst: Instance) -> bool:
        """Handle what the instance sent, in order. The messages wait on the instance, not in a local list,
        so a kill decision made while handling one (``_settle``) still sees the ones after it."""
        handled = False
        while inst.msgs:
            msg = inst.msgs.popleft()
            handled = True
            if msg[0] == "done":
                self._on_done(inst, msg)
            elif msg[0] == "read":
                self._on_read(inst, msg)
        return handled

    def _started(self, inst: Instance, seq: int, claimed_at: float) -> None:
        """The idle ``inst`` claimed record ``seq`` (the records say so, or its "done" does): it runs that event
        from the moment of the claim."""
        ahead = self._ahead[inst.key]  # type: ignore[index]
        ahead.unoffer(inst)
        nxt = self._claimed(inst, seq)
        if nxt is None:
            return
        if inst.state != IDLE:  # being stopped (it claimed before it could be banned): the event dies with it
            self._end(nxt, Status.FAILED, error_type="InstanceDied", exit_reason="instance died",
                      error_message="the instance was being stopped as it started the event")
            return
        inst.state = BUSY
        self._begin(inst, nxt, self._from_wall(claimed_at))
        self._feed(inst, ahead)  # it must hold every pending run before it may claim one at its end

    def _sync_claims(self, key: tuple[str, str] | None) -> bool:
        """Bind the events that idle instances of function ``key`` have claimed: a worker that claims while idle
        runs at once and says nothing until its "done" (the claim is in the records). False: the records
        could not be read now (a worker holds their lock), ask again shortly."""
        if key is None:
            return True
        ahead = self._ahead.get(key)
        if ahead is None or not ahead.pending:
            return True
        idle = {i.number: i for i in self._pools.get(key, ()) if i.event is None and i.sent_upto
                and i.state in (IDLE, DYING)}
        if not idle:
            return True
        claims = ahead.shared.claims([seq for _, seq, _ in ahead.pending])
        if claims is None:
            return False
        for seq in sorted(claims):
            owner, at = claims[seq]
            inst = idle.get(owner)
            if inst is not None and inst.event is None:
                self._started(inst, seq, at)
        return True

    def _on_read(self, inst: Instance, msg: tuple[Any, ...]) -> None:
        """The idle ``inst`` read the runs it was offered and claimed none (others took them first, they were
        taken back, or it is banned)."""
        self._read_up_to(inst, msg[1])
        ahead = self._ahead.get(inst.key) if inst.key is not None else None
        if ahead is not None and msg[1] >= inst.offer_at:
            ahead.unoffer(inst)
        if inst.state == IDLE:
            self._need_dispatch = True

    def _on_done(self, inst: Instance, msg: tuple[Any, ...]) -> None:
        if msg[-1]:  # the event left processes behind: the pipes it ran with are theirs now, new ones came
            self._rotate(inst)
        if inst.state == DYING:  # being terminated with grace: it stopped, so stop it for good
            inst.signal(signal.SIGKILL)
            nxt = self._claimed(inst, msg[6])  # it started one sent ahead (it could not be banned): that dies too
            if nxt is not None:
                self._end(nxt, Status.FAILED, error_type="InstanceDied", exit_reason="instance died",
                          error_message="the instance was being stopped as it started the event")
            return
        inst.dones.append(msg[:-1])
        self._try_complete(inst)

    def _on_pidfd(self, fd: int, inst: Instance) -> None:
        self._close_pidfd(inst)
        self._cmd_exited(inst)

    def _close_pidfd(self, inst: Instance) -> None:
        """Stop watching the process; first read how it ended, if it has (``Instance.exit_code``)."""
        fd = inst.pidfd
        if fd is not None:
            inst.exit_code()
            inst.pidfd = None
            try:
                self._sel.unregister(fd)
            except (KeyError, ValueError):
                pass
            os.close(fd)

    def _cause_pending(self, inst: Instance, force: bool) -> bool:
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
        self._schedule(_CAUSE_RETRY_S, "cause", (inst, force))
        return True

    def _timer_cause(self, args: tuple[Instance, bool]) -> None:
        self._maybe_reap(*args)

    def _on_pipe(self, fd: int, inst: Instance) -> bool:
        """Read a capture pipe; True if anything came."""
        if inst.conn_fd in inst.open_fds and self._may_claim(inst):
            # The event sent ahead may be running already: then the "done" of the one before it is waiting on
            # the socket (sent before the next one started), and must be read first, so that what is in the
            # pipe after it goes to the right event; idle, it may have claimed one (the records say).
            self._on_conn(inst.conn_fd, inst)
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
            self._lines(inst, splitter, splitter.feed(data))
            return True
        self._lines(inst, splitter, splitter.close())
        self._close_fd(inst, fd)
        self._maybe_reap(inst)
        return False

    def _lines(self, inst: Instance, splitter: LineSplitter, items: list[str | None]) -> None:
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

    def _store_lines(self, inst: Instance, splitter: LineSplitter, lines: list[str], sure: bool = False) -> None:
        if not lines:
            return
        if not sure and (inst.unbound or inst.event is None and self._may_claim(inst)
                         and not self._sync_claims(inst.key)):
            # it may have claimed an event while idle (these would be its lines), and the records cannot be
            # read now: keep them (and what comes after them) until they can
            if not inst.unbound:
                self._schedule(_CAUSE_RETRY_S, "unbound", inst)
            inst.unbound.append((splitter, lines))
            return
        ev = inst.event or inst.last_event
        if ev is not None:
            self.store.add_lines(ev.key, ev.log_seq + 1, self.clock(), splitter.stream, lines)
            ev.log_seq += len(lines)

    def _timer_unbound(self, inst: Instance) -> None:
        held, inst.unbound = inst.unbound, []
        for splitter, lines in held:
            self._store_lines(inst, splitter, lines)

    def _close_fd(self, inst: Instance, fd: int) -> None:
        if fd not in inst.open_fds:
            return
        inst.open_fds.discard(fd)
        try:
            self._sel.unregister(fd)
        except (KeyError, ValueError):
            pass
        if fd == inst.conn_fd:
            inst.conn.close()
        else:
            os.close(fd)

    def _kill(self, inst: Instance, outcome: Outcome | None, sig: int = signal.SIGKILL,
              grace: float = 0.0) -> None:
        """Stop ``inst``'s process group; its event (if any) ends as ``outcome`` once its pipes are read to
        EOF (or ``outcome`` None: as an unexpected death, with the cause)."""
        if inst.state == REAPED:
            return
        if self._has_pending(inst):
            self._settle(inst)  # an event sent ahead must not die with this one
            if inst.state == REAPED:  # settling read it to its end
                return
        if inst.outcome is None:
            inst.outcome = outcome
        if inst.state != DYING:
            inst.state = DYING  # it stays in its pool, counting against concurrency, until reaped
            if inst is self._spare:
                self._spare = None
        inst.signal(sig)
        if sig != signal.SIGKILL:
            self._schedule(grace, "grace", inst)
        self._schedule(grace + REAP_AFTER_KILL_S, "reap", inst)
        self._need_dispatch = True

    def _forget(self, inst: Instance) -> None:
        """``inst`` serves no new event: out of its function's pool (or no longer the spare)."""
        if inst is self._spare:
            self._spare = None
        pool = self._pools.get(inst.key) if inst.key is not None else None
        if pool is not None and inst in pool:
            pool.remove(inst)

    def _maybe_reap(self, inst: Instance, force: bool = False) -> None:
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
                self._drain_retired(inst, fd)
            self._close_fd(inst, fd)
        inst.state = REAPED
        if inst.side is not None:
            inst.side.close()
            inst.side = None
        self._close_pidfd(inst)
        self._all.discard(inst)
        self._by_token.pop(inst.token, None)
        self._forget(inst)
        for splitter in inst.streams.values():  # lines after an END marker whose event never completed
            if splitter.held:
                held, splitter.held = splitter.held, []
                self._store_lines(inst, splitter, [x for x in held if x is not None])
        if inst.event is None:
            self._sync_claims(inst.key)  # it claimed while idle: that event may have run, and dies with it
        unbound, inst.unbound = inst.unbound, []
        for splitter, lines in unbound:  # (the records could not be read: the best guess)
            self._store_lines(inst, splitter, lines, sure=True)
        ev, inst.event = inst.event, None
        if ev is not None and not ev.status.is_terminal:
            out = inst.outcome
            if out is None or out.status is None:
                out = self._died_of_memory(inst) or Outcome(Status.FAILED, "InstanceDied", inst.exit_description(),
                                                            "instance died")
            assert out.status is not None  # both outcomes above have one
            self._end(ev, out.status, error_type=out.error_type, error_message=out.error_message,
                      exit_reason=out.exit_reason, mem_usage_bytes=out.mem_usage_bytes)
        elif inst.conn is None:
            self._died_starting(inst)
        self._release_ahead(inst)  # only if it could not be settled before (the worker was stuck)
        if inst.pid:
            self.store.forget_instance(inst.pid)
        self._release_memory(inst)
        self._spawner.dispose(inst)
        self._need_dispatch = True

    def _drain_conn(self, inst: Instance) -> None:
        while True:
            try:
                data = inst.conn.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
            except OSError:  # nothing more now (BlockingIOError), or gone
                return
            if not data:
                return
            inst.msgs.extend(inst.reader.feed(data))
            self._handle_msgs(inst)

    def _drain(self, inst: Instance, fd: int) -> None:
        splitter = inst.streams[fd]
        read_to_eof(fd, splitter, lambda items: self._lines(inst, splitter, items))

    def _timer_grace(self, inst: Instance) -> None:
        if inst.state != REAPED:
            inst.signal(signal.SIGKILL)

    def _timer_reap(self, inst: Instance) -> None:
        self._maybe_reap(inst, force=True)

    # -- the end of an event: its "done" and the END markers on both pipes --------------------------------
    def _try_complete(self, inst: Instance) -> None:
        """An event ends when its "done" message and the END marker on both pipes have all arrived, so every
        line it printed is stored before its terminal status."""
        while inst.dones:  # an event sent ahead may have ended right after
            if inst.event is None and inst.dones[0][-1] is not None:  # claimed while idle, not bound yet
                self._started(inst, *inst.dones[0][-1])
            if inst.event is None or not self._complete_one(inst):
                return

    def _complete_one(self, inst: Instance) -> bool:
        """End ``inst``'s current event with the first "done" waiting, if its END markers are in too."""
        (_, status, payload, duration_ms, mem, drained, claimed, claimed_at, received, ended_at, init_ms,
         pickled, _own) = inst.dones[0]
        if drained:  # the pipes were empty when it ended: all its lines are read, and no END markers come
            for splitter in inst.streams.values():
                if not splitter.ended:
                    if splitter.pending:
                        self._lines(inst, splitter, splitter.close())  # a last line with no newline
                    splitter.ended = True
        ev = inst.event
        if ev is None or not inst.dones or not all(s.ended for s in inst.streams.values()):
            return False
        inst.dones.popleft()
        for s in inst.streams.values():
            s.ended = False
        inst.event, inst.last_event = None, ev
        if ev.fn.memory_mb and self._ended_over_memory(inst, ev, status, payload, duration_ms, mem):
            return True
        if status == "FINISHED":
            self._end(ev, Status.FINISHED, duration_ms=duration_ms, result=payload, mem_usage_bytes=mem,
                      exit_reason="returned", end_time=self._from_wall(ended_at), init_duration_ms=init_ms,
                      result_pickle=pickled)
            nxt = self._claimed(inst, claimed)
            if inst.state != BUSY:  # being killed: it serves nothing more
                if nxt is not None:  # (it was banned first, so this cannot be; never leave an event hanging)
                    self._end(nxt, Status.FAILED, error_type="InstanceDied", exit_reason="instance died",
                              error_message="the instance was being stopped as it started the event")
                self._refeed_held(inst)
                self._need_dispatch = True
                return True
            self._read_up_to(inst, received)
            if nxt is not None:  # the worker started the oldest event sent ahead right after this one
                self._begin(inst, nxt, self._from_wall(claimed_at))
                self._feed(inst, self._ahead[ev.fn.key])
            else:
                inst.state = IDLE
                inst.idle_since = time.monotonic()
                self._unban(inst)  # it claims only at the end of an event: nothing to fear until the next run
            self._refeed_held(inst)
            if inst.settling:  # in the middle of a kill decision: dispatch later, never onto this instance now
                self._need_dispatch = True
                return True
            self._dispatch(ev.fn.key)  # an idle instance takes the oldest waiting event
            if inst.state == IDLE and self._queues:  # another function may want the room it takes
                self._need_dispatch = True
        else:
            if payload is None:  # SIGTERM that the engine did not send (someone ran `kill`)
                payload = {"type": "Terminated", "message": "the instance received SIGTERM", "traceback": ""}
            self._end(ev, Status.FAILED, duration_ms=duration_ms, mem_usage_bytes=mem, init_duration_ms=init_ms,
                      end_time=self._from_wall(ended_at), error_type=payload["type"], error_message=payload["message"],
                      error_traceback=payload["traceback"], exit_reason="the handler raised; instance replaced")
            self._kill(inst, None)  # SCF's instance repossession: the next event gets a fresh process
        return True

    def _claimed(self, inst: Instance, seq: int | None) -> EventState | None:
        """The event sent ahead that ``inst``'s worker says it claimed (as record ``seq``), taken off the pending
        ones."""
        if seq is None:
            return None
        ev: EventState | None = self._ahead[inst.key].take(seq)  # type: ignore[index]
        if ev is None:  # cannot be: a claimed record is never taken back
            log.error("scf_nb: instance %s claimed unknown record %s", inst.number, seq)
        return ev

    def _refeed_held(self, inst: Instance) -> None:
        """Lines read after an END marker belong to the event after the one that just ended."""
        for splitter in inst.streams.values():
            if splitter.held:
                held, splitter.held = splitter.held, []
                self._lines(inst, splitter, held)
