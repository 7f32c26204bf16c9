"""Offers and sending ahead, the loky way: each function's pending events are records in a file shared with
its workers (``ahead.py``), and a worker claims one under ``flock`` (at the end of an event, or idle when runs
come). This is the backend's side of ``Backend.offer / send_ahead / take_back / settle``; the engine keeps
the FIFO and hands over its head (or a prefix of it) only.

- The oldest waiting event not offered yet is the first pending one not offered to an idle instance, else
  the FIFO's head (events leave the FIFO from its head, so everything pending is older than the FIFO).
- It is offered to one idle instance of its function's revision and, as every pending event, sent to the
  busy instances: whichever claims it first runs it. While every instance is busy, the FIFO's next small
  events are sent ahead too (up to ``AHEAD`` per busy instance); the first to finish claims the oldest.
- An event stays QUEUED until a worker claims it; its ``run_time`` is the claim's. Before anything kills an
  instance, ``settle`` bans it from claiming and catches up on what it had claimed, so the kill hits
  exactly what runs there.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..backend import AGAIN, BUSY, DYING, IDLE, LATER, NOT_HELD, TAKEN, Host, Instance
from . import wire
from .ahead import Shared, records_path
from .instance import LokyInstance

if TYPE_CHECKING:
    from ...core.records import EventState
    from ...engine.loop import Loop
    from .channels import Channels

log = logging.getLogger("scf_nb")
AHEAD = 8  # events sent ahead per busy instance at most (pending for the function: AHEAD x busy instances)
# Only small events are sent ahead, and only so many bytes a busy instance has not read yet: they always fit
# in its socket's buffer, so a send never blocks the engine on an instance that is busy and not reading.
AHEAD_MAX_BYTES = 16 * 1024
UNREAD_MAX_BYTES = 96 * 1024
UNREAD_MAX_RUNS = 32
CLAIMS_POLL_S = 0.001  # an idle instance offered an event: the records are read after this (doubling) ...
CLAIMS_POLL_MAX_S = 0.05  # ... up to this, until it has claimed, or said it claimed none
RESERVE = 16  # records made PENDING per take of their lock, ahead of the events that will use them
RETRY_S = 0.02  # a ban that could not be lifted (a worker held the records' lock) is tried again after this
_POKE = wire.frame(("poke",))  # to an idle instance that holds an offered run already: claim now


def _small(payload: str) -> bool:
    """At most AHEAD_MAX_BYTES in UTF-8 (a character takes up to 4 bytes: count them only when it matters)."""
    return len(payload) * 4 <= AHEAD_MAX_BYTES or len(payload.encode("utf-8", "surrogatepass")) <= AHEAD_MAX_BYTES


class Ahead:
    """One function's events sent ahead that no worker is known to have started, oldest first."""

    __slots__ = ("shared", "pending", "seq", "reserved", "offered")

    def __init__(self, path: str) -> None:
        self.shared = Shared(path)
        self.pending: deque[tuple[EventState, int, bytes]] = deque()  # (event, record number, its "run" frame)
        self.seq = 0
        self.reserved = 0  # records up to this one are PENDING already (those after seq: for the next events)
        self.offered: dict[int, LokyInstance] = {}  # record number -> the idle instance it was offered to

    def reserve(self, n: int) -> int:
        """Make the next ``n`` records PENDING (or as many as the ring allows); returns how many are. Records
        are reserved ``RESERVE`` at a time, in one take of the lock: a record no run was sent for is claimed
        by no worker (each claims only among the runs it holds), so reserving early changes nothing else."""
        if self.reserved < self.seq + n:
            self.reserved += self.shared.reserve_many(self.reserved + 1, max(RESERVE, self.seq + n - self.reserved))
        return min(n, self.reserved - self.seq)

    def take(self, seq: int) -> EventState | None:
        """``seq`` is decided (claimed, or taken back): off the pending ones; the idle instance it was offered
        to (if any) may be offered another."""
        inst = self.offered.pop(seq, None)
        if inst is not None and inst.offer == seq:
            inst.offer = None
        for i, (ev, s, _) in enumerate(self.pending):
            if s == seq:
                del self.pending[i]
                return ev
        return None

    def add(self, ev: EventState) -> int:
        """``ev`` is pending as the next record (already reserved); its "run" frame is made once, for all."""
        self.seq += 1
        frame = wire.frame(("run", ev.request_id, ev.payload, ev.qualifier, ev.fn.version, self.seq))
        self.pending.append((ev, self.seq, frame))
        return self.seq

    def unoffer(self, inst: LokyInstance) -> None:
        """``inst`` will not claim its offer (it read it and claimed none, it is banned, or it is gone)."""
        if inst.offer is not None:
            if self.offered.get(inst.offer) is inst:
                del self.offered[inst.offer]
            inst.offer = None

    def entry(self, ev: EventState) -> int | None:
        for e, s, _ in self.pending:
            if e is ev:
                return s
        return None


