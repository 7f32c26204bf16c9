"""Where a no-op round trip's time goes, stage by stage (a diagnostic, not a row of run.py).

    python bench/stages.py [--events 4000] [--runs 3]
    PYTHONPATH=<a checkout of another commit> python bench/stages.py    # the same stages on that commit

One function, warm instances, ``invoke("noop").wait()`` in a loop; each event's stages from the same
``perf_counter_ns`` clock (the engine runs in this process):

    invoke()         the caller's ``invoke`` returning
    ->engine         from the call until the engine thread takes the event (invoke() included)
    dispatch+send    until the run is sent to an instance
    worker+wakes     until the engine reads the instance's "done" (the worker's whole turn, and the wake-ups)
    done->caller     until ``wait()`` returns in the caller
    total            the round trip

It hooks the engine's internal methods by name (those of this commit, or of the commits before issue 8's
layout: ``scf_nb/core/engine.py``), so it breaks when they are renamed: a tool for comparing commits, not
a test. Medians of each run are printed, one line per run.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import engine_home, warm_function  # noqa: E402

_ns = time.perf_counter_ns
_STAMPS = {"taken": 0, "sent": 0, "done": 0}
STAGES = ("invoke()", "->engine", "dispatch+send", "worker+wakes", "done->caller", "total")


def _hook(module: str, cls: str, method: str, stamp: str, after: bool = False, first_only: bool = False) -> None:
    owner = getattr(importlib.import_module(module), cls)
    original = getattr(owner, method)

    def stamped(*args: Any, **kwargs: Any) -> Any:
        if not after and not (first_only and _STAMPS[stamp]):
            _STAMPS[stamp] = _ns()
        out = original(*args, **kwargs)
        if after:
            _STAMPS[stamp] = _ns()
        return out

    setattr(owner, method, stamped)


def _install() -> None:
    import scf_nb

    root = os.path.dirname(scf_nb.__file__)
    if os.path.exists(os.path.join(root, "engine", "dispatcher.py")):
        _hook("scf_nb.engine.dispatcher", "Dispatcher", "invoke", "taken")
        _hook("scf_nb.instances.loky.sending", "Sending", "offer", "sent", after=True)
        _hook("scf_nb.instances.loky.channels", "Channels", "on_conn", "done", first_only=True)
    else:  # the layout before issue 8 (one Engine class made of mixins)
        _hook("scf_nb.core.engine", "Engine", "_cmd_invoke", "taken")
        _hook("scf_nb.core.engine", "Engine", "_send_run", "sent", after=True)
        _hook("scf_nb.core.engine", "Engine", "_on_conn", "done", first_only=True)


def run(events: int) -> list[float]:
    import scf_nb

    rows = []
    with engine_home():
        warm_function("noop")
        for i in range(events + 200):
            _STAMPS.update(taken=0, sent=0, done=0)
            t0 = _ns()
            ev = scf_nb.invoke("noop")
            returned = _ns()
            ev.wait(30)
            end = _ns()
            s = _STAMPS
            if i >= 200 and s["taken"] and s["sent"] and s["done"]:
                rows.append((returned - t0, s["taken"] - t0, s["sent"] - s["taken"], s["done"] - s["sent"],
                             end - s["done"], end - t0))
    return [statistics.median(r[k] for r in rows) / 1000 for k in range(len(STAGES))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    import scf_nb

    _install()
    print(f"scf_nb from {os.path.dirname(scf_nb.__file__)}; medians in us, one line per run")
    print("  ".join(f"{s:>13}" for s in STAGES))
    for _ in range(args.runs):
        print("  ".join(f"{v:13.0f}" for v in run(args.events)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
