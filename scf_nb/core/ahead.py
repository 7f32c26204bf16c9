"""Sending an event ahead: while every instance a function may have is busy, the FIFO's next event goes to a busy
instance, which starts it the moment its current event returns (no round trip through the engine in between).

The one hard part is a kill. The engine kills an instance to stop its current event (terminate, timeout, memory
limit, an exception's instance replacement); the event sent ahead must never die with it. So each instance has
a small shared file of records, one per event sent ahead, and both sides change a record only under ``flock``:

    engine: reserve(seq)  FREE/decided -> PENDING     (before sending the run)
    worker: claim(seq)    PENDING      -> STARTED     (before starting it; anything else: skip the run)
    engine: revoke(seq)   PENDING      -> REVOKED     (before any kill; fails once STARTED)

A revoked event goes back to the front of its FIFO (or ends ABORTED, if it was the one terminated). A failed
revoke means the worker has started it, so its current event has returned: its "done" is already readable and
the engine reads it before deciding anything (``Engine._settle``).
"""

from __future__ import annotations

import fcntl
import itertools
import mmap
import os
import struct
import time

FREE, PENDING, STARTED, REVOKED = 0, 1, 2, 3
_RECORD = struct.Struct("=IB3x")  # seq, state
_RECORDS = 16  # undecided records: at most those sent ahead (engine.AHEAD) plus the one just made current
_LOCK_WAIT_S = 0.005  # the worker holds the lock for a few instructions; longer: it is stalled, ask later


def slot_path(address: str, token: str) -> str:
    """Where an instance's records live: beside the engine's socket, named by the instance's token."""
    return os.path.join(os.path.dirname(address), f"{token}.slots")


class _Records:
    def __init__(self, path: str, create: bool) -> None:
        self.path = path
        flags = os.O_RDWR | (os.O_CREAT | os.O_TRUNC if create else 0)
        self.fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self.fd, _RECORD.size * _RECORDS)
        self.map = mmap.mmap(self.fd, _RECORD.size * _RECORDS)

    def _get(self, seq: int) -> tuple[int, int]:
        return _RECORD.unpack_from(self.map, (seq % _RECORDS) * _RECORD.size)  # type: ignore[return-value]

    def _put(self, seq: int, state: int) -> None:
        _RECORD.pack_into(self.map, (seq % _RECORDS) * _RECORD.size, seq, state)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class Slots(_Records):
    """The engine's side, one per instance."""

    def __init__(self, path: str) -> None:
        super().__init__(path, create=True)

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
                    os.sched_yield()  # the worker holds it for a few instructions: let it finish
                else:
                    time.sleep(0.0002)
        return False

    def reserve(self, seq: int) -> bool:
        """Make ``seq``'s record PENDING; False if its record still holds an undecided event."""
        if not self._lock():
            return False
        try:
            old_seq, state = self._get(seq)
            if state == PENDING and old_seq != seq:
                return False
            self._put(seq, PENDING)
            return True
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def revoke(self, seq: int) -> bool | None:
        """Take ``seq`` back: True if the worker had not started it (it never will), False if it has, None if
        the worker could not be asked (it holds the lock: stalled or stopped in the middle of a claim)."""
        if not self._lock():
            return None
        try:
            old_seq, state = self._get(seq)
            if old_seq != seq or state != PENDING:
                return state == REVOKED and old_seq == seq
            self._put(seq, REVOKED)
            return True
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)

    def remove(self) -> None:
        self.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Claims(_Records):
    """The worker's side."""

    def __init__(self, path: str) -> None:
        super().__init__(path, create=False)

    def claim(self, seq: int) -> bool:
        """True: start the event sent ahead as ``seq``; False: the engine took it back, skip it."""
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            old_seq, state = self._get(seq)
            if old_seq != seq or state != PENDING:
                return False
            self._put(seq, STARTED)
            return True
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