class Sending:
    """Every function's pending events, and the instances' claims of them."""

    def __init__(self, loop: Loop, folder: str, live: dict[int, LokyInstance]) -> None:
        self.loop = loop
        self.folder = folder
        self.live = live  # the backend's instances not reaped, by number
        self.ahead: dict[tuple[str, str], Ahead] = {}  # per function
        self._offering: dict[tuple[str, str], tuple[float, float]] = {}  # unanswered offers: next look, backoff
        self.turn_due = False  # some are (the loop looks at the records at the end of each turn)
        self.host: Host
        self.channels: Channels

    def records_for(self, key: tuple[str, str]) -> str:
        """The path of the records of function ``key``'s events sent ahead (made on first use)."""
        name = hashlib.sha1(repr(key).encode()).hexdigest()[:20]
        return records_path(self.folder, name)

    def _of(self, key: tuple[str, str]) -> Ahead:
        ahead = self.ahead.get(key)
        if ahead is None:
            ahead = self.ahead[key] = Ahead(self.records_for(key))
        return ahead

    # -- what the engine asks ---------------------------------------------------------------------------------
    def unoffered(self, key: tuple[str, str]) -> EventState | None:
        ahead = self.ahead.get(key)
        if ahead is not None and len(ahead.pending) > len(ahead.offered):
            for ev, seq, _ in ahead.pending:
                if seq not in ahead.offered:
                    return ev
        return None

    def waiting(self, key: tuple[str, str]) -> int:
        ahead = self.ahead.get(key)
        return len(ahead.pending) - len(ahead.offered) if ahead is not None else 0

    def offer(self, engine_inst: Instance, ev: EventState, from_fifo: bool) -> bool:
        """Offer ``ev`` to the idle ``inst``: it becomes a pending record (if it was the FIFO's head, where it
        also goes to the busy instances, which may finish first), and ``inst`` gets every pending run up to it.
        The event runs where it is claimed first; False: a worker holds the records' lock, try again later."""
        inst: LokyInstance = engine_inst  # type: ignore[assignment]  # (the engine's handle on one of ours)
        key = ev.fn.key
        ahead = self.ahead.get(key) or self._of(key)
        seq = None if from_fifo else ahead.entry(ev)
        if seq is None:
            if not ahead.reserve(1):
                return False
            seq = ahead.add(ev)
            pool: Sequence[LokyInstance] = self.host.pools.get(key, ())  # type: ignore[assignment]
            for busy in pool:
                if busy is not inst and self.claims_ahead(busy, ev.fn.revision):
                    self.feed(busy, ahead)
        ahead.offered[seq] = inst
        inst.offer = seq
        if inst.looking:  # it was sent something since it last spoke: it looks at all it holds, and says so
            pass  # (then it is offered this again, if still pending): not a send for every event meanwhile
        elif inst.sent_upto >= seq:  # it holds the run already (sent ahead while it was busy, or banned): it
            self._poke(inst)  # looks again at what it holds only when something comes
        else:
            self.feed(inst, ahead, upto=seq)
        inst.offer_at = inst.acked + len(inst.unread)  # a "read" covering this many runs answers the offer
        if key not in self._offering:  # it says nothing when it claims: the loop looks at the records shortly,
            self._offering[key] = (time.monotonic() + CLAIMS_POLL_S, CLAIMS_POLL_S)  # unless its "done" comes first
            self.turn_due = True
        return True

    def send_ahead(self, queue: Sequence[EventState]) -> int:
        """Every instance is busy: make the FIFO's next events pending, each sent to every busy instance of its
        revision, up to ``AHEAD`` per busy instance. The FIFO's head stops it (too big, or of another
        revision): nothing jumps it. Returns how many of the head were made pending."""
        head = queue[0]
        key = head.fn.key
        ahead = self.ahead.get(key)
        pool: Sequence[LokyInstance] = self.host.pools.get(key, ())  # type: ignore[assignment]
        if ahead is not None and len(ahead.pending) > AHEAD * len(pool) // 2:  # enough are waiting (see below)
            return 0
        targets = [inst for inst in pool if self.claims_ahead(inst, head.fn.revision)]
        if not targets:
            return 0
        if ahead is None:
            ahead = self._of(key)
        cap = AHEAD * len(targets)
        if len(ahead.pending) > cap // 2:  # refill in batches: one lock and one send per instance for several
            return 0
        batch: list[EventState] = []
        for ev in queue:
            if len(batch) + len(ahead.pending) >= cap or ev.fn.revision != head.fn.revision or not _small(ev.payload):
                break
            batch.append(ev)
        made = ahead.reserve(len(batch)) if batch else 0
        for ev in batch[:made]:
            ahead.add(ev)
        if made:
            for inst in targets:
                self.feed(inst, ahead)
        return made

    def take_back(self, ev: EventState) -> str:
        """Terminate of a QUEUED event: take it back unless a worker has just started it."""
        ahead = self.ahead.get(ev.fn.key)
        seq = ahead.entry(ev) if ahead is not None else None
        if seq is None:
            return NOT_HELD
        assert ahead is not None
        taken = ahead.shared.revoke(seq)
        owner = None if taken is not False else (ahead.shared.started_by([seq]) or {}).get(seq)
        runs_on = self.live.get(owner) if owner is not None else None
        if taken:
            ahead.take(seq)
            return TAKEN
        if taken is False and self.orphaned(ahead, ev, seq):
            return AGAIN  # its claimer is gone and never ran it: pending again
        if runs_on is None or not self.settle(runs_on):  # the "done" before it tells where it runs
            return LATER
        return AGAIN

    def take_oldest(self, key: tuple[str, str], revision: int, before: int | None) -> EventState | str | None:
        """The first event sent ahead of ``revision`` that can still be taken back, if older than event key
        ``before`` (the FIFO's head), taken back; ``LATER`` when a worker holds the lock."""
        ahead = self.ahead.get(key)
        if ahead is None:
            return None
        for ev, seq, _ in list(ahead.pending):
            if ev.fn.revision != revision:
                continue
            if before is not None and before < ev.key:
                break
            taken = ahead.shared.revoke(seq)
            if taken is None:  # a worker holds the lock: ask again shortly, start nothing out of order
                return LATER
            if not taken and self.orphaned(ahead, ev, seq):  # claimed by a gone instance: pending again
                taken = ahead.shared.revoke(seq)
            if taken:
                ahead.take(seq)
                return ev
        return None

    def take_back_all(self) -> list[EventState]:
        """The engine stops: what was sent ahead and never started."""
        out = []
        for ahead in self.ahead.values():
            for ev, seq, _ in list(ahead.pending):
                if ahead.shared.revoke(seq):
                    ahead.take(seq)
                    out.append(ev)
        return out

    def settle(self, engine_inst: Instance) -> bool:
        """Make the engine's view of ``inst`` exact before a kill: ban it from claiming events sent ahead; if it
        has claimed some already, the "done" of each event before them is readable now (sent before the claim
        was acted on): read them, which makes the newest the current event. Nothing is dispatched meanwhile.

        Returns:
            False if the workers could not be asked (one holds the records' lock: stopped?): nothing is exact,
            try again later.
        """
        inst: LokyInstance = engine_inst  # type: ignore[assignment]
        ahead = self.ahead.get(inst.key) if inst.key is not None else None
        if ahead is None or not ahead.pending or inst.conn is None or inst.sent_upto == 0:
            return True  # it never held an event sent ahead (or none is pending): it cannot have claimed one
        inst.settling = True
        try:
            mine = ahead.shared.ban(inst.number, [seq for _, seq, _ in ahead.pending])
            if mine is None:
                return False
            inst.banned = True
            ahead.unoffer(inst)  # what it was offered goes to another (or waits), unless it claimed it already
            if inst.event is None and not self.sync_claims(inst.key):  # idle: has it claimed one?
                return False
            claimed = set(mine)
            channels = self.channels
            for _ in range(10_000):
                if not any(seq in claimed for _, seq, _ in ahead.pending):
                    return True
                progress = channels.handle_msgs(inst)
                progress = (inst.conn_fd in inst.open_fds and channels.on_conn(inst.conn_fd, inst)) or progress
                for fd in list(inst.streams):
                    progress = (fd in inst.open_fds and channels.on_pipe(fd, inst)) or progress
                if not progress:
                    break
            return not any(seq in claimed for _, seq, _ in ahead.pending)  # else the worker is gone: reaping ends it
        finally:
            inst.settling = False

    def unban(self, engine_inst: Instance) -> None:
        """``inst`` was settled but not killed (its event had returned): it may claim events sent ahead again.
        (Until then it only claims nothing: never wrong, so a worker holding the lock just delays this.)"""
        inst: LokyInstance = engine_inst  # type: ignore[assignment]
        if inst.banned:
            ahead = self.ahead.get(inst.key) if inst.key is not None else None
            if ahead is None or ahead.shared.unban(inst.number):
                inst.banned = False
            else:
                self.loop.call_later(RETRY_S, self.unban, inst)  # also for one that is gone: its slot must come free

    def turn_end(self) -> float:
        """Functions whose idle instances may have claimed an event unseen: once due, read the records (has
        one claimed?). Returns the time until the next look is due.

        An idle instance claims on its own (say nothing) while it holds runs that are still pending, and not
        only the one it was offered: on a loaded machine it may wake after the others took that one (which
        closes its offer) and claim a later run it was sent meanwhile. So the looks go on, backing off, until
        no offer is open and no idle instance holds a pending run (it claimed one, or said it read them)."""
        now = time.monotonic()
        wait = 1.0
        for key, (due, delay) in list(self._offering.items()):
            ahead = self.ahead.get(key)
            if ahead is None or not (ahead.offered or self._idle_may_claim(key)):
                del self._offering[key]
                continue
            if now >= due:
                synced = self.sync_claims(key)
                if self._offering.get(key) != (due, delay):  # a claim it bound answered the offers (``_answered``),
                    continue  # and any made since start their looks afresh
                if synced and not ahead.offered and not self._idle_may_claim(key):
                    del self._offering[key]
                    continue
                delay = min(delay * 2, CLAIMS_POLL_MAX_S)
                due = now + delay
                self._offering[key] = (due, delay)
            wait = min(wait, due - now)
        self.turn_due = bool(self._offering)
        return max(0.0, wait)

    def _answered(self, key: tuple[str, str] | None, ahead: Ahead) -> None:
        """An offer of function ``key`` was answered: once none is open and no idle instance may claim on its own,
        the looks at its records stop now, not at the end of the turn (a round trip's usual case)."""
        if key in self._offering and not ahead.offered and not self._idle_may_claim(key):
            del self._offering[key]
            self.turn_due = bool(self._offering)

    def _idle_may_claim(self, key: tuple[str, str]) -> bool:
        """Whether an idle instance of function ``key`` holds a run that is still pending (it may claim it)."""
        pool: Sequence[LokyInstance] = self.host.pools.get(key, ())  # type: ignore[assignment]
        return any(inst.state == IDLE and inst.event is None and self.may_claim(inst) for inst in pool)

    def close(self) -> None:
        for ahead in self.ahead.values():
            ahead.shared.close()

    # -- what the channels need ------------------------------------------------------------------------------
    @staticmethod
    def claims_ahead(inst: LokyInstance, revision: int) -> bool:
        """Whether ``inst`` may be sent runs ahead, to claim at the end of the event it runs (busy) or is
        about to run (idle, with an offer)."""
        return ((inst.state == BUSY and inst.event is not None or inst.state == IDLE and inst.offer is not None)
                and inst.conn is not None and not inst.settling and not inst.banned and inst.revision == revision)

    def has_pending(self, inst: LokyInstance) -> bool:
        """Whether events of ``inst``'s function wait, sent ahead (it may have claimed one of them)."""
        ahead = self.ahead.get(inst.key) if inst.key is not None else None
        return ahead is not None and bool(ahead.pending)

    def may_claim(self, inst: LokyInstance) -> bool:
        """Whether ``inst`` holds a run sent ahead that is still pending, so it may start it on its own."""
        ahead = self.ahead.get(inst.key) if inst.key is not None else None
        return ahead is not None and bool(ahead.pending) and inst.sent_upto >= ahead.pending[0][1]

    def orphaned(self, ahead: Ahead, ev: EventState, seq: int) -> bool:
        """Make ``ev`` pending again if the instance that claimed it is gone without saying so (True if so):
        its "done" naming the claim never came (a gone instance's socket is read to its end), and a worker
        starts a claimed event only after sending that "done", so the event never ran."""
        owner = (ahead.shared.started_by([seq]) or {}).get(seq)
        if owner is None or owner in self.live:
            return False
        return bool(ahead.shared.release(seq, owner))

    def _poke(self, inst: LokyInstance) -> None:
        inst.looking = True
        try:
            inst.conn.sendall(_POKE)
        except (OSError, ValueError):
            self.channels.broken(inst)

    def feed(self, inst: LokyInstance, ahead: Ahead, upto: int | None = None) -> None:
        """Send ``inst`` the pending runs that it does not hold yet, in order: a busy one as far as its socket's
        buffer surely takes them (it reads them at the end of its current event); an idle one every run up to
        its offer ``upto``, whatever their size (it reads them now)."""
        if ahead.seq <= inst.sent_upto:  # it holds them all (the common case, once per event)
            return
        frames = []
        unread = inst.unread_bytes
        for ev, seq, frame in ahead.pending:
            if seq <= inst.sent_upto or ev.fn.revision != inst.revision:
                continue
            if upto is not None:
                if seq > upto:
                    break
            elif len(inst.unread) >= UNREAD_MAX_RUNS or unread + len(frame) > UNREAD_MAX_BYTES:
                break
            frames.append(frame)
            inst.unread.append(len(frame))
            unread += len(frame)
            inst.sent_upto = seq
        inst.unread_bytes = unread
        if frames:
            inst.looking = True
            try:
                inst.conn.sendall(b"".join(frames) if len(frames) > 1 else frames[0])
            except (OSError, ValueError):  # it is gone: nothing it was sent can be claimed by it any more
                self.channels.broken(inst)

    def feed_all(self, inst: LokyInstance) -> None:
        """``inst`` runs an event it claimed: it must hold every pending run before it may claim one at its end."""
        self.feed(inst, self.ahead[inst.key])  # type: ignore[index]

    def read_up_to(self, inst: LokyInstance, received: int) -> None:
        """The worker had read ``received`` runs sent ahead when it sent its "done": they left its socket."""
        for _ in range(received - inst.acked):
            if inst.unread:
                inst.unread_bytes -= inst.unread.popleft()
        inst.acked = received

    def on_read(self, inst: LokyInstance, received: int) -> None:
        """The idle ``inst`` read the runs it was offered and claimed none (others took them first, they were
        taken back, or it is banned)."""
        self.read_up_to(inst, received)
        ahead = self.ahead.get(inst.key) if inst.key is not None else None
        if ahead is not None and received >= inst.offer_at:
            ahead.unoffer(inst)
            self._answered(inst.key, ahead)
        if inst.state == IDLE:
            self.host.need_dispatch()

    def started(self, inst: LokyInstance, seq: int, claimed_at: float) -> None:
        """The idle ``inst`` claimed record ``seq`` (the records say so, or its "done" does): it runs that event
        from the moment of the claim."""
        ahead = self.ahead[inst.key]  # type: ignore[index]
        ahead.unoffer(inst)
        nxt = self.claimed(inst, seq)
        self._answered(inst.key, ahead)  # (before the engine offers more)
        if nxt is not None and self.host.started(inst, nxt, self.host.wall(claimed_at)):
            self.feed(inst, ahead)  # it must hold every pending run before it may claim one at its end

    def sync_claims(self, key: tuple[str, str] | None) -> bool:
        """Bind the events that idle instances of function ``key`` have claimed: a worker that claims while idle
        runs at once and says nothing until its "done" (the claim is in the records). False: the records
        could not be read now (a worker holds their lock), ask again shortly."""
        ahead = self.ahead.get(key) if key is not None else None
        if ahead is None or not ahead.pending:
            return True
        pool: Sequence[LokyInstance] = self.host.pools.get(key, ())  # type: ignore[arg-type, assignment]
        idle = {i.number: i for i in pool if i.event is None and i.sent_upto and i.state in (IDLE, DYING)}
        if not idle:
            return True
        claims = ahead.shared.claims([seq for _, seq, _ in ahead.pending])
        if claims is None:
            return False
        for seq in sorted(claims):
            owner, at = claims[seq]
            inst = idle.get(owner)
            if inst is not None and inst.event is None:
                self.started(inst, seq, at)
        return True

    def claimed(self, inst: LokyInstance, seq: int | None) -> EventState | None:
        """The event sent ahead that ``inst``'s worker says it claimed (as record ``seq``), taken off the pending
        ones."""
        if seq is None:
            return None
        ev = self.ahead[inst.key].take(seq)  # type: ignore[index]
        if ev is None:  # cannot be: a claimed record is never taken back
            log.error("scf_nb: instance %s claimed unknown record %s", inst.number, seq)
        return ev

    def release(self, inst: LokyInstance) -> None:
        """``inst`` is gone. An event sent ahead that it claimed without the engine ever reading its "done"
        (it died between the two) never ran (see ``orphaned``): it is pending again, for the instances still
        there, as is every other one."""
        ahead = self.ahead.get(inst.key) if inst.key is not None else None
        if ahead is None:
            return
        ahead.unoffer(inst)
        self.unban(inst)
        if not ahead.pending or inst.sent_upto == 0:
            return
        owners = ahead.shared.started_by([seq for _, seq, _ in ahead.pending])
        if owners is None:  # cannot ask now: the next look at the records after a revoke fails decides
            return
        for _ev, seq, _ in list(ahead.pending):
            if owners.get(seq) == inst.number:
                ahead.shared.release(seq, inst.number)  # no lock now: the next look at it releases it
        self.host.need_dispatch()
