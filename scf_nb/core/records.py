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

# Random bits from a seeded generator, not os.urandom: urandom lets the GIL go mid-invoke (another thread cuts
# in: p99 126 -> 23 us without it).
_rng = random.Random(os.urandom(32))
_ID_DIGITS = [i for i in range(36) if i not in (8, 13, 18, 23)]  # where a RequestId's hex digits go


def make_request_ids(first: int, n: int) -> list[tuple[int, str]]:
    """Keys ``first .. first + n - 1``, each with its RequestId: UUID-shaped (version 4, RFC 4122 variant), its
    first 48 bits the key, so the store finds an event by a cheap integer range instead of an index on strings;
    random after that. Made all at once with numpy (0.33 us an id for 1024, against ~1.1 us one at a time)."""
    import numpy as np

    raw = np.empty((n, 16), dtype=np.uint8)
    raw[:, :6] = np.arange(first, first + n, dtype=">u8").view(np.uint8).reshape(n, 8)[:, 2:]
    raw[:, 6:] = np.frombuffer(_rng.randbytes(10 * n), dtype=np.uint8).reshape(n, 10)
    raw[:, 6] = raw[:, 6] & 0x0F | 0x40
    raw[:, 8] = raw[:, 8] & 0x3F | 0x80
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, _ID_DIGITS] = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[
        np.stack((raw >> 4, raw & 0x0F), axis=2).reshape(n, 32)]
    ids = text.tobytes().decode("ascii")
    return list(zip(range(first, first + n), [ids[i:i + 36] for i in range(0, 36 * n, 36)], strict=True))


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
    """The RequestId of event ``key``, the same form as :func:`make_request_ids` gives (one at a time, ~3 us,
    without numpy; the engine takes them from :class:`RequestIds`)."""
    if not 0 <= key < 1 << 48:
        raise ValueError(f"an event key is 0 .. 2**48 - 1, not {key}")
    raw = bytearray(key.to_bytes(6, "big") + _rng.randbytes(10))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class RequestIds:
    """Event keys from ``first`` on, each with its RequestId, made ``BATCH`` at a time (the first batch at once).
    ``take`` (any thread) is one ``popleft`` on the invoke path instead of a key, a format and a tail: 5-6 of a
    cold ``invoke``'s ~60 us; the batch, ~340 us, falls on one call in 1024, beyond the p99 of a burst
    (bench/README.md, 2026-12-03). Keys made but not handed out die with the process; the next engine starts
    after the highest key its store holds, so it may make them again (no RequestId anyone saw is reused)."""

    BATCH = 1024

    def __init__(self, first: int) -> None:
        self._next = first
        self._ready: deque[tuple[int, str]] = deque()
        self._lock = threading.Lock()
        self._refill()

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
                self._ready.extend(make_request_ids(first, self.BATCH))


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
