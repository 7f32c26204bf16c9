"""Randomized stress of the engine's promises, through the public API only.

    python bench/stress.py --seed 1 --events 1500 [--concurrency C] [--minutes 3] [--json out.json]

A seeded mix of events (no-ops, short sleeps, chatty ones writing up to a few thousand tagged lines on stdout
and stderr, ones that raise, ones that exceed a small timeout, long ones held by a gate file) is invoked on
2-4 functions of concurrency 1-3, with terminates (with and without grace: right after invoke, while running,
while queued, which is mostly while sent ahead), SIGKILLs of instance processes from outside and a thread
that keeps the driver's GIL busy in bursts. Then ``stress_checks.py`` checks every promise (see its
docstring). Exit code: 0 no violation, 1 violations (each printed), 2 the run itself broke.

The handler writes ``<rid> <time.time()> <pid>`` to a shared O_APPEND file as its first act, so start times
and the process that ran an event are known for events that were killed too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stress_checks  # noqa: E402

import scf_nb  # noqa: E402
from scf_nb.core.errors import ScfError  # noqa: E402

HANDLER = r'''
import os, sys, time
_DIR = os.environ["STRESS_DIR"]
_STARTS = os.open(os.path.join(_DIR, "starts.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

def main_handler(event, context):
    t0 = time.time()
    rid = context.request_id
    os.write(_STARTS, f"{rid} {t0:.6f} {os.getpid()}\n".encode())
    out, err = event.get("out", 0), event.get("err", 0)
    for i in range(max(out, err)):
        if i < out:
            print(rid, "o", i)
        if i < err:
            print(rid, "e", i, file=sys.stderr)
    kind = event["kind"]
    if kind == "sleep":
        time.sleep(event["s"])
    elif kind == "raise":
        raise ValueError("boom " + rid)
    elif kind == "timeout":
        time.sleep(event["s"])
    elif kind == "memory":
        hog = b"x" * (event["mb"] << 20)  # over the function's memory_mb: the engine stops it
        time.sleep(event["s"])
    elif kind == "long":
        deadline = time.monotonic() + 50
        while not os.path.exists(event["gate"]) and time.monotonic() < deadline:
            time.sleep(0.005)
    return {"rid": rid, "t0": t0, "pid": os.getpid()}
'''

TIGHT_TIMEOUT_S = 2.0  # functions that get "timeout" events (which sleep far longer)
LOOSE_TIMEOUT_S = 120.0  # functions that get "long" events (held by a gate)
GRACE_S = 0.3
MEMORY_MB = 256  # the memory_mb of the first function with long events; "memory" events go over it
KINDS = (("noop", 35), ("sleep", 20), ("chatty", 16), ("raise", 4), ("timeout", 1), ("long", 3), ("memory", 1))


@dataclass
class Sent:
    """What the driver knows of one event it invoked."""

    index: int
    rid: str
    fn: str
    kind: str
    payload: dict[str, Any]
    invoked_at: float
    handle: Any
    terminated: list[tuple[float, bool, str]] = field(default_factory=list)  # (time, grace, how)
    kill_pids: list[int] = field(default_factory=list)  # pids we SIGKILLed while aiming at this event
    ahead_when_terminated: bool | None = None


@dataclass
class Kill:
    pid: int
    at: float
    target: str | None  # the RequestId we aimed at (None: a loky worker picked from /proc)
    source: str


class Busy(threading.Thread):
    """Holds the GIL in bursts (pure-Python loops), as a notebook computing next to the engine does."""

    def __init__(self, rng: random.Random) -> None:
        super().__init__(name="stress-busy", daemon=True)
        self.rng = random.Random(rng.random())
        self.stop = threading.Event()
        self.burst_s = 0.0

    def run(self) -> None:
        while not self.stop.is_set():
            end = time.perf_counter() + self.rng.uniform(0.01, 0.1)
            t = time.perf_counter()
            x = 0
            while time.perf_counter() < end:
                for i in range(200):
                    x += i * i
            self.burst_s += time.perf_counter() - t
            self.stop.wait(self.rng.uniform(0.01, 0.1))


class Driver:
    def __init__(self, args: argparse.Namespace, workdir: str) -> None:
        self.args = args
        self.rng = random.Random(args.seed)  # the plan: functions, events, bursts (the same for a seed)
        self.drng = random.Random(args.seed + 1_000_003)  # disturbances, whose targets depend on timing
        self.workdir = workdir
        self.gates = os.path.join(workdir, "gates")
        os.makedirs(self.gates)
        self.sent: list[Sent] = []
        self.by_rid: dict[str, Sent] = {}
        self.kills: list[Kill] = []
        self.functions: dict[str, dict[str, Any]] = {}
        self.releases: list[tuple[float, str]] = []
        self.counts: dict[str, int] = {}
        self.alive_at_end: set[int] = set()  # instance processes still alive when every event had ended
        self.deadline = time.monotonic() + args.minutes * 60

    def count(self, what: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1

    # -- set-up ---------------------------------------------------------------------------------------------
    def setup(self) -> None:
        n = self.rng.randint(2, 4) if self.args.functions is None else self.args.functions
        for i in range(n):
            conc = self.args.concurrency or self.rng.randint(1, 3)
            tight = i % 2 == 0  # half get timeouts, the others long events
            self.functions[f"f{i}"] = {"concurrency": conc, "tight": tight,
                                       "timeout": TIGHT_TIMEOUT_S if tight else LOOSE_TIMEOUT_S,
                                       "memory_mb": MEMORY_MB if i == 1 else None}
        # room for every function's instances and the ones being replaced: no instance is stopped for room
        workers = 2 * sum(f["concurrency"] for f in self.functions.values()) + 2
        scf_nb.configure(home=os.path.join(self.workdir, "store"), grace_seconds=GRACE_S, max_qps=1e9,
                         max_workers=workers)
        for name, f in self.functions.items():
            scf_nb.create_function(name, HANDLER, async_run=True, concurrency=f["concurrency"],
                                   timeout=f["timeout"], memory_mb=f["memory_mb"], env={"STRESS_DIR": self.workdir})

    # -- events -----------------------------------------------------------------------------------------------
    def payload(self, fn: str) -> tuple[str, dict[str, Any]]:
        tight = self.functions[fn]["tight"]
        kind = self.rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
        if kind == "timeout" and not tight:
            kind = "sleep"
        if kind == "long" and tight:
            kind = "noop"
        if kind == "memory" and not self.functions[fn]["memory_mb"]:
            kind = "chatty"
        p: dict[str, Any] = {"kind": kind}
        if kind == "chatty":
            p["out"] = int(math.exp(self.rng.uniform(0, math.log(3000))))
            p["err"] = int(math.exp(self.rng.uniform(0, math.log(3000)))) if self.rng.random() < 0.7 else 0
        elif kind != "noop" or self.rng.random() < 0.3:
            p["out"], p["err"] = self.rng.randint(0, 2), self.rng.randint(0, 1)
        if kind == "sleep":
            p["s"] = self.rng.uniform(0.001, 0.02)
        elif kind == "timeout":
            p["s"] = 30.0
        elif kind == "memory":
            p["mb"], p["s"] = 2 * MEMORY_MB, 2.0
        elif kind == "long":
            gate = os.path.join(self.gates, f"g{len(self.sent)}")
            p["gate"] = gate
            self.releases.append((time.monotonic() + self.rng.uniform(0.2, 3.0), gate))
        return kind, p

    def invoke(self, fn: str) -> Sent:
        kind, p = self.payload(fn)
        now = time.time()
        ev = scf_nb.invoke(fn, p)
        s = Sent(len(self.sent), ev.request_id, fn, kind, p, now, ev)
        self.sent.append(s)
        self.by_rid[s.rid] = s
        self.count(f"kind:{kind}")
        if self.rng.random() < 0.02:
            self.terminate(s, "after invoke")
        return s

    # -- disturbances -------------------------------------------------------------------------------------------
    def terminate(self, s: Sent, how: str) -> None:
        grace = self.drng.random() < 0.4
        s.ahead_when_terminated = _sent_ahead(s.rid) if s.ahead_when_terminated is None else s.ahead_when_terminated
        s.terminated.append((time.time(), grace, how))
        try:
            scf_nb.terminate(s.rid, grace=grace, wait=self.drng.random() < 0.3)
            self.count(f"terminate:{how}{' grace' if grace else ''}")
            if how == "queued" and s.ahead_when_terminated:
                self.count("terminate:queued, sent ahead")
        except ScfError as e:
            if e.code != "FailedOperation.AsyncEventStatus":
                raise
            self.count("terminate:already ended")

    def recent(self, status: str, n: int = 60) -> list[Sent]:
        out = []
        for s in self.sent[-n:]:
            try:
                if s.handle.status == status:
                    out.append(s)
            except ScfError:
                pass
        return out

    def kill_running(self) -> None:
        running = self.recent("RUNNING")
        if not running:
            return
        s = self.drng.choice(running)
        pid = s.handle.info()["instance_pid"]
        if not pid:
            return
        self._kill(pid, s.rid, "running event")
        s.kill_pids.append(pid)

    def kill_worker(self) -> None:
        workers = _loky_workers()
        if workers:
            self._kill(self.drng.choice(workers), None, "loky worker from /proc")

    def _kill(self, pid: int, target: str | None, source: str) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self.kills.append(Kill(pid, time.time(), target, source))
        self.count(f"sigkill:{source}")

    def release_due(self, force: bool = False) -> None:
        now = time.monotonic()
        keep = []
        for at, gate in self.releases:
            if force or at <= now:
                open(gate, "w").close()
            else:
                keep.append((at, gate))
        self.releases = keep

    def disturb(self) -> None:
        r = self.rng.random()
        if r < 0.10:
            running = self.recent("RUNNING")
            if running:
                self.terminate(self.drng.choice(running), "running")
        elif r < 0.20:
            queued = self.recent("QUEUED", 200)
            ahead = [q for q in queued if _sent_ahead(q.rid)]  # most worth hitting: sent ahead, not yet claimed
            if queued:
                self.terminate(self.drng.choice(ahead or queued), "queued")
        elif r < 0.25:
            self.kill_running()
        elif r < 0.27:
            self.kill_worker()

    # -- the run -------------------------------------------------------------------------------------------------
    def run(self) -> bool:
        """Invoke every event (or until the time for it is up); False if time ran out first."""
        names = list(self.functions)
        invoke_until = self.deadline - min(60.0, self.args.minutes * 60 * 0.35)
        while len(self.sent) < self.args.events:
            if time.monotonic() > invoke_until:
                return False
            fn = self.rng.choice(names)
            for _ in range(min(self.rng.choice((1, 1, 2, 5, 10, 30)), self.args.events - len(self.sent))):
                self.invoke(fn if self.rng.random() < 0.7 else self.rng.choice(names))
            for _ in range(self.rng.randint(0, 3)):
                self.disturb()
            self.release_due()
            r = self.rng.random()
            if r < 0.3:
                time.sleep(self.rng.uniform(0, 0.02))
            elif r < 0.35:  # a gap: let the queues drain, instances go idle
                scf_nb.wait([s.handle for s in self.sent[-20:]], timeout=1.0)
            outstanding = [s for s in self.sent[-400:] if s.handle.status in ("QUEUED", "RUNNING")]
            if len(outstanding) > 250:
                scf_nb.wait([s.handle for s in outstanding[:100]], timeout=5.0)
        return True

    def finish(self) -> list[Sent]:
        """Release every gate and wait for all events to end; the ones still not ended."""
        end = max(self.deadline - 20.0, time.monotonic() + 30.0)
        while self.releases and time.monotonic() < end:
            self.release_due()
            time.sleep(0.05)
        self.release_due(force=True)
        done, not_done = scf_nb.wait([s.handle for s in self.sent], timeout=max(5.0, end - time.monotonic()))
        self.alive_at_end = set(_loky_workers())
        return [self.by_rid[h.request_id] for h in not_done]


def _sent_ahead(rid: str) -> bool | None:
    """Whether the engine holds ``rid`` as sent ahead right now: read-only, for coverage figures only."""
    try:
        engine = scf_nb.client().engine
        return any(e.request_id == rid for a in list(engine.backend.ahead.values()) for e, _, _ in list(a.pending))
    except Exception:
        return None


def _loky_workers() -> list[int]:
    """Our child processes that are loky workers (instances and the spare; not loky's resource tracker)."""
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
            if ppid != me:
                continue
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, IndexError, ValueError):
            continue
        if b"loky" in cmd and b"popen_loky" in cmd:
            out.append(int(entry.name))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--events", type=int, default=1500)
    ap.add_argument("--concurrency", type=int, default=None, help="every function's (default: 1-3 each)")
    ap.add_argument("--functions", type=int, default=None, help="how many (default: 2-4)")
    ap.add_argument("--minutes", type=float, default=3.0, help="time limit of the whole run")
    ap.add_argument("--json", default=None, help="write the summary and violations here")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (store, start records)")
    args = ap.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="scf_stress-")
    t_start = time.monotonic()
    driver = Driver(args, workdir)
    busy = Busy(driver.drng)
    try:
        driver.setup()
        busy.start()
        complete = driver.run()
        busy.stop.set()
        busy.join()
        stuck = driver.finish()
        run_s = time.monotonic() - t_start
        report = stress_checks.check(driver, stuck)
        report.summary.update({"seed": args.seed, "events_asked": args.events, "events_invoked": len(driver.sent),
                               "invoked_all": complete, "run_s": round(run_s, 1),
                               "busy_thread_s": round(busy.burst_s, 1),
                               "scf_nb": os.path.dirname(scf_nb.__file__),
                               "functions": driver.functions, "counts": dict(sorted(driver.counts.items()))})
    except Exception:
        import traceback

        traceback.print_exc()
        return 2
    finally:
        busy.stop.set()
        scf_nb.shutdown()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print("work folder kept:", workdir)
    report.print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report.as_dict(), f, indent=1, default=str)
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
