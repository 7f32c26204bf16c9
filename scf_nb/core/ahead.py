"""Sending events ahead: while every instance a function may have is busy, the FIFO's next events go to the busy
instances, and the first of them to finish its current event starts the oldest one (no round trip through the
engine in between).

Each event sent ahead goes to *every* busy instance of its function (revision), so whichever finishes first can
start the oldest waiting event: per function, events start in the order they were accepted, however long the
event before them runs on one instance. A shared file of records per function, changed only under ``flock``,
decides who starts what:

    engine: reserve(seq)        FREE/decided -> PENDING          (before sending the run)
    worker: claim_first(seqs)   the first PENDING of the runs it holds -> STARTED by it (at the end of an event)
    engine: revoke(seq)         PENDING -> REVOKED               (terminate while queued; an idle instance
                                                                  or room for a new one takes it over)
    engine: ban(owner)          that instance claims nothing more (before any kill of it)
    engine: release(seq, owner) STARTED by a gone owner -> PENDING (its "done" naming the claim never came,
                                                                  so it never ran the event)

A worker claims only at the end of one of its events, and always the lowest PENDING record of those it was sent
(the engine sends each instance the events sent ahead in order, with no gaps), so claims follow the FIFO. Before
the engine kills an instance it bans it (under the same lock), then reads the "done" messages of whatever it
had already claimed: the kill hits exactly what runs there, never an event sent ahead.
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import struct
import time

FREE, PENDING, STARTED, REVOKED = 0, 1, 2, 3
_RECORD = struct.Struct("=IIB3x")  # seq, owner (the instance's number), state
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

    def _get(self, seq: int) -> tuple[int, int, int]:
        return _RECORD.unpack_from(self.map, _BAN.size + (seq % RECORDS) * _RECORD.size)  # type: ignore[return-value]

    def _put(self, seq: int, owner: int, state: int) -> None:
        _RECORD.pack_into(self.map, _BAN.size + (seq % RECORDS) * _RECORD.size, seq, owner, state)

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
            old_seq, _owner, state = self._get(seq)
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
                old_seq, _owner, state = self._get(first + i)
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
            old_seq, _owner, state = self._get(seq)
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
            if self._get(seq) != (seq, owner, STARTED):
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
            return [s for s in seqs if self._get(s) == (s, owner, STARTED)]
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
        if not self._lock():
            return None
        try:
            found = {}
            for s in seqs:
                old_seq, owner, state = self._get(s)
                if old_seq == s and state == STARTED:
                    found[s] = owner
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
        self.claimed_at = 0.0

    def claim_first(self, seqs: list[int]) -> tuple[int | None, int]:
        """Start the first of ``seqs`` (in the order sent) that is still PENDING, unless this instance is banned.

        Returns:
            (its index in ``seqs`` or None, how many of ``seqs`` before it are decided and can be dropped: all
            of them when none was claimed, none when banned). ``claimed_at`` is then the time of the claim
            (read in the lock: claims and take-overs of the function's events are in FIFO order, and so are
            their start times).
        """
        for _ in range(64):  # the lock is held for a few instructions: yield the core to its holder, no sleep
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                os.sched_yield()
        else:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            if self.owner in self._banned():
                return None, 0
            get = self._get
            for i, s in enumerate(seqs):
                found, _owner, state = get(s)
                if found == s and state == PENDING:
                    self._put(s, self.owner, STARTED)
                    self.claimed_at = time.time()
                    return i, i
            return None, len(seqs)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
