"""Kills on the Ray backend: terminate (with and without grace, inside a GIL-holding C call) reaches the
event's whole process tree on its node and nothing else; an actor killed from outside, a node removed
mid-event and an engine killed with -9 end as on loky, with nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from conftest import pid_alive, wait_until
from ray_handlers import HANDLER, all_dead, lines, pids_of, touch


def _running(ray_scf: Any, tmp_path: Path, name: str = "f", **extra: Any) -> tuple[Any, dict[str, int]]:
    """An event of ``name`` that started a child and a grandchild (own session) and waits on a gate."""
    spawn = tmp_path / f"pids-{name}"
    ev = ray_scf.invoke(name, {"n": 1, "spawn": str(spawn), "gate": str(tmp_path / "never"), **extra})
    return ev, pids_of(spawn)


def test_terminate_kills_the_event_tree_and_no_sibling(ray_scf: Any, tmp_path: Path) -> None:
    ray_scf.create_function("f", HANDLER, async_run=True, concurrency=2)
    gate = tmp_path / "gate"
    sibling = ray_scf.invoke("f", {"n": 2, "gate": str(gate), "started": str(tmp_path / "sib")})
    wait_until((tmp_path / "sib").exists, 60, "the sibling to run")
    ev, pids = _running(ray_scf, tmp_path)
    assert ray_scf.terminate(ev.request_id) == "ABORTED"
    info = ev.info()
    assert info["exit_reason"] == "terminated: SIGKILL"
    all_dead(pids.values())
    assert sibling.status == "RUNNING"
    touch(gate)
    assert sibling.result(timeout=60)["n"] == 2
    assert sibling.info()["status"] == "FINISHED"


def test_terminate_with_grace_unwinds_the_handler(ray_scf: Any, tmp_path: Path) -> None:
    ray_scf.create_function("f", HANDLER, async_run=True)
    started = tmp_path / "started"
    ev = ray_scf.invoke("f", {"n": 1, "graceful": True, "gate": str(tmp_path / "never"), "started": str(started)})
    wait_until(lambda: "running 1" in " ".join(lines(ev)), 60, "the event to run")
    assert ray_scf.terminate(ev.request_id, grace=True) == "ABORTED"
    assert ev.info()["exit_reason"] == "terminated: SIGTERM, then SIGKILL after 2 s if still running"
    assert "cleaning up" in lines(ev)  # its finally ran, and its last line is in


def test_terminate_with_grace_inside_a_gil_holding_c_call(ray_scf: Any, tmp_path: Path) -> None:
    """SIGTERM cannot stop a C call that holds the GIL; the SIGKILL after the grace does (a thread inside the
    actor could not even have received the request)."""
    ray_scf.create_function("f", HANDLER, async_run=True)
    ev = ray_scf.invoke("f", {"n": 1, "spin": True})
    wait_until(lambda: "running 1" in " ".join(lines(ev)), 60, "the event to run")
    pid = ev.info()["instance_pid"]
    began = time.monotonic()
    assert ray_scf.terminate(ev.request_id, grace=True) == "ABORTED"
    assert time.monotonic() - began < 2.0 + 5.0
    all_dead([pid])


def test_an_actor_killed_from_outside_fails_its_event(ray_scf: Any, tmp_path: Path) -> None:
    ray_scf.create_function("f", HANDLER, async_run=True)
    ev, pids = _running(ray_scf, tmp_path)
    os.kill(pids["actor"], signal.SIGKILL)
    assert ev.wait(timeout=60) == "FAILED"
    info = ev.info()
    assert info["error_type"] == "InstanceDied"
    assert "Ray actor process" in info["error_message"] and "died" in info["error_message"]
    all_dead(pids.values())
    assert ray_scf.invoke("f", {"n": 3}).result(timeout=60)["n"] == 3  # a new actor serves the next one


def test_ray_kill_of_the_actor_fails_its_event(ray_scf: Any, tmp_path: Path) -> None:
    import ray

    ray_scf.create_function("f", HANDLER, async_run=True)
    ev, pids = _running(ray_scf, tmp_path)
    engine = ray_scf.api.client().engine
    inst = ev_instance(engine, ev.request_id)
    ray.kill(inst.actor)
    assert ev.wait(timeout=60) == "FAILED"
    info = ev.info()
    assert info["error_type"] == "InstanceDied" and "died" in info["error_message"]
    all_dead(pids.values())


def ev_instance(engine: Any, request_id: str) -> Any:
    return next(i for i in engine.dispatcher.instances if i.event is not None and i.event.request_id == request_id)


def test_a_node_removed_mid_event_fails_it_naming_the_node(ray_scf: Any, ray_cluster: Any, tmp_path: Path) -> None:
    """A third node offers a custom resource that only the function asks for (so its actor runs there)."""
    node = ray_cluster.add_node(num_cpus=1, resources={"doomed": 1})
    ray_cluster.wait_for_nodes()
    try:
        ray_scf.create_function("g", HANDLER, async_run=True, resources={"doomed": 1}, num_cpus=0.5)
        ev, pids = _running(ray_scf, tmp_path, "g")
        node_id = ev_instance(ray_scf.api.client().engine, ev.request_id).node_id
        assert node_id == node.node_id
    finally:
        ray_cluster.remove_node(node, allow_graceful=False)
    assert ev.wait(timeout=60) == "FAILED"
    info = ev.info()
    assert info["error_type"] == "InstanceDied"
    assert f"the Ray node {node_id} (127.0.0.1) running the instance was lost" in info["error_message"]
    all_dead(pids.values())


ENGINE = textwrap.dedent('''
    import sys, time
    import scf_nb
    home, address, code, spawn = sys.argv[1:5]
    scf_nb.configure(home=home, backend="ray", ray_address=address)
    scf_nb.create_function("f", code, async_run=True)
    ev = scf_nb.invoke("f", {"n": 1, "spawn": spawn, "gate": spawn + ".never"})
    print(ev.request_id, flush=True)
    time.sleep(600)
''')


def test_an_engine_killed_leaves_no_actor_or_child(tmp_path: Path, ray_cluster: Any) -> None:
    """kill -9 of the engine's process: its actor and everything the event started die too (the watchdog
    sees the engine go; Ray kills a dead driver's actors); the next engine fails the event."""
    import scf_nb

    home, spawn = tmp_path / "store", tmp_path / "pids"
    proc = subprocess.Popen([sys.executable, "-c", ENGINE, str(home), ray_cluster.address, HANDLER, str(spawn)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        request_id = proc.stdout.readline().strip()
        pids = pids_of(spawn)
        proc.kill()
        proc.wait(timeout=30)
        all_dead(pids.values())
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    scf_nb.configure(home=home, backend="loky")
    try:
        info = scf_nb.get_event(request_id).info()
        assert (info["status"], info["error_type"]) == ("FAILED", "EngineLost")
    finally:
        scf_nb.shutdown()
    assert not pid_alive(pids["actor"])


ACTOR_ID = '''
import ray
def main_handler(event, context):
    return ray.get_runtime_context().get_actor_id()
'''


def test_an_idle_actor_is_ended_through_ray_kill(ray_scf: Any) -> None:
    """The engine ends an idle instance (at shutdown, on retiring one) by ``ray.kill``: Ray counts that death as
    asked for, and its driver prints no "A worker died or was killed" line for it. (A running event's kill stays
    the watchdog's signal, the tests above: that one works inside a GIL-holding C call.)"""
    import ray._private.state as ray_state  # the GCS's actor table: the dashboard's state API is not running

    ray_scf.create_function("who", ACTOR_ID, async_run=True)
    actor_id = ray_scf.invoke("who").result(timeout=60)
    ray_scf.shutdown()
    wait_until(lambda: (ray_state.actors(actor_id) or {}).get("State") == "DEAD", 30, "the actor to be dead")
    assert "RAY_KILL" in str(ray_state.actors(actor_id)["DeathCause"])
