"""The Ray backend beside plain Ray, in one run on one cluster: a no-op event's round trip (invoke -> FINISHED,
every event recorded) against ``ray.get(noop.remote())`` (a task) and ``ray.get(actor.noop.remote())`` (a
warm actor's method), throughput of a burst, and the cold first event after ``ray.init``.

Run it on a cluster of its own on this machine, loopback only (Ray takes the machine's interface address
otherwise), as root::

    unshare -n bash -c 'ip link set lo up && exec .venv/bin/python bench/ray.py'
    unshare -n bash -c 'ip link set lo up && exec .venv/bin/python bench/ray.py --quick'

``--address HOST:PORT`` measures on an existing cluster instead (then no cluster is started). It prints one
table and writes the figures as JSON with ``--json PATH``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

# This file is bench/ray.py: its folder must not shadow the ray package
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
NOOP = "def main_handler(event, context):\n    return None\n"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def timed(call: Any, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        call()
        out.append((time.perf_counter() - t) * 1e6)
    return out


def progress(what: str, value: float) -> None:
    print(f"... {what}: {value:.3f}", file=sys.stderr, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--address", help="an existing cluster (default: start two 1-CPU nodes here)")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    n_rt, n_burst, rounds = (200, 500, 2) if args.quick else (1000, 2000, 3)

    import ray

    cluster = None
    if args.address is None:
        from ray.cluster_utils import Cluster

        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
        cluster.add_node(num_cpus=1)
        address = cluster.address
    else:
        address = args.address
    import scf_nb

    fig: dict[str, Any] = {}
    try:
        t0 = time.perf_counter()
        ray.init(address=address, log_to_driver=False)
        if cluster is not None:
            cluster.wait_for_nodes()
        fig["ray_init_s"] = time.perf_counter() - t0

        # cold: the first event after ray.init (a new engine, its first actor), then plain Ray's first calls
        home = tempfile.mkdtemp(prefix="scf_nb-bench-ray-")
        t = time.perf_counter()
        scf_nb.configure(home=home, backend="ray", ray_address=address)
        scf_nb.create_function("noop", NOOP, async_run=True, concurrency=2)
        assert scf_nb.invoke("noop").wait(120) == "FINISHED"
        fig["cold_first_event_s"] = time.perf_counter() - t

        @ray.remote(num_cpus=1)
        def noop() -> None:
            return None

        @ray.remote(num_cpus=1)
        class Noop:
            def noop(self) -> None:
                return None

        scf_nb.shutdown()  # its actors hold the cluster's CPUs: plain Ray needs them now
        progress("cold first event", fig["cold_first_event_s"])
        # plain Ray, tasks first (a task needs a CPU that the actors would hold), then two warm actors
        t = time.perf_counter()
        ray.get(noop.remote())
        fig["first_task_s"] = time.perf_counter() - t
        rt_task = timed(lambda: ray.get(noop.remote()), n_rt)
        tp_task = []
        for _ in range(rounds):
            t = time.perf_counter()
            ray.get([noop.remote() for _ in range(n_burst)])
            tp_task.append(n_burst / (time.perf_counter() - t))
        progress("plain tasks", statistics.median(rt_task))
        t = time.perf_counter()
        actors = [Noop.remote() for _ in range(2)]  # type: ignore[attr-defined]
        ray.get(actors[0].noop.remote())
        fig["first_actor_call_s"] = time.perf_counter() - t
        ray.get([a.noop.remote() for a in actors])
        rt_actor = timed(lambda: ray.get(actors[0].noop.remote()), n_rt)
        tp_actor = []
        for _ in range(rounds):
            t = time.perf_counter()
            ray.get([actors[i % 2].noop.remote() for i in range(n_burst)])
            tp_actor.append(n_burst / (time.perf_counter() - t))
        for a in actors:
            ray.kill(a)
        progress("plain actors", statistics.median(rt_actor))

        # a burst is invoked faster than SCF's default rate limit (max_qps 1000/s) would accept
        scf_nb.configure(home=home, backend="ray", ray_address=address, max_qps=1e6)
        scf_nb.create_function("noop", NOOP, async_run=True, concurrency=2)
        scf_nb.wait([scf_nb.invoke("noop") for _ in range(50)], timeout=120)  # both actors started and warm
        rt_scf = timed(lambda: scf_nb.invoke("noop").wait(60), n_rt)
        progress("scf_nb round trips", statistics.median(rt_scf))
        tp_scf = []
        for _ in range(rounds):
            t = time.perf_counter()
            evs = [scf_nb.invoke("noop") for _ in range(n_burst)]
            done = scf_nb.wait(evs, timeout=300)
            tp_scf.append(n_burst / (time.perf_counter() - t))
            assert not done.not_done, "events did not finish"
        total = scf_nb.count_events("noop", status="FINISHED")
        expected = 51 + n_rt + rounds * n_burst
        scf_nb.shutdown()
        fig["events_recorded_finished"] = total
        fig["events_invoked"] = expected
        for name, values in (("rt_scf_us", rt_scf), ("rt_task_us", rt_task), ("rt_actor_us", rt_actor)):
            fig[name] = {"p50": statistics.median(values), "p95": pct(values, 0.95), "n": len(values)}
        for name, values in (("tp_scf_per_s", tp_scf), ("tp_task_per_s", tp_task), ("tp_actor_per_s", tp_actor)):
            fig[name] = {"median": statistics.median(values), "rounds": values}
    finally:
        scf_nb.shutdown()
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    report(fig)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(fig, f, indent=2)


def report(fig: dict[str, Any]) -> None:
    rt, task, actor = fig["rt_scf_us"], fig["rt_task_us"], fig["rt_actor_us"]
    print(f"ray.init (connect, 2 nodes up): {fig['ray_init_s']:.2f} s")
    print(f"cold first event after ray.init: {fig['cold_first_event_s']:.2f} s "
          f"(plain Ray afterwards: first task {fig['first_task_s']:.2f} s, first call of a new actor "
          f"{fig['first_actor_call_s']:.2f} s)")
    print(f"no-op round trip p50/p95 us: scf_nb {rt['p50']:.0f}/{rt['p95']:.0f}, ray task {task['p50']:.0f}/"
          f"{task['p95']:.0f}, warm actor call {actor['p50']:.0f}/{actor['p95']:.0f} "
          f"(scf_nb / actor call: {rt['p50'] / actor['p50']:.2f}x)")
    tp, tt, ta = (fig[k]["median"] for k in ("tp_scf_per_s", "tp_task_per_s", "tp_actor_per_s"))
    print(f"throughput, no-ops/s (median round): scf_nb {tp:.0f}, ray tasks {tt:.0f}, 2 warm actors {ta:.0f} "
          f"(scf_nb / tasks: {tp / tt:.2f}x)")
    print(f"events recorded FINISHED: {fig['events_recorded_finished']} of {fig['events_invoked']}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
