"""The Event Management page (``<base_url>scf/events``) in headless chromium, against a real ``jupyter server``
subprocess with the extension (``server_support.jupyter_server``): filters, paging, the live log view, Terminate,
refreshes from the change stream, markup in data shown as text, and no page (or asset) without a login.
Screenshots of each step go to ``test-artifacts/event-page/``."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM_ARGS, chromium, shot
from conftest import GATE
from server_support import Server, jupyter_server

playwright_api = pytest.importorskip("playwright.sync_api")

TICKER = GATE + '''
def main_handler(event, context):
    i = 0
    deadline = time.monotonic() + 120
    while not os.path.exists(event["gate"]) and time.monotonic() < deadline:
        print("tick", i, flush=True)
        if i % 5 == 0:
            print("warn", i, file=sys.stderr, flush=True)
        i += 1
        time.sleep(0.05)
    return {"ticks": i}
'''
SLEEPER = GATE + '''
def main_handler(event, context):
    print("waiting for", event["gate"], flush=True)
    wait_file(event["gate"])
    return "done"
'''
NOOP = "def main_handler(event, context):\n    return event\n"
LOUD = GATE + '''
def main_handler(event, context):
    print("<script>window.__pwned = 1</script>", flush=True)
    print('<img src="x" onerror="window.__pwned = 2">', flush=True)
    for i in range(1, event["lines"] + 1):
        print("line", i, flush=True)
    wait_file(event["gate"])
    raise ValueError("<b>not bold</b>")
'''
FOLDER = "event-page"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with jupyter_server(tmp_path) as s:
        yield s


@pytest.fixture
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


def call(server: Server, method: str, path: str, body: Any = None) -> Any:
    status, answer, _ = server.request(method, path, body)
    assert status == 200, (method, path, status, answer)
    return answer


def create(server: Server, name: str, code: str, **settings: Any) -> None:
    call(server, "POST", "/scf/api/functions", {"name": name, "code": code, "async_run": True, **settings})


def invoke(server: Server, name: str, event: dict[str, Any]) -> str:
    rid: str = call(server, "POST", "/scf/api/invoke", {"function": name, "event": event})["request_id"]
    return rid


def open_page(browser: Any, server: Server, query: str = "") -> Any:
    page = browser.new_page(viewport={"width": 1500, "height": 1000})
    page.set_default_timeout(30_000)
    page.goto(f"{server.url}scf/events?token={server.token}{query}")
    page.wait_for_selector("#live.on")
    return page


def row(rid: str, status: str | None = None) -> str:
    return f"#events tr[data-request-id='{rid}']" + (f"[data-status='{status}']" if status else "")


def shown_rows(page: Any) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        "#events tbody tr[data-request-id]",
        "trs => trs.map(tr => ({rid: tr.dataset.requestId, status: tr.dataset.status,"
        " function: tr.children[1].textContent, error: tr.children[7].textContent}))")
    return rows


def wait_rows(page: Any, check: str) -> None:
    """Until the table's rows (objects: rid, status, fn) pass ``check``, a JS expression over ``rows``."""
    page.wait_for_function(
        "() => { const rows = [...document.querySelectorAll('#events tbody tr[data-request-id]')].map(tr =>"
        " ({rid: tr.dataset.requestId, status: tr.dataset.status, fn: tr.children[1].textContent}));"
        f" return {check}; }}")


def lines_shown(page: Any) -> int:
    n: int = page.locator("#log-lines .line").count()
    return n


