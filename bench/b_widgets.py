"""Row 10: the notebook views, measured in a real Jupyter kernel (ipykernel via jupyter_client), so every widget
message is serialized and sent on the kernel's IOPub socket as it is for a browser.

10a-c: with 1M events and 10M log lines stored (``storegen.py``; quick run: 100k and 1M), the event table's
refresh with a 50-row page, timed inside the kernel: the same page again (``list_events`` + ``overview`` + the
redraw), a new page (its 50 rows' widgets made), a status filter clicked on (the refresh it triggers).

10d-e: a log pane following an event that prints 10,000 lines/s for 10 s (each line carries its
``time.time()``). This process reads the kernel's IOPub as a front end would: for each update of the pane's
HTML, the lag is the arrival time less the print time of the newest line in it; messages per second are those
updates (and any other message of the pane's widgets) per second of the event.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import log, row, stats

HERE = Path(__file__).resolve().parent
SPEW = """
import sys, time
def main_handler(event, context):
    rate, seconds = event["rate"], event["seconds"]
    start = time.time()
    n = 0
    while time.time() - start < seconds:
        due = int((time.time() - start) * rate)
        while n < due:
            print(f"{time.time():.6f} {n}")
            n += 1
        sys.stdout.flush()
        time.sleep(0.005)
    return n
"""
TABLE = """
import json, time, scf_nb
scf_nb.configure(home={home!r}, max_qps=1e9)
def ms(fn):
    t = time.perf_counter(); fn(); return (time.perf_counter() - t) * 1000
t = time.perf_counter(); table = scf_nb.event_table(page_size=50); build = (time.perf_counter() - t) * 1000
steady = [ms(table.refresh) for _ in range({reps})]
pages = [ms(lambda k=k: table.go(k)) for k in range(1, {reps} + 1)]
table.go(0)
flip = []
for k in range({reps}):
    button = table.status["FAILED" if k % 2 else "ABORTED"]
    flip.append(ms(lambda: setattr(button, "value", True)))
    button.value = False
assert len(table.page_frame) == 50
print(json.dumps({{"build": build, "steady": steady, "pages": pages, "flip": flip}}))
"""


def kernel_run(kc: Any, code: str, timeout: float = 600) -> str:
    """Run a cell; its stdout. Raises on an error."""
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "error":
            raise RuntimeError(f"{content['ename']}: {content['evalue']}")
        if kind == "stream":
            out.append(content["text"])
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out)


def table_figures(kc: Any, quick: bool) -> dict[str, Any]:
    n_events, per = (100_000, 10) if quick else (1_000_000, 10)
    home = Path(tempfile.mkdtemp(prefix="scf_nb-bench-widgets-"))
    try:
        gen = json.loads(subprocess.run([sys.executable, str(HERE / "storegen.py"), str(home), str(n_events),
                                         str(per)], check=True, capture_output=True, text=True).stdout)
        log(f"generated {gen}")
        figures = json.loads(kernel_run(kc, TABLE.format(home=str(home), reps=15 if quick else 30)).splitlines()[-1])
        kernel_run(kc, "scf_nb.shutdown()")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    quick_scale = f" [quick: {n_events // 1000}k ev, {n_events * per // 10**6}M lines]"
    figures["scale"] = "" if n_events == 1_000_000 else quick_scale
    return figures


def pane_figures(kc: Any, rate: int, seconds: float) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="scf_nb-bench-pane-"))
    try:
        out = kernel_run(kc, f"import scf_nb, scf_nb.widgets\nscf_nb.configure(home={str(home)!r})\n"
                             f"scf_nb.create_function('spew', {SPEW!r}, async_run=True, timeout=120)\n"
                             f"ev = scf_nb.invoke('spew', {{'rate': {rate}, 'seconds': {seconds}}})\n"
                             f"pane = scf_nb.widgets.log_pane(ev.request_id)\n"
                             f"print(pane.html.model_id, [w.model_id for w in (pane, *pane.children)])")
        html_id, *_ = out.split(maxsplit=1)
        ids = set(re.findall(r"'(\w+)'", out))
        updates, others = [], []
        end = time.monotonic() + seconds + 30
        newest = re.compile(r"(\d+\.\d+) (\d+)</span>\n</pre>")
        while time.monotonic() < end:
            try:
                msg = kc.get_iopub_msg(timeout=3)
            except Exception:  # queue.Empty: nothing for 3 s; the event has ended by then
                if updates and time.time() - updates[-1][0] > 2:
                    break
                continue
            now = time.time()
            content = msg["content"]
            if msg["msg_type"] != "comm_msg" or content.get("comm_id") not in ids:
                continue
            value = content["data"].get("state", {}).get("value")
            found = newest.search(value) if content["comm_id"] == html_id and value else None
            if found:
                updates.append((now, float(found.group(1)), int(found.group(2))))
            else:
                others.append(now)
        n = json.loads(kernel_run(kc, "import json\nprint(json.dumps([ev.result(timeout=60), pane.window.last_seq, "
                                      "pane.messages]))").strip())
        kernel_run(kc, "pane.close()\nscf_nb.shutdown()")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"updates": updates, "others": others, "printed": n[0], "last_seq": n[1], "pane_messages": n[2]}


def run(quick: bool) -> list[dict]:
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3")
    try:
        kc.wait_for_ready(timeout=60)
        t = table_figures(kc, quick)
        p = pane_figures(kc, 10_000, 5 if quick else 10)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    return rows(t, p)


def rows(t: dict[str, Any], p: dict[str, Any]) -> list[dict]:
    scale = t["scale"]
    updates = p["updates"]
    lags = [(arrived - printed) * 1000 for arrived, printed, _ in updates]
    first, last = updates[0][0], updates[-1][0]
    per_second: dict[int, int] = {}
    for when in [u[0] for u in updates] + p["others"]:
        per_second[int(when - first)] = per_second.get(int(when - first), 0) + 1
    span = max(last - first, 1e-9)
    rate = {"p50": (len(updates) + len(p["others"])) / span, "p95": max(per_second.values())}
    shown_all = updates[-1][2] == p["printed"] - 1 and p["last_seq"] == p["printed"]
    log(f"pane: {len(updates)} updates in {span:.1f} s, lag p50 {sorted(lags)[len(lags) // 2]:.0f} ms; "
        f"printed {p['printed']}, pane last_seq {p['last_seq']}")
    return [
        row("10a", "event table refresh, same 50-row page (query + redraw)" + scale, "ms", stats(t["steady"]),
            check=("p95", "<=", 50.0), target="<= 50 ms", note=f"in the kernel; first build {t['build']:.0f} ms"),
        row("10b", "event table: next page (query + redraw of its 50 lines)" + scale, "ms", stats(t["pages"]),
            check=("p95", "<=", 50.0), target="<= 50 ms"),
        row("10c", "event table: a status filter clicked (refresh)" + scale, "ms", stats(t["flip"]),
            check=("p95", "<=", 50.0), target="<= 50 ms"),
        row("10d", "log pane at 10,000 lines/s: newest line's lag at the front end", "ms", stats(lags),
            check=("max", "<=", 1000.0), target="<= 1 s",
            note=f"{p['printed']:,} lines; every line reached the pane: {shown_all}"),
        row("10e", "log pane at 10,000 lines/s: widget messages per second (mean; p95 col: worst second)", "msg/s",
            rate, check=("p95", "<=", 11.0), target="~10 msg/s",
            note=f"{len(updates)} updates + {len(p['others'])} other messages over {span:.1f} s"),
    ]
