"""The event an ``invoke`` carries: JSON data within SCF's size limits. Checked where it is made, so the engine
and the HTTP client (which sends this text to a server) refuse the same events with the same error."""

from __future__ import annotations

import json
from typing import Any

from .config import ASYNC_MAX_EVENT_BYTES, SYNC_MAX_EVENT_BYTES
from .errors import invalid


def event_text(event: Any) -> str:
    """The event as JSON text (``None``: ``{}``); ``InvalidParameterValue.ClientContext`` if it is not JSON data."""
    if event is None:
        return "{}"
    try:
        return json.dumps(event, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise invalid("ClientContext", f"the event must be JSON data: {e}") from None


def encode_event(event: Any, async_run: bool) -> str:
    """The event as JSON text within SCF's size limit (128 KB async, 6 MB sync)."""
    if event is None:  # the common notebook call, ``invoke("fn")``: no JSON, no size to check
        return "{}"
    text = event_text(event)
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    limit = ASYNC_MAX_EVENT_BYTES if async_run else SYNC_MAX_EVENT_BYTES
    if size > limit:
        kind = "async" if async_run else "sync"
        raise invalid("ClientContext", f"the event is {size} bytes; {kind} events may be at most {limit} bytes "
                                       f"({limit // 1024} KB)")
    return text
