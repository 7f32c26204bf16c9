"""Load and faults of the engine a real ``jupyter server`` hosts (issue 10): async invocations over REST at 200/s,
every accepted RequestId recorded; then a ``kill -9`` of the server under that load and a new server on the same
home: every accepted RequestId is still there, the events the dead server was running are FAILED saying its
engine stopped, and the lines they printed before the kill are in their logs. Every process started is stopped."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from conftest import wait_until
from load_support import Load, run_load, start_load
from server_support import Server, jupyter_server, leftovers

NOOP = "def main_handler(event, context):\n    return None\n"
# Prints its lines, then blocks until the server dies (its instance dies with it).
STUCK = '''
import time
def main_handler(event, context):
    for i in range(3):
        print("line", i, flush=True)
    time.sleep(600)
'''


def ok(server: Server, method: str, path: str, body: Any = None) -> Any:
    status, answer, _ = server.request(method, path, body)
    assert status == 200, (method, path, answer)
    return answer


def recorded(server: Server) -> dict[str, str]:
    """RequestId -> status of every event the server's store holds."""
    frame = ok(server, "GET", "/scf/api/events?limit=null&total=false")["events"]
    rid, status = frame["columns"].index("request_id"), frame["columns"].index("status")
    return {row[rid]: row[status] for row in frame["data"]}


def lines(server: Server, rid: str) -> list[str]:
    frame = ok(server, "GET", f"/scf/api/events/{rid}/logs")["logs"]
    at = frame["columns"].index("line")
    return [row[at] for row in frame["data"]]


def setup(server: Server) -> None:
    ok(server, "POST", "/scf/api/functions", {"name": "noop", "code": NOOP, "async_run": True})
    ok(server, "POST", "/scf/api/functions", {"name": "stuck", "code": STUCK, "async_run": True, "concurrency": 2})
    ok(server, "POST", "/scf/api/invoke", {"function": "noop"})  # its cold start before the load


def test_every_request_id_accepted_over_rest_at_200_per_s_is_recorded(tmp_path: Path) -> None:
    with jupyter_server(tmp_path, home=tmp_path / "home") as server:
        setup(server)
        load = Load(200, 3)
        run_load(server, load, threads=4)
        assert load.statuses == {200: 600} and not load.errors
        ids = recorded(server)
        assert set(load.accepted) <= set(ids)
        wait_until(lambda: all(s == "FINISHED" for s in recorded(server).values()), 60, "every event to finish")
    wait_until(lambda: leftovers(server) == [], 30, "every process of the server to be gone")


def test_kill_9_under_load_loses_no_accepted_request_id(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with jupyter_server(tmp_path / "first", home=home) as server:
        setup(server)
        stuck = [ok(server, "POST", "/scf/api/invoke", {"function": "stuck"})["request_id"] for _ in range(2)]
        for rid in stuck:
            wait_until(lambda rid=rid: len(lines(server, rid)) == 3, 60, "the stuck events' lines")
        load = Load(200, 3, stop_on_error=True)
        runner = start_load(server, load, threads=4)
        wait_until(lambda: len(load.accepted) >= 200, 30, "200 accepted invocations")
        server.stop(signal.SIGKILL)
        runner.join(60)
        accepted = load.accepted[:]
        assert 200 <= len(accepted) < 600 and load.errors  # killed under load
        wait_until(lambda: leftovers(server) == [], 30, "the dead server's instances to die with it")

    with jupyter_server(tmp_path / "second", home=home) as again:
        ids = recorded(again)
        missing = [rid for rid in accepted if rid not in ids]
        assert not missing, f"{len(missing)} of {len(accepted)} accepted RequestIds have no record"
        assert not [s for s in ids.values() if s not in ("FINISHED", "FAILED")]
        for rid in stuck:
            info = ok(again, "GET", f"/scf/api/events/{rid}")["info"]
            assert info["status"] == "FAILED" and info["error_type"] == "EngineLost", info
            assert "engine running this event stopped" in info["error_message"]
            assert lines(again, rid) == ["line 0", "line 1", "line 2"]
    wait_until(lambda: leftovers(again) == [], 30, "every process of the second server to be gone")
