"""Event statuses and the only transitions allowed between them.

QUEUED is ours (accepted, waiting for an instance); the other four are TencentCloud's.
A terminal status never changes again.
"""

from __future__ import annotations

from enum import Enum


class Status(str, Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    FAILED = "FAILED"
    ABORTED = "ABORTED"

    def __str__(self) -> str:
        return self.value

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_live(self) -> bool:
        return not self.is_terminal


TERMINAL = frozenset({Status.FINISHED, Status.FAILED, Status.ABORTED})
ALL = (Status.QUEUED, Status.RUNNING, Status.FINISHED, Status.FAILED, Status.ABORTED)

_NEXT = {
    Status.QUEUED: frozenset({Status.RUNNING, Status.FAILED, Status.ABORTED}),
    Status.RUNNING: frozenset({Status.FINISHED, Status.FAILED, Status.ABORTED}),
}


def can_move(old: Status, new: Status) -> bool:
    """Whether an event may go from ``old`` to ``new``: only forward, never out of a terminal status."""
    return new in _NEXT.get(old, frozenset())


def parse(value: str | Status) -> Status:
    """A status from its name (any case); a clear ValueError for anything else."""
    try:
        return Status(str(value).upper())
    except ValueError:
        names = ", ".join(s.value for s in ALL)
        raise ValueError(f"unknown status {value!r}: use one of {names}") from None
