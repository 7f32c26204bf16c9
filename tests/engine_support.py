"""Shared by the engine tests: a handler for most of them, and small helpers on top of the public API."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import wait_until

# Returns its pid and how many events this instance served; raises, sleeps or waits on a gate file when the
# event asks; appends its number to an "order" file; prints a line at cold start and one per event.
WORKER = r'''
import os, time
print("cold start", os.getpid(), flush=True)
CALLS = 0

def main_handler(event, context):
    global CALLS
    CALLS += 1
    event = event or {}
    print("running", event.get("n"), os.getpid(), flush=True)
    if "order" in event:
        with open(event["order"], "a") as f:
            f.write(f"{event['n']}\n")
    gate = event.get("gate")
    while gate and not os.path.exists(gate):
        time.sleep(0.01)
    if event.get("fail"):
        raise ValueError(f"bad input {event['n']}")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"n": event.get("n"), "pid": os.getpid(), "calls": CALLS}
'''


def lines(ev: Any) -> list[str]:
    return ev.logs()["line"].tolist()


def wait_line(ev: Any, prefix: str, timeout: float = 30.0) -> str:
    """Wait until ``ev`` logged a line starting with ``prefix``; return that line."""

    def found() -> str | None:
        return next((line for line in lines(ev) if line.startswith(prefix)), None)

    return wait_until(found, timeout, f"{ev.request_id} to log {prefix!r}")  # type: ignore[return-value]


def code_of(call: Any) -> str:
    """The ``ScfError`` code that ``call()`` raises (fails the test if it raises none)."""
    import scf_nb

    with pytest.raises(scf_nb.ScfError) as err:
        call()
    return err.value.code


def events_of(scf: Any, name: str) -> list[str]:
    return scf.list_events(name, limit=None)["request_id"].tolist()
