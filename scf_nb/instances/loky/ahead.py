"""Every event starts by a worker's claim: the engine offers an event (as a pending record) to one idle instance
and sends it ahead to the busy ones, and whichever claims it first runs it (no round trip through the engine
between one event and the next, and an idle instance that is slow to wake, or dead, holds up nothing).

Events go to every busy instance of their function (revision), so whichever finishes first can start the oldest
waiting event: per function, events start in the order they were accepted, however long the event before them
runs on one instance. A shared file of records per function, changed only under ``flock``, decides who starts
what:

    engine: reserve(seq)        FREE/decided -> PENDING          (before sending the run)
    worker: claim_first(seqs)   the first PENDING of the runs it holds -> STARTED by it, with the time
                                (at the end of an event; idle: when runs come)
    engine: revoke(seq)         PENDING -> REVOKED               (terminate while queued; the engine stops)
    engine: ban(owner)          that instance claims nothing more (before any kill of it)
    engine: release(seq, owner) STARTED by a gone owner -> PENDING (its "done" naming the claim never came,
                                                                  so it never ran the event)

A worker always claims the lowest PENDING record of those it was sent (the engine sends each instance the
pending runs in order, with no gaps), so claims follow the FIFO, and so do their times (read in the lock). A
claim at the end of an event is named in that event's "done" (sent before the claimed one starts); a claim by an
idle worker is told by nothing but the record (the engine reads the records when it must know: shortly after
an offer and for as long as an idle instance holds a pending run, before a kill, when output comes), so it costs
no message. Before the engine kills an instance it
bans it (under the same lock), then catches up on whatever it had already claimed: the kill hits exactly what
runs there, never an event sent ahead.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import struct
import time

FREE, PENDING, STARTED, REVOKED = 0, 1, 2, 3
_RECORD = struct.Struct("=IIB3xd")  # seq, owner (the instance's number), state, time.time() of the claim
_BANS = 32  # instances banned at once, at most (each is being killed)
_BAN = struct.Struct(f"={_BANS}I")
RECORDS = 256  # records in the ring; the engine keeps far fewer undecided (dispatch.PENDING_MAX)
_SIZE = _BAN.size + _RECORD.size * RECORDS
_LOCK_WAIT_S = 0.005  # a worker holds the lock for a few instructions; longer: it is stalled, ask later


def records_path(folder: str, name: str) -> str:
    """Where one function's records live: in the engine's socket folder."""
    return os.path.join(folder, f"{name}.ahead")


class _Records:
    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self.fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self.fd, _SIZE)
        self.map = mmap.mmap(self.fd, _SIZE)

    def _get(self, seq: int) -> tuple[int, int, int, float]:
        return _RECORD.unpack_from(self.map, _BAN.size + (seq % RECORDS) * _RECORD.size)

    def _put(self, seq: int, owner: int, state: int) -> None:
        _RECORD.pack_into(self.map, _BAN.size + (seq % RECORDS) * _RECORD.size, seq, owner, state, 0.0)

    def _banned(self) -> list[int]:
        return list(_BAN.unpack_from(self.map, 0))

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class Shared(_Records):
    """The engine's side, one per function."""

    def __init__(self, path: str) -> None:
        super().__init__(path, create=True)
        self.revoked_at = 0.0  # time.time() inside the lock of the last revoke that took an event back

    def _lock(self) -> bool:
        """The records' lock, without ever blocking the engine on a worker that stopped while holding it."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        deadline = time.monotonic() + _LOCK_WAIT_S
        for attempt in itertools.count():
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                if attempt < 8:
                    os.sched_yield()  # a worker holds it for a few instructions: let it finish
                else:
                    time.sleep(0.0002)
        return False

    def _unlock(self) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)

    def reserve(self, seq: int) -> bool:
        """Make ``seq``'s record PENDING; False if its record still holds an undecided event (or no lock)."""
        if not self._lock():
            return False
        try:
            old_seq, _owner, state, _at = self._get(seq)
            if state == PENDING and old_seq != seq:
                return False
            self._put(seq, 0, PENDING)
            return True
        finally:
            self._unlock()

    def reserve_many(self, first: int, n: int) -> int:
        """``reserve`` ``first``, ``first + 1``, ... in one take of the lock; returns how many it made PENDING
        (it stops at the first record that still holds an undecided event)."""
        if not self._lock():
            return 0
        try:
            for i in range(n):
                old_seq, _owner, state, _at = self._get(first + i)
                if state == PENDING and old_seq != first + i:
                    return i
                self._put(first + i, 0, PENDING)
            return n
        finally:
            self._unlock()

    def revoke(self, seq: int) -> bool | None:
        """Take ``seq`` back: True if no worker started it (none ever will), False if one has, None if the
        workers could not be asked (one holds the lock: stalled or stopped in the middle of a claim)."""
        if not self._lock():
            return None
        try:
            old_seq, _owner, state, _at = self._get(seq)
            if old_seq != seq or state != PENDING:
                return state == REVOKED and old_seq == seq
            self._put(seq, 0, REVOKED)
            self.revoked_at = time.time()  # in the lock: before any later claim's time
            return True
        finally:
            self._unlock()

    def release(self, seq: int, owner: int) -> bool | None:
        """``seq`` was claimed by ``owner``, which is gone without its "done" ever saying so: it never started the
        event (a worker runs a claimed event only after that "done" is sent), so it is PENDING again. True if
        it was released, False if the record says otherwise, None if the workers could not be asked."""
        if not self._lock():
            return None
        try:
            if self._get(seq)[:3] != (seq, owner, STARTED):
                return False
            self._put(seq, 0, PENDING)
            return True
        finally:
            self._unlock()

    def ban(self, owner: int, seqs: list[int]) -> list[int] | None:
        """From now on instance ``owner`` claims nothing; returns which of ``seqs`` it has started already
        (None: the lock could not be had, or too many instances are banned at once: ask again later)."""
        if not self._lock():
            return None
        try:
            bans = self._banned()
            if owner not in bans:
                if 0 not in bans:
                    return None
                bans[bans.index(0)] = owner
                _BAN.pack_into(self.map, 0, *bans)
            return [s for s in seqs if self._get(s)[:3] == (s, owner, STARTED)]
        finally:
            self._unlock()

    def unban(self, owner: int) -> bool:
        """``owner`` may claim again (it is idle, or gone); False: the lock could not be had, ask again."""
        if not self._lock():
            return False
        try:
            bans = [0 if b == owner else b for b in self._banned()]
            _BAN.pack_into(self.map, 0, *bans)
            return True
        finally:
            self._unlock()

    def started_by(self, seqs: list[int]) -> dict[int, int] | None:
        """The owner of each of ``seqs`` that a worker has started (None: no lock)."""
        claims = self.claims(seqs)
        return None if claims is None else {s: owner for s, (owner, _at) in claims.items()}

    def claims(self, seqs: list[int]) -> dict[int, tuple[int, float]] | None:
        """Owner and time of the claim of each of ``seqs`` that a worker has started (None: no lock)."""
        if not self._lock():
            return None
        try:
            found = {}
            for s in seqs:
                old_seq, owner, state, at = self._get(s)
                if old_seq == s and state == STARTED:
                    found[s] = (owner, at)
            return found
        finally:
            self._unlock()

    def remove(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Claims(_Records):
    """A worker's side: the records of the function it serves."""

    def __init__(self, path: str, owner: int) -> None:
        super().__init__(path, create=False)
        self.owner = owner
        self._me = struct.pack("=I", owner)
        self.claimed_at = 0.0

    def claim_first(self, seqs: list[int]) -> tuple[int | None, int]:
        """Start the first of ``seqs`` (in the order sent) that is still PENDING, unless this instance is banned.

        Returns:
            (its index in ``seqs`` or None, how many of ``seqs`` before it are decided and can be dropped: all
            of them when none was claimed, none when banned). ``claimed_at`` is then the time of the claim
            (read in the lock: claims and take-overs of the function's events are in FIFO order, and so are
            their start times).
        """
        # Everything that can be is computed before the lock: a holder that loses its core stalls every
        # instance of the function, so the locked part is a few comparisons of bytes.
        size, first = _RECORD.size, _BAN.size
        pack = _RECORD.pack
        spots = [(first + (s % RECORDS) * size, pack(s, 0, PENDING, 0.0), s) for s in seqs]
        me, m = self._me, self.map
        for _ in range(64):  # the lock is held for a few instructions: yield the core to its holder, no sleep
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                os.sched_yield()
        else:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            at = m.find(me, 0, first)
            while at >= 0 and at % 4:  # a match across two entries of the ban table is no ban
                at = m.find(me, at + 1, first)
            if at >= 0:
                return None, 0
            for i, (off, pending, s) in enumerate(spots):
                if m[off:off + size] == pending:
                    self.claimed_at = now = time.time()  # in the lock: claims are in FIFO order, and so are their times
                    m[off:off + size] = pack(s, self.owner, STARTED, now)
                    return i, i
            return None, len(seqs)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
