"""The in-memory record of one event: what the engine changes and the store's writer copies to disk."""

from __future__ import annotations

import math
import os
import random
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from .status import Status

if TYPE_CHECKING:
    from ..instances.backend import Instance
    from .functions import Function

# uuid4's os.urandom releases the GIL mid-invoke (another thread cuts in: p99 126 -> 23 us without it), and
# random bits are cheaper made 512 at a time than one id at a time.
_rng = random.Random(os.urandom(32))
_tails: list[str] = []
_VARIANT = {h: "89ab"[int(h, 16) & 3] for h in "0123456789abcdef"}  # RFC 4122 variant bits


def _tail() -> str:
    """The last three groups of a RequestId, ``-4xxx-Vxxx-xxxxxxxxxxxx``, random but for the version and variant."""
    while True:  # (any thread: a pop that finds the list emptied by another one makes more)
        try:
            return _tails.pop()
        except IndexError:
            bits = f"{_rng.getrandbits(80 * 512):0{20 * 512}x}"
            _tails.extend(f"-4{t[1:4]}-{_VARIANT[t[4]]}{t[5:8]}-{t[8:20]}"
                          for t in (bits[i:i + 20] for i in range(0, len(bits), 20)))

# The order of the events table's columns; ``EventState.row`` follows it. New columns go at the end: an older
# store gets them by ALTER TABLE (store.MIGRATIONS), which appends.
EVENT_COLUMNS = (
    "event_key", "request_id", "function_name", "namespace", "qualifier", "invoke_type", "status", "traced",
    "start_time", "run_time", "end_time", "duration_ms", "billed_duration_ms", "mem_usage_bytes", "result",
    "error_type", "error_message", "error_traceback", "exit_reason", "payload", "instance_pid",
    "init_duration_ms", "result_pickle",
)
MUTABLE_COLUMNS = EVENT_COLUMNS[6:7] + EVENT_COLUMNS[9:19] + EVENT_COLUMNS[20:]


def make_request_id(key: int) -> str:
    """A UUID-shaped RequestId whose first 48 bits are the event's integer key (random after that), so the
    store finds an event by a cheap integer range instead of an index on strings."""
    return f"{key >> 16 & 0xFFFFFFFF:08x}-{key & 0xFFFF:04x}{_tail()}"


class RequestIds:
    """Event keys from ``first`` on, each with its RequestId, made ``BATCH`` at a time. ``take`` (any thread) is
    one ``popleft`` on the invoke path instead of a key, a format and a tail: 5-6 of a cold ``invoke``'s ~60 us
    (bench/README.md, 2026-12-03). Keys made but not handed out die with the process; the next engine starts
    after the highest key its store holds, so it may make them again (no RequestId anyone saw is reused)."""

    BATCH = 256

    def __init__(self, first: int) -> None:
        self._next = first
        self._ready: deque[tuple[int, str]] = deque()
        self._lock = threading.Lock()

    def take(self) -> tuple[int, str]:
        while True:
            try:
                return self._ready.popleft()
            except IndexError:
                self._refill()

    def _refill(self) -> None:
        with self._lock:
            if not self._ready:  # (another thread may have refilled it meanwhile)
                first = self._next
                self._next = first + self.BATCH
                self._ready.extend([(key, make_request_id(key)) for key in range(first, self._next)])


def key_of(request_id: Any) -> int | None:
    """The integer key in a RequestId of ours, or None for anything else."""
    if not isinstance(request_id, str) or len(request_id) != 36 or request_id[8] != "-" or request_id[13] != "-":
        return None
    try:
        return int(request_id[:8] + request_id[9:13], 16)
    except ValueError:
        return None


class EventState:
    """One event as the engine sees it. Only the engine thread changes it, under the store's lock."""

    __slots__ = (
        "key", "request_id", "function_name", "namespace", "qualifier", "invoke_type", "status", "traced",
        "start_time", "run_time", "end_time", "duration_ms", "billed_duration_ms", "mem_usage_bytes", "result",
        "error_type", "error_message", "error_traceback", "exit_reason", "payload", "instance_pid",
        "init_duration_ms", "result_pickle", "fn", "log_seq", "inserted", "instance", "accepted",
    )
    # None until the event runs or ends
    run_time: float | None
    end_time: float | None
    duration_ms: float | None
    billed_duration_ms: int | None
    mem_usage_bytes: int | None
    result: str | None  # its JSON text
    error_type: str | None
    error_message: str | None
    error_traceback: str | None
    exit_reason: str | None
    instance_pid: int | None
    init_duration_ms: float | None
    result_pickle: bytes | None
    instance: Instance | None

    def __init__(self, key: int, request_id: str, fn: Function, qualifier: str, payload: str, now: float) -> None:
        self.key = key
        self.request_id = request_id
        self.fn = fn
        self.function_name = fn.name
        self.namespace = fn.namespace
        self.qualifier = qualifier
        self.invoke_type = fn.invoke_type
        self.traced = fn.trace
        self.status = Status.QUEUED
        self.start_time = now
        self.payload = payload
        self.run_time = self.end_time = self.duration_ms = None
        self.billed_duration_ms = self.mem_usage_bytes = self.result = None
        self.error_type = self.error_message = self.error_traceback = self.exit_reason = None
        self.instance_pid = self.init_duration_ms = self.result_pickle = None
        self.log_seq = 0
        self.inserted = False
        self.instance = None
        self.accepted = time.monotonic()

    def row(self) -> tuple[Any, ...]:
        return (
            self.key, self.request_id, self.function_name, self.namespace, self.qualifier, self.invoke_type,
            self.status.value, self.traced, self.start_time, self.run_time, self.end_time, self.duration_ms,
            self.billed_duration_ms, self.mem_usage_bytes, self.result, self.error_type, self.error_message,
            self.error_traceback, self.exit_reason, self.payload, self.instance_pid, self.init_duration_ms,
            self.result_pickle,
        )

    def update_row(self) -> tuple[Any, ...]:
        return (
            self.key, self.status.value, self.run_time, self.end_time, self.duration_ms, self.billed_duration_ms,
            self.mem_usage_bytes, self.result, self.error_type, self.error_message, self.error_traceback,
            self.exit_reason, self.instance_pid, self.init_duration_ms, self.result_pickle,
        )

    def end(self, status: Status, now: float, duration_ms: float | None = None, **fields: Any) -> None:
        """Make the event terminal with its end time, durations and outcome fields."""
        self.status = status
        self.end_time = now
        if duration_ms is None:
            duration_ms = (now - (self.run_time or now)) * 1000.0
        self.duration_ms = duration_ms
        self.billed_duration_ms = int(math.ceil(duration_ms)) if duration_ms else 0
        for name, value in fields.items():
            setattr(self, name, value)
