"""The Event Management page on a big store: what one page load and one refresh cost, in the browser and per
REST call the page makes.

    python bench/storegen.py HOME 1000000 10        # 1M events, 10M log lines (about a minute here)
    python bench/b_page.py HOME [--rounds 20]       # prints JSON

Starts a ``jupyter server`` (loopback, a token, the extension enabled as an install enables it) hosting the
engine of HOME, then:
- times each REST call of a page load or refresh (``urllib``, token header; p50/p95 over ``--rounds``): the
  overview, the first page of 50 with the total, a filtered page (function + status), the last page (offset
  near the total), a RequestId filter, the function list;
- in headless chromium: from ``goto`` to the first table drawn (HTML, script, style, the page's three
  fetches), over 5 loads; then one refresh pushed by the change stream: from an ``invoke`` over REST to its
  row drawn in the table, and the browser's own timing of that refresh's fetches (Resource Timing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "extension" / "jupyter_server_config.d" / "scf_nb.json"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@contextmanager
def server(home: Path, work: Path) -> Iterator[tuple[str, str]]:
    """A jupyter server hosting ``home``'s engine: (url, token); stopped afterwards."""
    config = work / "config" / "jupyter_server_config.d"
    config.mkdir(parents=True)
    shutil.copy(CONFIG, config / CONFIG.name)
    (work / "root").mkdir()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = uuid.uuid4().hex
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(work / "config"), "SCF_NB_HOME": str(home),
           "JUPYTER_RUNTIME_DIR": str(work / "runtime"), "PYTHONPATH": str(ROOT)}
    env.pop("SCF_NB_SERVER", None)
    log = open(work / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root",
                             "--ip=127.0.0.1", f"--port={port}", "--ServerApp.port_retries=0",
                             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={work / 'root'}"],
                            stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                get(url, token, "engine")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit((work / "server.log").read_text()[-3000:]) from None
                time.sleep(0.2)
        yield url, token
    finally:
        proc.terminate()
        proc.wait(120)
        log.close()


def get(url: str, token: str, path: str, args: dict[str, Any] | None = None, body: Any = None) -> Any:
    query = urllib.parse.urlencode({k: json.dumps(v) for k, v in (args or {}).items()})
    req = urllib.request.Request(f"{url}scf/api/{path}{'?' + query if query else ''}",
                                 data=None if body is None else json.dumps(body).encode(),
                                 headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with OPENER.open(req, timeout=120) as answer:
        return json.loads(answer.read())


def timed(fn: Callable[[], Any], rounds: int) -> dict[str, float]:
    fn()  # the first call warms DuckDB's caches; it is reported apart
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return {"p50_ms": round(statistics.median(times) * 1000, 2),
            "p95_ms": round(times[int(0.95 * (len(times) - 1))] * 1000, 2), "second_call_ms": round(first * 1000, 2)}


def rest_calls(url: str, token: str, rounds: int) -> dict[str, Any]:
    total = get(url, token, "events/count")["total"]
    some = get(url, token, "events", {"limit": 1, "offset": total // 2})["events"]["data"][0][0]
    page = {"limit": 50, "total": True}
    calls: dict[str, Callable[[], Any]] = {
        "overview": lambda: get(url, token, "overview"),
        "first page of 50 + total": lambda: get(url, token, "events", {**page, "offset": 0}),
        "function + status page + total": lambda: get(url, token, "events", {**page, "function": "fn03",
                                                                              "status": ["FAILED"], "offset": 0}),
        "last page as the page reads it (ASC, offset 0) + total": lambda: get(url, token, "events", {
            **page, "order": "ASC", "offset": 0}),
        "middle page (offset total/2, the worst) + total": lambda: get(url, token, "events", {
            **page, "offset": total // 2}),
        "last page by a DESC offset (what the page avoids)": lambda: get(url, token, "events", {
            **page, "offset": total - 50}),
        "request_id filter + total": lambda: get(url, token, "events", {**page, "request_id": some}),
        "functions": lambda: get(url, token, "functions"),
    }
    return {"events_stored": total, **{name: timed(fn, rounds) for name, fn in calls.items()}}


def browser_figures(url: str, token: str) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(120_000)
            loads = []
            for i in range(5):
                t = time.perf_counter()
                page.goto(f"{url}scf/events?token={token}" if i == 0 else f"{url}scf/events")
                page.wait_for_selector("#events tbody tr[data-request-id]")
                page.wait_for_selector("#counts .count")
                loads.append(time.perf_counter() - t)
            page.wait_for_selector("#live.on")
            get(url, token, "functions", body={"name": "bench_page", "code": "def main_handler(e, c):\n    return 1\n",
                                               "async_run": True})
            refreshes, fetches = [], []
            for _ in range(4):
                time.sleep(1.5)  # past the page's refresh throttle (1 s): the figure is one refresh, not the wait
                page.evaluate("() => performance.clearResourceTimings()")
                t = time.perf_counter()
                rid = get(url, token, "invoke", body={"function": "bench_page", "event": {}})["request_id"]
                page.wait_for_selector(f"#events tr[data-request-id='{rid}']")
                refreshes.append(round((time.perf_counter() - t) * 1000, 1))
                fetches.append(page.evaluate("""() => performance.getEntriesByType('resource')
                    .filter(e => e.name.includes('/scf/api/events?') || e.name.includes('/scf/api/overview'))
                    .map(e => [new URL(e.name).pathname, Math.round(e.duration * 10) / 10])"""))
            text = page.locator("#range").inner_text()
            page.click("#last")
            page.wait_for_function(f"() => document.querySelector('#range').textContent !== {json.dumps(text)}")
            last = page.locator("#range").inner_text()
            t = time.perf_counter()
            page.click("#prev")  # the page before the last: read from the oldest end too
            page.wait_for_function(f"() => document.querySelector('#range').textContent !== {json.dumps(last)}")
            older_page = time.perf_counter() - t
        finally:
            browser.close()
    return {"page_load_to_table_ms": [round(x * 1000, 1) for x in loads],
            "page_load_p50_ms": round(statistics.median(loads) * 1000, 1),
            "invoke_to_row_drawn_ms": refreshes[1:], "first_invoke_to_row_drawn_ms": refreshes[0],
            "older_page_click_to_drawn_ms": round(older_page * 1000, 1), "refresh_fetches_ms": fetches[1:],
            "range": text, "last_range": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("home", type=Path)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scf_nb_b_page_"))
    try:
        with server(args.home.resolve(), work) as (url, token):
            out = {"rest": rest_calls(url, token, args.rounds), "browser": browser_figures(url, token)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
