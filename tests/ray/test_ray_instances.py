"""The Ray backend on a real two-node cluster: events run on both nodes, warm state, every line (a child's
too), exceptions and timeouts as on loky, what the engine says about itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from ray_handlers import HANDLER, lines, touch


def test_events_run_on_both_nodes_and_keep_warm_state(ray_scf: Any, tmp_path: Path) -> None:
    import ray

    ray_scf.create_function("f", HANDLER, async_run=True, concurrency=2)
    gate = tmp_path / "gate"
    first = [ray_scf.invoke("f", {"n": i, "gate": str(gate), "started": str(tmp_path / f"s{i}")}) for i in (0, 1)]
    # both run at once: two actors with 1 CPU each on two 1-CPU nodes, one per node
    wait_until(lambda: all((tmp_path / f"s{i}").exists() for i in (0, 1)), 60, "both events to run")
    assert [ev.status for ev in first] == ["RUNNING", "RUNNING"]
    touch(gate)
    results = [ev.result(timeout=60) for ev in first]
    nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert {r["node"] for r in results} == nodes and len(nodes) == 2
    assert len({r["pid"] for r in results}) == 2
    # warm: later events reuse the actors, whose module state (a counter) is kept
    later = [ray_scf.invoke("f", {"n": i}).result(timeout=60) for i in range(2, 6)]
    assert {r["pid"] for r in later} <= {r["pid"] for r in results}
    assert max(r["calls"] for r in later) >= 3
    info = ray_scf.get_event(first[0].request_id).info()
    assert info["instance_pid"] == results[0]["pid"]


def test_logs_of_the_handler_and_its_child_process(ray_scf: Any) -> None:
    ray_scf.create_function("f", HANDLER, async_run=True)
    ev = ray_scf.invoke("f", {"n": 1, "child": True})
    ev.result(timeout=60)
    got = ev.logs()
    assert got["line"].tolist()[0].startswith("cold start")
    assert "child says hi" in got[got["stream"] == "stdout"]["line"].tolist()
    assert "child err" in got[got["stream"] == "stderr"]["line"].tolist()
    second = ray_scf.invoke("f", {"n": 2})
    second.result(timeout=60)
    assert [line.split()[:2] for line in lines(second)] == [["running", "2"]]  # no cold start, nothing of the first


def test_an_exception_fails_the_event_and_replaces_the_actor(ray_scf: Any) -> None:
    ray_scf.create_function("f", HANDLER, async_run=True)
    ok = ray_scf.invoke("f", {"n": 1}).result(timeout=60)
    bad = ray_scf.invoke("f", {"n": 2, "fail": True})
    assert bad.wait(timeout=60) == "FAILED"
    info = bad.info()
    assert (info["error_type"], info["error_message"]) == ("ValueError", "bad input 2")
    assert "raise ValueError" in info["error_traceback"]
    assert info["exit_reason"] == "the handler raised; instance replaced"
    after = ray_scf.invoke("f", {"n": 3}).result(timeout=60)
    assert after["pid"] != ok["pid"] and after["calls"] == 1


def test_a_timeout_fails_the_event(ray_scf: Any) -> None:
    ray_scf.create_function("f", HANDLER, async_run=True, timeout=1)
    ev = ray_scf.invoke("f", {"n": 1, "sleep": 30})
    assert ev.wait(timeout=60) == "FAILED"
    info = ev.info()
    assert (info["error_type"], info["error_message"], info["exit_reason"]) == (
        "TimeoutError", "timed out after 1 s", "timeout")
    assert ray_scf.invoke("f", {"n": 2}).result(timeout=60)["n"] == 2


def test_fifo_beyond_concurrency(ray_scf: Any, tmp_path: Path) -> None:
    ray_scf.create_function("f", HANDLER, async_run=True, concurrency=1)
    gate = tmp_path / "gate"
    first = ray_scf.invoke("f", {"n": 0, "gate": str(gate)})
    rest = [ray_scf.invoke("f", {"n": i}) for i in range(1, 5)]
    wait_until(lambda: first.status == "RUNNING", 60, "the first event to run")
    assert {ev.status for ev in rest} == {"QUEUED"}
    touch(gate)
    ray_scf.wait([first, *rest], timeout=60)
    starts = [ev.info()["run_time"] for ev in rest]
    assert starts == sorted(starts)
    assert {ev.result()["pid"] for ev in [first, *rest]} == {first.result()["pid"]}


def test_the_engine_describes_its_backend(ray_scf: Any, ray_cluster: Any) -> None:
    engine = ray_scf.api.client().engine
    info = engine.describe()
    assert info["backend"] == "ray" and info["nodes"] == 2
    assert info["ray_address"] == ray_cluster.address
    assert info["engine_address"].startswith("127.0.0.1:")


LEAVES = '''
import subprocess, sys
def main_handler(event, context):
    if event.get("leave"):  # a process that outlives the event and writes after it ended
        subprocess.Popen(["sh", "-c", "sleep 1; echo late line"])
    print("event", event.get("n"), flush=True)
    return event.get("n")
'''


def test_a_process_left_behind_writes_to_its_own_event(ray_scf: Any) -> None:
    ray_scf.create_function("f", LEAVES, async_run=True, concurrency=1)
    first = ray_scf.invoke("f", {"n": 1, "leave": True})
    assert first.result(timeout=60) == 1
    second = ray_scf.invoke("f", {"n": 2})
    assert second.result(timeout=60) == 2
    wait_until(lambda: "late line" in lines(first), 30, "the leftover's line in the first event's log")
    assert lines(second) == ["event 2"]


HUNGRY = '''
import time
def main_handler(event, context):
    data = bytearray(400 << 20)
    for i in range(0, len(data), 4096):
        data[i] = 1
    time.sleep(30)
'''


def test_memory_limit_on_ray(ray_scf: Any) -> None:
    ray_scf.create_function("f", HUNGRY, async_run=True, memory_mb=200)
    ev = ray_scf.invoke("f")
    assert ev.wait(timeout=60) == "FAILED"
    info = ev.info()
    assert info["error_type"] == "MemoryLimitExceeded" and "memory_mb=200" in info["error_message"]


def test_only_the_engines_own_instances_reach_its_events(ray_scf: Any, tmp_path: Path) -> None:
    """The engine's port on the cluster takes nothing without its key: a peer with another key, one that sends
    a hello without the handshake, and one that sends garbage are dropped, and the event running meanwhile
    gets its own lines and result only."""
    import os
    import socket
    from multiprocessing import AuthenticationError

    from scf_nb.instances.loky import wire
    from scf_nb.instances.ray import link

    ray_scf.create_function("f", HANDLER, async_run=True)
    gate = tmp_path / "gate"
    ev = ray_scf.invoke("f", {"n": 7, "gate": str(gate), "started": str(tmp_path / "s")})
    wait_until(lambda: (tmp_path / "s").exists(), 60, "the event to run")
    address = ray_scf.engine_info()["backend_info"]["engine_address"]
    host, _, port = address.rpartition(":")
    forged = ("hello", "0" * 32, os.getpid(), "node", "127.0.0.1")
    with pytest.raises((AuthenticationError, OSError, EOFError)):
        link.connect(address, os.urandom(32), forged)  # another engine's key: the handshake fails
    for payload in (wire.frame(forged) + wire.frame(("line", 0, "stdout", b"forged line")),
                    b"\x00\x00\x00\x05garbage" * 100):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            try:
                sock.sendall(payload)
                sock.settimeout(30)
                while sock.recv(1 << 16):  # the engine's challenge, then it closes the connection
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass
    touch(gate)
    assert ev.result(timeout=60)["n"] == 7
    assert not any("forged" in line or "garbage" in line for line in ev.logs()["line"])
    assert [line.split()[:2] for line in lines(ev)][-1:] == [["running", "7"]]
    assert ray_scf.invoke("f", {"n": 8}).result(timeout=60)["n"] == 8  # the port still serves its own
