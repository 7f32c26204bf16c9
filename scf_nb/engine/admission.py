"""Admission: what ``invoke`` checks before it accepts an event. A rejection leaves no record."""

from __future__ import annotations

import json
from typing import Any

from ..core.config import ASYNC_MAX_EVENT_BYTES, SYNC_MAX_EVENT_BYTES
from ..core.errors import ScfError, invalid


class TokenBucket:
    """``rate`` invocations a second, in bursts of up to one second's worth."""

    __slots__ = ("rate", "capacity", "tokens", "last")

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.capacity = max(1.0, self.rate)
        self.tokens = self.capacity
        self.last = 0.0

    def ready(self, now: float) -> bool:
        self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
        self.last = now
        return self.tokens >= 1.0


class Admission:
    def __init__(self, max_qps: float) -> None:
        self.total = TokenBucket(max_qps)
        self.per_function: dict[tuple[str, str], TokenBucket] = {}

    def admit(self, fn: Any, now: float) -> None:
        """Take one token from the global bucket and the function's; ``LimitExceeded`` if either is empty."""
        buckets = [self.total]
        if fn.qps_limit:
            bucket = self.per_function.get(fn.key)
            if bucket is None or bucket.rate != fn.qps_limit:
                bucket = self.per_function[fn.key] = TokenBucket(fn.qps_limit)
            buckets.append(bucket)
        for bucket in buckets:
            if not bucket.ready(now):
                which = "max_qps" if bucket is self.total else f"the qps_limit of {fn.name}"
                raise ScfError("LimitExceeded.Qps",
                               f"invocation rejected: over {which} ({bucket.rate:g}/s); no event was recorded")
        for bucket in buckets:
            bucket.tokens -= 1.0


def encode_event(event: Any, async_run: bool) -> str:
    """The event as JSON text within SCF's size limit (128 KB async, 6 MB sync)."""
    if event is None:
        return "{}"
    try:
        text = json.dumps(event, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise invalid("ClientContext", f"the event must be JSON data: {e}") from None
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    limit = ASYNC_MAX_EVENT_BYTES if async_run else SYNC_MAX_EVENT_BYTES
    if size > limit:
        kind = "async" if async_run else "sync"
        raise invalid("ClientContext", f"the event is {size} bytes; {kind} events may be at most {limit} bytes "
                                       f"({limit // 1024} KB)")
    return text
