"""Async invocations over REST at a steady rate against a real ``jupyter server`` subprocess (the scf_nb
extension hosting the engine), then a check that every accepted RequestId has its record.

    .venv/bin/python bench/rest_load.py [--rate 1000] [--seconds 30] [--threads 8] [--kill]

The server runs from this checkout, on a fresh home in a temp folder. A no-op async function is created;
``--threads`` client threads, each on its own keep-alive connection, send ``POST /scf/api/invoke`` (token
auth) on an open-loop schedule: request ``i`` is due at ``start + i / rate``, taken by the next free thread.
Latency is measured per request from the moment it is sent to its answer; ``late`` is how far behind its due
time a request was sent (the client could not keep up: the server answered too slowly or the machine was
busy), so a slow server cannot hide behind a client that waits for it. After the run the server is stopped
(SIGTERM; ``--kill``: SIGKILL under load instead, then a new engine on the same home recovers), and an
embedded engine on the same home lists every event: each accepted RequestId must be there.

``server_cores`` and ``server_cpu_us_per_call`` are the server process's CPU time during the load (all its
threads: HTTP, authentication, the engine, the store's writes; not the loky workers). Prints the figures and
exits 1 if an accepted RequestId has no record.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from load_support import Load, run_load  # noqa: E402  (shared with the fault tests)
from server_support import jupyter_server  # noqa: E402  (the tests' real-server fixture)

import scf_nb  # noqa: E402

NOOP = "def main_handler(event, context):\n    return None\n"


def recorded(home: Path, accepted: list[str]) -> tuple[int, dict[str, int]]:
    """How many of ``accepted`` an embedded engine on ``home`` lists, and the events' counts by status."""
    scf_nb.configure(home=home)
    try:
        events = scf_nb.list_events(limit=None)
        ids = set(events.request_id)
        return sum(rid in ids for rid in accepted), events.status.value_counts().to_dict()
    finally:
        scf_nb.shutdown()


def cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) the process has used so far, its threads together."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def figures(load: Load, elapsed: float) -> dict[str, Any]:
    done = load.latency[load.latency > 0]
    late = load.late[load.latency > 0]
    return {
        "sent": int(done.size), "seconds": round(elapsed, 2), "rate": round(done.size / elapsed, 1),
        "statuses": load.statuses, "errors": len(load.errors),
        "p50_ms": round(float(np.percentile(done, 50)), 2), "p99_ms": round(float(np.percentile(done, 99)), 2),
        "max_ms": round(float(done.max()), 2),
        "late_p50_ms": round(float(np.percentile(late, 50)), 2),
        "late_p99_ms": round(float(np.percentile(late, 99)), 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=1000.0, help="invocations per second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--threads", type=int, default=8, help="client threads, one keep-alive connection each")
    parser.add_argument("--kill", action="store_true", help="SIGKILL the server at the end instead of SIGTERM")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="scf_nb_rest_load_"))
    home = tmp / "home"
    load = Load(args.rate, args.seconds)
    with jupyter_server(tmp, home=home, env={"SCF_NB_MAX_QPS": str(max(1000.0, args.rate))}) as server:
        status, answer, _ = server.request("POST", "/scf/api/functions",
                                           {"name": "noop", "code": NOOP, "async_run": True})
        assert status == 200, answer
        status, answer, _ = server.request("POST", "/scf/api/invoke", {"function": "noop", "event": {}})
        assert status == 200, answer  # the first instance's cold start, outside the timings
        cpu = cpu_seconds(server.proc.pid)
        elapsed = run_load(server, load, args.threads)
        cpu = cpu_seconds(server.proc.pid) - cpu
        server.stop(signal.SIGKILL if args.kill else signal.SIGTERM)
    out = figures(load, elapsed)
    out.update(server_cores=round(cpu / elapsed, 2), server_cpu_us_per_call=round(cpu / max(1, out["sent"]) * 1e6))
    found, by_status = recorded(home, load.accepted)
    out.update(accepted=len(load.accepted), recorded=found, missing=len(load.accepted) - found, by_status=by_status)
    print(json.dumps(out, indent=1))
    for e in load.errors[:5]:
        print("error:", e)
    return 0 if found == len(load.accepted) else 1


if __name__ == "__main__":
    sys.exit(main())
