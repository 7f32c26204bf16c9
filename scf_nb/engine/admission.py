"""Admission: what ``invoke`` checks before it accepts an event. A rejection leaves no record."""

from __future__ import annotations

from typing import Any

from ..core.errors import ScfError
from ..core.payload import encode_event as encode_event  # the check of the event, shared with the HTTP client


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
        total = self.total
        if not total.ready(now):
            raise _over(total, "max_qps")
        if fn.qps_limit:
            bucket = self.per_function.get(fn.key)
            if bucket is None or bucket.rate != fn.qps_limit:
                bucket = self.per_function[fn.key] = TokenBucket(fn.qps_limit)
            if not bucket.ready(now):
                raise _over(bucket, f"the qps_limit of {fn.name}")
            bucket.tokens -= 1.0
        total.tokens -= 1.0


def _over(bucket: TokenBucket, which: str) -> ScfError:
    return ScfError("LimitExceeded.Qps",
                    f"invocation rejected: over {which} ({bucket.rate:g}/s); no event was recorded")
