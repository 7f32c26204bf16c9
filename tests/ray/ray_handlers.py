"""Handler code for the Ray backend's tests: it reports its Ray node and process, keeps a warm counter, writes
from a child process, and waits on gate files, raises, sleeps, spins in C or starts processes when asked."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from conftest import GATE, pid_alive, wait_until

HANDLER = GATE + r'''
import json, os, subprocess, sys, time
import ray

CALLS = 0
print("cold start", os.getpid(), flush=True)

def main_handler(event, context):
    global CALLS
    CALLS += 1
    event = event or {}
    node = ray.get_runtime_context().get_node_id()
    print("running", event.get("n"), node, flush=True)
    if event.get("child"):
        says = "import os; os.write(1, b'child says hi\\n'); os.write(2, b'child err\\n')"
        subprocess.run([sys.executable, "-c", says])
    if event.get("spawn"):  # a child in our group, and a grandchild in a session of its own
        child = subprocess.Popen(["sleep", "300"])
        out = event["spawn"] + ".gc"
        subprocess.run(["sh", "-c", f"sleep 301 & echo $! > {out}"], start_new_session=True)
        wait_file(out)
        grandchild = int(open(out).read())
        touch(event["spawn"], json.dumps({"actor": os.getpid(), "child": child.pid, "grandchild": grandchild}))
    if event.get("graceful"):
        try:
            wait_file(event["gate"], 120)
        finally:
            print("cleaning up", flush=True)
    if event.get("started"):
        touch(event["started"])
    if event.get("gate"):
        wait_file(event["gate"], 120)
    if event.get("spin"):  # a C call that holds the GIL for long
        sum(range(10 ** 11))
    if event.get("fail"):
        raise ValueError(f"bad input {event.get('n')}")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return {"n": event.get("n"), "node": node, "pid": os.getpid(), "calls": CALLS}
'''


def pids_of(path: Path) -> dict[str, int]:
    """The processes a ``spawn`` event started (written once they all run)."""
    wait_until(path.exists, 60, f"{path} to be written")
    return dict(json.loads(path.read_text()))


def all_dead(pids: Any, timeout: float = 30.0) -> None:
    wait_until(lambda: not any(pid_alive(p) for p in pids), timeout, f"processes {list(pids)} to die")


def lines(ev: Any) -> list[str]:
    return list(ev.logs()["line"])


def touch(path: Path) -> None:
    path.write_text("")
