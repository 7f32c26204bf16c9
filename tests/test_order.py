"""Per function, events start in the order they were accepted, wherever they were sent ahead: a free instance
takes the oldest waiting event, and a long event on one instance holds up nothing behind it."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any

from conftest import GATE, wait_until

HANDLER = GATE + r'''
def main_handler(event, context):
    if "touch" in event:
        touch(event["touch"])
    if "gate" in event:
        wait_file(event["gate"], 120)
    if event.get("sleep"):
        time.sleep(event["sleep"])
    return os.getpid()
'''


def run_times(evs: list[Any]) -> list[Any]:
    return [ev.info()["run_time"] for ev in evs]


def in_order(times: list[Any]) -> bool:
    return all(a <= b for a, b in pairwise(times))


def test_events_behind_a_long_one_run_in_order_on_the_free_instance(scf: Any, tmp_path: Path) -> None:
    scf.create_function("fifo", HANDLER, async_run=True, concurrency=2)
    warm = [scf.invoke("fifo", {"gate": str(tmp_path / "warm"), "touch": str(tmp_path / f"w{i}")}) for i in range(2)]
    wait_until(lambda: (tmp_path / "w0").exists() and (tmp_path / "w1").exists(), 30, "two events running at once")
    (tmp_path / "warm").touch()
    assert len({ev.result(timeout=30) for ev in warm}) == 2  # two warm instances
    long_ev = scf.invoke("fifo", {"gate": str(tmp_path / "gate"), "touch": str(tmp_path / "long")})
    wait_until((tmp_path / "long").exists, 30, "the long event to start")
    short = [scf.invoke("fifo", {"sleep": 0.02}) for _ in range(30)]
    done, not_done = scf.wait(short, timeout=20)  # none of them waits for the long one
    assert not not_done, f"{len(not_done)} events waited behind the long one"
    assert long_ev.status == "RUNNING"
    assert in_order(run_times(short))
    assert {ev.result() for ev in short} == {warm[0].result(), warm[1].result()} - {long_ev.info()["instance_pid"]}
    (tmp_path / "gate").touch()
    assert long_ev.wait(30) == "FINISHED"


def test_a_steady_stream_of_equal_events_starts_in_acceptance_order(scf: Any) -> None:
    scf.configure(max_qps=1e9)
    try:
        scf.create_function("fifo", HANDLER, async_run=True, concurrency=2)
        evs = []
        for _ in range(6):
            evs += [scf.invoke("fifo", {"sleep": 0.001}) for _ in range(100)]
            scf.wait(evs[-50:], timeout=60)  # a stream with gaps, so instances go idle and busy again
        done, not_done = scf.wait(evs, timeout=120)
        assert not not_done and {ev.status for ev in done} == {"FINISHED"}
        times = run_times(evs)
        swaps = [i for i in range(len(times) - 1) if times[i] > times[i + 1]]
        assert not swaps, f"{len(swaps)} events started before an older one, e.g. #{swaps[0] + 1}"
    finally:
        scf.configure(max_qps=type(scf.configure())().max_qps)
