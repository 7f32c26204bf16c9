"""Bystander events for the terminate benchmarks: a second function whose events run while another event is
terminated. Afterwards every one must be FINISHED with its result and every line it printed, served by the
same instances (none restarted)."""

from __future__ import annotations

import time
from typing import Any

BYSTANDER_CODE = """
import time
def main_handler(event, context):
    for i in range(event["lines"]):
        print("bystander", event["i"], "line", i)
    time.sleep(event["sleep"])
    return event["i"]
"""


class Bystanders:
    def __init__(self, lines: int = 5, sleep: float = 0.04, concurrency: int = 1) -> None:
        import scf_nb

        self.lines, self.sleep = lines, sleep
        self.events: list[Any] = []
        scf_nb.create_function("bystander", BYSTANDER_CODE, async_run=True, concurrency=concurrency)
        self.invoke(2)
        for ev in self.events:
            ev.wait(60)
        self.events.clear()

    def invoke(self, n: int) -> None:
        import scf_nb

        for _ in range(n):
            i = len(self.events)
            self.events.append(scf_nb.invoke("bystander", {"i": i, "lines": self.lines, "sleep": self.sleep}))

    def check(self) -> dict[str, Any]:
        """Wait for every bystander; count those affected (not FINISHED, wrong result, lost lines)."""
        not_finished = wrong = lost = 0
        pids = set()
        for i, ev in enumerate(self.events):
            status = ev.wait(120)
            if status != "FINISHED":
                not_finished += 1
                continue
            if ev.result() != i:
                wrong += 1
            if len(ev.logs()) != self.lines:
                lost += 1
            pids.add(ev.info()["instance_pid"])
        return {"bystanders": len(self.events), "not_finished": not_finished, "wrong_result": wrong,
                "lost_lines": lost, "instance_pids": len(pids),
                "affected": not_finished + wrong + lost}


def wait_started(ev: Any, timeout: float = 60.0) -> None:
    """Until the handler has printed its first line (so it really is inside the handler)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(ev.logs()):
            return
        time.sleep(0.003)
    raise TimeoutError(f"{ev.request_id} did not start: {ev.info()}")