def test_filter_follow_terminate(server: Server, browser: Any, tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    create(server, "ticker", TICKER)
    create(server, "sleeper", SLEEPER, concurrency=2)
    create(server, "noop", NOOP)
    done = [invoke(server, "noop", {"n": i}) for i in range(3)]
    call(server, "POST", "/scf/api/wait", {"request_ids": done, "timeout": 30})
    ticker = invoke(server, "ticker", {"gate": str(gates / "ticker")})
    a = invoke(server, "sleeper", {"gate": str(gates / "a")})
    b = invoke(server, "sleeper", {"gate": str(gates / "b")})
    page = open_page(browser, server)
    try:
        events_fetches: list[str] = []
        terminates: list[str] = []
        page.on("request", lambda r: events_fetches.append(r.url) if "/scf/api/events?" in r.url else None)
        page.on("request", lambda r: terminates.append(r.post_data or "") if r.url.endswith("/terminate") else None)
        assert "token" not in page.url  # the login cookie carries on; the token leaves the address bar
        wait_rows(page, "rows.length === 6 && rows.filter(r => r.status === 'RUNNING').length === 3")
        assert page.locator("#counts .count[data-status='FINISHED'] .n").inner_text() == "3"
        shot(page, FOLDER, "1-all")

        page.fill("#f-function", "sleeper")
        page.press("#f-function", "Enter")
        wait_rows(page, "rows.length === 2 && rows.every(r => r.fn === 'sleeper')")
        assert {r["rid"] for r in shown_rows(page)} == {a, b}
        shot(page, FOLDER, "2-function-filter")

        page.click("#clear")
        wait_rows(page, "rows.length === 6")
        page.check("#f-status input[value='FINISHED']")
        wait_rows(page, "rows.length === 3 && rows.every(r => r.status === 'FINISHED')")
        assert {r["rid"] for r in shown_rows(page)} == set(done)
        page.check("#f-status input[value='RUNNING']")
        wait_rows(page, "rows.length === 6")
        page.click("#counts .count[data-status='RUNNING']")  # a count's chip: only that status
        wait_rows(page, "rows.length === 3 && rows.every(r => r.status === 'RUNNING')")
        shot(page, FOLDER, "3-status-filter")
        page.click("#clear")
        wait_rows(page, "rows.length === 6")

        # the live log of the running ticker: lines arrive, stderr told apart; lines alone refresh no row
        page.click(f"{row(ticker)} .open-log")
        page.wait_for_function("() => document.querySelectorAll('#log-lines .line').length >= 5")
        fetched = len(events_fetches)
        seen = lines_shown(page)
        page.wait_for_function(f"() => document.querySelectorAll('#log-lines .line').length >= {seen + 30}")
        assert page.locator("#log-lines .line.stderr").count() >= 1
        assert page.locator("#log-status .status").inner_text() == "RUNNING"
        assert len(events_fetches) - fetched <= 1, events_fetches[fetched:]
        shot(page, FOLDER, "4-live-log")

        # Terminate (graceful) on the ticker: pending, sent once; its row turns ABORTED while b finishes
        page.check("#grace")
        page.click(f"{row(ticker)} button.terminate")
        page.wait_for_selector(f"{row(ticker)} button.terminate:disabled")
        (gates / "b").write_text("")
        page.wait_for_selector(row(ticker, "ABORTED"))
        page.wait_for_selector(row(b, "FINISHED"))
        page.wait_for_function("() => document.querySelector('#log-status .status').textContent === 'ABORTED'")
        assert len(terminates) == 1 and json.loads(terminates[0]) == {"request_id": ticker, "grace": True,
                                                                      "wait": False}
        assert page.locator(row(a)).get_attribute("data-status") == "RUNNING"
        # the counts and the rows of one refresh are two requests, answered apart: a count read just before the
        # terminate's commit is put right by the refresh that commit's change notice brings
        page.wait_for_function("""() => document.querySelector("#counts .count[data-status='ABORTED'] .n")
                                          ?.textContent === '1'""")
        shot(page, FOLDER, "5-terminated")
        (gates / "a").write_text("")
        page.wait_for_selector(f"{row(a, 'FINISHED')}")
        assert call(server, "GET", f"/scf/api/events/{ticker}/status")["status"] == "ABORTED"
    finally:
        shot(page, FOLDER, "last-filter-follow-terminate")
        for name in ("ticker", "a", "b"):
            (gates / name).write_text("")


def test_paging_and_filters(server: Server, browser: Any) -> None:
    create(server, "noop", NOOP)
    create(server, "other", NOOP)
    rids = [invoke(server, "noop", {"n": i}) for i in range(45)]
    other = invoke(server, "other", {})
    call(server, "POST", "/scf/api/wait", {"request_ids": [*rids, other], "timeout": 60})
    page = open_page(browser, server)
    try:
        pages: list[str] = []
        page.on("request", lambda r: pages.append(r.url) if "/scf/api/events?" in r.url else None)
        page.select_option("#limit", "20")
        page.fill("#f-function", "noop")
        page.press("#f-function", "Enter")
        seen: list[str] = []
        for first, last in ((1, 20), (21, 40), (41, 45)):
            page.wait_for_function(f"() => document.querySelector('#range').textContent === '{first}-{last} of 45'")
            seen += [r["rid"] for r in shown_rows(page)]
            shot(page, FOLDER, f"6-page-{first}")
            if last < 45:
                page.click("#next")
        assert page.locator("#next").is_disabled()
        assert seen == rids[::-1]  # newest first, each once
        for url in pages:  # only one page is ever asked for
            assert json.loads(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["limit"][0]) <= 50
        page.click("#first")
        page.wait_for_function("() => document.querySelector('#range').textContent === '1-20 of 45'")
        page.click("#last")
        page.wait_for_function("() => document.querySelector('#range').textContent === '41-45 of 45'")

        page.click("#clear")
        page.fill("#f-request", rids[7])
        page.press("#f-request", "Enter")
        wait_rows(page, f"rows.length === 1 && rows[0].rid === '{rids[7]}'")
        page.click("#clear")
        later = (dt.datetime.now() + dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        page.fill("#f-from", later)
        page.press("#f-from", "Enter")
        page.wait_for_selector("#events td.empty")
        assert page.locator("#range").inner_text() == "0-0 of 0"
        earlier = (dt.datetime.now() - dt.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%S")
        page.fill("#f-from", earlier)
        page.fill("#f-to", later)
        page.press("#f-to", "Enter")
        page.wait_for_function("() => document.querySelector('#range').textContent === '1-20 of 46'")
        shot(page, FOLDER, "7-time-range")
    finally:
        shot(page, FOLDER, "last-paging")


def test_log_view_bounded_and_markup_shown_as_text(server: Server, browser: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    create(server, "loud", LOUD)
    rid = invoke(server, "loud", {"lines": 300, "gate": str(gate)})
    page = open_page(browser, server, "&max_lines=50")
    try:
        page.click(f"{row(rid)} .open-log")
        page.wait_for_function("() => [...document.querySelectorAll('#log-lines .line .seq')]"
                               ".some(s => s.textContent === '302')")
        assert lines_shown(page) == 50  # the newest 50 of 302; the rest stays in the store
        assert page.locator("#log-lines .line .seq").first.inner_text() == "253"
        page.click("#log-earlier")
        page.wait_for_function("() => document.querySelector('#log-lines .line .seq').textContent === '203'")
        assert lines_shown(page) == 50 and "earlier" in page.locator("#log-range").inner_text()
        for first in ("153", "103", "53", "3", "1"):  # a window of 50 back each time, down to line 1
            page.click("#log-earlier")
            page.wait_for_function(f"() => document.querySelector('#log-lines .line .seq').textContent === '{first}'")
        texts = page.locator("#log-lines .line").all_inner_texts()
        assert "<script>window.__pwned = 1</script>" in texts[0]
        assert '<img src="x" onerror="window.__pwned = 2">' in texts[1]
        assert page.locator("#log-earlier").is_disabled()
        shot(page, FOLDER, "8-markup-as-text")
        page.click("#log-latest")
        page.wait_for_function("() => document.querySelector('#log-lines .line .seq').textContent === '253'")

        gate.write_text("")
        page.wait_for_selector(row(rid, "FAILED"))
        error = page.locator(f"{row(rid)} td.error").inner_text()
        assert error == "ValueError: <b>not bold</b>"
        page.wait_for_function("() => document.querySelector('#log-status .status').textContent === 'FAILED'")
        assert page.locator("#log-lines script, #log-lines img, #events b, #events script").count() == 0
        assert page.evaluate("() => window.__pwned") is None
        shot(page, FOLDER, "9-failed")
    finally:
        gate.write_text("")
        shot(page, FOLDER, "last-log-view")


def raw_get(server: Server, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
    """One GET that does not follow redirects."""
    parts = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=30)
    conn.request("GET", path, headers=headers or {})
    answer = conn.getresponse()
    answer.read()
    conn.close()
    return answer


def test_page_needs_a_login_and_writes_need_xsrf(server: Server, browser: Any) -> None:
    for path in ("/scf/events", "/scf/events?token=wrong", "/scf/events/static/events.js"):
        answer = raw_get(server, path)
        assert answer.status in (302, 403), (path, answer.status)
        if answer.status == 302:
            assert "/login" in answer.getheader("Location", ""), path
    ok = raw_get(server, "/scf/events", {"Authorization": f"token {server.token}"})
    assert ok.status == 200
    assert "script-src 'self'" in ok.getheader("Content-Security-Policy", "")
    assert raw_get(server, "/scf/events/static/events.js", {"Authorization": f"token {server.token}"}).status == 200

    page = open_page(browser, server)
    try:
        create(server, "noop", NOOP)
        rid = invoke(server, "noop", {})
        call(server, "POST", "/scf/api/wait", {"request_ids": [rid], "timeout": 30})
        # the page's login cookie alone is not enough for a write: the X-XSRFToken header must come with it
        status = page.evaluate("""async (rid) => (await fetch('/scf/api/terminate', {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: JSON.stringify({request_id: rid})})).status""", rid)
        assert status == 403
        answer = page.evaluate("""async (rid) => {
            const xsrf = document.cookie.split('; ').find(c => c.startsWith('_xsrf=')).slice(6);
            const r = await fetch('/scf/api/terminate', {method: 'POST', body: JSON.stringify({request_id: rid}),
                headers: {'Content-Type': 'application/json', 'X-XSRFToken': decodeURIComponent(xsrf)}});
            return [r.status, await r.json()]; }""", rid)
        assert answer[0] == 409 and answer[1]["error"]["code"] == "FailedOperation.AsyncEventStatus"
        log = server.log.read_text()
        assert re.search(r"Event Management page at http://127\.0\.0\.1:\d+/scf/events", log), log[-2000:]
    finally:
        shot(page, FOLDER, "last-auth")
