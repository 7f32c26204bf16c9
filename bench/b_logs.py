"""Row 6: log lines ingested into the store.

6a throughput: one event prints N short lines (``print`` in a loop, as user code does); the figure is N over
   the time from ``invoke`` until its last line is queryable (``scf_nb.logs(rid, since_seq=N-1)`` returns it;
   seq numbers are contiguous, so then all are). The loky column runs the same loop in a raw loky worker with
   stdout sent to /dev/null: the producer's own pace, an upper bound for any capture.
6c the same with the handler writing all its lines in a few big os.write calls (C code, a child process
   dumping output): the engine's own pace of reading, splitting and storing lines.
6b latency at 1,000 lines/s: the handler prints its ``time.time()`` once a millisecond; a poller follows it
   with ``since_seq`` (one query every 2 ms, like ``%scf_logs --follow``) and records now - printed time.
"""

from __future__ import annotations

import os
import sys
import time

from common import engine_home, log, loky_executor, row, stats

PRINTER = """
def main_handler(event, context):
    for i in range(event["n"]):
        print("line", i)
    return event["n"]
"""
BLASTER = """
import os
def main_handler(event, context):
    data = "\\n".join(["line %d" % i for i in range(event["n"])]).encode() + b"\\n"
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
    return event["n"]
"""
TICKER = """
import time
def main_handler(event, context):
    n, rate = event["n"], event["rate"]
    t0 = time.time()
    for i in range(n):
        target = t0 + i / rate
        d = target - time.time()
        if d > 0:
            time.sleep(d)
        print(repr(time.time()))
    return n
"""


def _loky_print(n: int) -> float:
    """The same print loop in a raw loky worker, stdout to /dev/null (line buffered, as in an instance)."""
    sys.stdout.flush()
    saved = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.close(null)
    sys.stdout.reconfigure(line_buffering=True)
    try:
        t = time.perf_counter()
        for i in range(n):
            print("line", i)
        sys.stdout.flush()
        return time.perf_counter() - t
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _ingest(n: int, fn: str = "printer") -> tuple[float, float]:
    import scf_nb

    t = time.perf_counter()
    ev = scf_nb.invoke(fn, {"n": n})
    while True:
        last = scf_nb.logs(ev.request_id, since_seq=n - 1)
        if len(last):
            break
        if ev.status in ("FAILED", "ABORTED"):
            raise RuntimeError(ev.info())
        time.sleep(0.005)
    elapsed = time.perf_counter() - t
    assert last["line"].iloc[0] == f"line {n - 1}", last
    assert ev.wait(60) == "FINISHED"
    store = scf_nb.client().engine.store
    count = store.rows("SELECT count(*) FROM logs WHERE event_key = (SELECT event_key FROM events "
                       "WHERE request_id = ?)", [ev.request_id])[0][0]
    assert count == n, (count, n)
    return elapsed, ev.info()["duration_ms"] / 1000.0


def _follow(seconds: float, rate: float = 1000.0, poll: float = 0.002) -> list[float]:
    import scf_nb

    n = int(seconds * rate)
    ev = scf_nb.invoke("ticker", {"n": n, "rate": rate})
    lat, seq = [], 0
    deadline = time.monotonic() + seconds + 30
    while seq < n and time.monotonic() < deadline:
        df = scf_nb.logs(ev.request_id, since_seq=seq)
        now = time.time()
        if len(df):
            lat.extend((now - float(x)) * 1000 for x in df["line"])
            seq = int(df["seq"].iloc[-1])
        time.sleep(poll)
    assert ev.wait(30) == "FINISHED"
    assert len(lat) == n, (len(lat), n)
    return lat


def run(quick: bool) -> list[dict]:
    import scf_nb

    n, reps, follow_s = (200_000, 1, 3.0) if quick else (1_000_000, 3, 10.0)
    ex = loky_executor(2)
    lk = [n / ex.submit(_loky_print, n).result() for _ in range(reps)]
    with engine_home():
        scf_nb.create_function("printer", PRINTER, async_run=True, concurrency=1)
        scf_nb.create_function("ticker", TICKER, async_run=True, concurrency=1)
        scf_nb.invoke("printer", {"n": 10}).wait(60)  # warm instance
        scf_nb.invoke("ticker", {"n": 10, "rate": 1000.0}).wait(60)
        rates, producer = [], []
        for _ in range(reps):
            elapsed, dur = _ingest(n)
            rates.append(n / elapsed)
            producer.append(n / dur)
        log(f"ingest lines/s {rates}; handler's own pace {producer}; loky /dev/null pace {lk}")
        scf_nb.create_function("blaster", BLASTER, async_run=True, concurrency=1)
        scf_nb.invoke("blaster", {"n": 10}).wait(60)
        blast = [n / _ingest(n, "blaster")[0] for _ in range(reps)]
        log(f"one-write burst lines/s {blast}")
        lat = _follow(follow_s)

    def med(xs: list[float]) -> float:
        return sorted(xs)[len(xs) // 2]

    return [
        row("6a", f"log lines ingested ({n:,} prints)", "lines/s", {"p50": med(rates), "p95": min(rates),
            "rounds": rates, "handler_pace": producer}, loky={"p50": med(lk), "p95": min(lk), "rounds": lk},
            check=("p50", ">=", 250_000.0), target=">= 250,000 lines/s", higher_is_better=True,
            note=(f"invoke -> last line queryable; handler's own pace in the instance "
                  f"{med(producer):,.0f} lines/s; loky column: the same loop in a raw loky worker to /dev/null")),
        row("6c", f"log lines ingested ({n:,} lines in big writes)", "lines/s", {"p50": med(blast),
            "p95": min(blast), "rounds": blast}, check=("p50", ">=", 250_000.0), target=">= 250,000 lines/s",
            higher_is_better=True, note="the handler builds all lines and os.write()s them at once: the "
                                        "engine's pace, not print's"),
        row("6b", "print -> queryable at 1,000 lines/s", "ms", stats(lat), check=("p95", "<=", 50.0),
            target="p95 <= 50 ms", note=f"{len(lat):,} lines over {follow_s:g} s, poller every 2 ms"),
    ]
