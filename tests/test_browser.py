"""End to end in a real browser: JupyterLab (headless, 127.0.0.1, a token, settings and workspaces of its own)
driven by Debian's chromium through Playwright. A test notebook is opened and run; then, in the page: the log
pane of a running event grows, its status badge changes by itself, a click on Terminate in the event table
turns that row ABORTED while a sibling event finishes, and the overview picture renders. Screenshots of each
step go to ``test-artifacts/browser/``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import CHROMIUM_ARGS, chromium
from processes import free_port, kill_tagged, tagged_env, wait_for_server

playwright_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("jupyterlab")
pytest.importorskip("ipywidgets")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"


def cell(source: str) -> dict[str, Any]:
    return {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": source}


def notebook(home: Path, gates: Path) -> dict[str, Any]:
    ticker = ("%%scf_function ticker --async\nimport os, sys, time\ndef main_handler(event, context):\n"
              "    i = 0\n    while not os.path.exists(event['gate']):\n"
              "        print('tick', i, flush=True)\n        if i % 5 == 0:\n"
              "            print('warn', i, file=sys.stderr, flush=True)\n"
              "        i += 1\n        time.sleep(0.1)\n    return {'ticks': i}\n")
    sleeper = ("%%scf_function sleeper --async --concurrency 2\nimport os, time\ndef main_handler(event, context):\n"
               "    print('waiting for', event['gate'], flush=True)\n"
               "    while not os.path.exists(event['gate']):\n        time.sleep(0.02)\n    return 'done'\n")
    cells = [
        cell(f"import json, scf_nb\nscf_nb.configure(home={str(home)!r})\n%load_ext scf_nb"),
        cell(ticker),
        cell(sleeper),
        cell(f"ev = %scf_invoke ticker --event '{{\"gate\": \"{gates / 'ticker'}\"}}'"),
        cell(f"a = scf_nb.invoke('sleeper', {{'gate': {str(gates / 'a')!r}}})\n"
             f"b = scf_nb.invoke('sleeper', {{'gate': {str(gates / 'b')!r}}})\n"
             f"ids = [ev.request_id, a.request_id, b.request_id]\n"
             f"_ = open({str(gates / 'ids.json')!r}, 'w').write(json.dumps(ids))"),
        # (the report: which event the browser said it drew on each line, asked for at the end of the test)
        cell(f"table = %scf_events --function sleeper\n"
             f"import os, threading, time\n"
             f"def report():\n"
             f"    while not os.path.exists({str(gates / 'report')!r}):\n"
             f"        time.sleep(0.05)\n"
             f"    shown = [[line.request_id, line.shown_id, bool(line.toggle.drawn)] for line in table.lines]\n"
             f"    open({str(gates / 'shown.json')!r}, 'w').write(json.dumps(shown))\n"
             f"threading.Thread(target=report, daemon=True).start()\n"
             f"table"),
        cell("%scf_overview"),
    ]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, Any]]:
    root, settings, workspaces = tmp_path / "root", tmp_path / "settings", tmp_path / "workspaces"
    for d in (root, settings, workspaces):
        d.mkdir()
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))  # every cell stays in the DOM
    news = settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port, token = free_port(), uuid.uuid4().hex
    tag, env = tagged_env()
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
         f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={settings}", f"--LabApp.workspaces_dir={workspaces}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_server(url, token, server, tmp_path / "lab.log")
        yield {"url": url, "token": token, "root": root}
    finally:
        server.terminate()  # it shuts its kernels down
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)
        kill_tagged(tag)  # anything left: kernels, their engines' instances
        log.close()


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_notebook_views_live_in_a_real_browser(lab: dict[str, Any], tmp_path: Path) -> None:
    gates = tmp_path / "gates"
    gates.mkdir()
    (lab["root"] / "views.ipynb").write_text(json.dumps(notebook(tmp_path / "store", gates)))
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            try:
                drive(page, lab, gates)
            finally:
                shot(page, "last")
        finally:
            browser.close()
        for name in ("ticker", "a", "b", "report"):  # nothing left waiting, whatever happened
            (gates / name).write_text("")


PENDING_WATCH = """rid => {
  window.scfPendingSeen = false;
  const box = [...document.querySelectorAll('.scf-table .scf-row-box')]
    .find(b => b.querySelector(`.scf-row[data-rid='${rid}']`));
  const button = box.querySelector('.scf-terminate');
  new MutationObserver(() => {
    if (button.disabled && button.textContent.includes('terminating')) window.scfPendingSeen = true;
  }).observe(button, {attributes: true, childList: true, subtree: true, characterData: true});
}"""


def drive(page: Any, lab: dict[str, Any], gates: Path) -> None:
    page.set_default_timeout(60_000)
    page.goto(f"{lab['url']}/lab/tree/views.ipynb?token={lab['token']}")
    page.wait_for_selector("text=| Idle")
    page.click(".jp-Notebook .jp-Cell >> nth=0")
    page.click("li.lm-MenuBar-item:has-text('Run')")
    page.click(".lm-Menu-item:has-text('Run All Cells')")
    ids = gates / "ids.json"
    deadline = time.monotonic() + 60
    while not ids.exists():
        assert time.monotonic() < deadline, "the notebook's cells did not run"
        time.sleep(0.1)
    ticker, a, b = json.loads(ids.read_text())
    view = page.locator(".scf-eventview").first
    badge = view.locator(".scf-head-line .scf-badge")

    # the log pane of the running event grows, stdout and stderr told apart; the badge says RUNNING
    lines = view.locator(".scf-logpane .scf-line")
    page.wait_for_function("() => document.querySelectorAll('.scf-eventview .scf-logpane .scf-line').length >= 5")
    seen = lines.count()
    page.wait_for_function(f"() => document.querySelectorAll('.scf-eventview .scf-logpane .scf-line').length"
                           f" >= {seen + 10}")
    assert view.locator(".scf-logpane .scf-stderr").count() >= 1
    page.wait_for_function("() => document.querySelector('.scf-eventview .scf-head-line .scf-badge')"
                           ".textContent === 'RUNNING'")
    assert ticker in view.locator(".scf-rid").inner_text()
    shot(page, "1-running")

    # the badge changes by itself when the event ends (no cell runs)
    (gates / "ticker").write_text("")
    page.wait_for_function("() => document.querySelector('.scf-eventview .scf-head-line .scf-badge')"
                           ".textContent === 'FINISHED'")
    # the notice comes with the done callback, a widget message of its own after the badge's: wait for it too
    page.wait_for_function("() => (document.querySelector('.scf-eventview .scf-finished') || {}).textContent"
                           "?.includes('finished:')")
    assert badge.inner_text() == "FINISHED" and "finished:" in view.locator(".scf-finished").inner_text()
    assert "ticks" in view.locator(".scf-outcome").inner_text()
    shot(page, "2-finished")

    # the event table: Terminate on one row turns it ABORTED, its sibling finishes
    table = page.locator(".scf-table")
    row_a = table.locator(f".scf-row-box:has(.scf-row[data-rid='{a}'])")
    page.wait_for_selector(f".scf-table .scf-row[data-rid='{a}'][data-status='RUNNING']")
    page.wait_for_selector(f".scf-table .scf-row[data-rid='{b}'][data-status='RUNNING']")
    row_a.locator(".scf-terminate").scroll_into_view_if_needed()
    shot(page, "3-table")
    # The pending state ("terminating...", disabled) lasts until the refresh that shows ABORTED, which can come
    # in the same frame: a MutationObserver sees every change of the button, however short-lived.
    page.evaluate(PENDING_WATCH, a)
    row_a.locator(".scf-terminate").click()
    page.wait_for_function("() => window.scfPendingSeen === true")
    (gates / "b").write_text("")
    page.wait_for_selector(f".scf-table .scf-row[data-rid='{a}'][data-status='ABORTED']")
    page.wait_for_selector(f".scf-table .scf-row[data-rid='{b}'][data-status='FINISHED']")
    assert table.locator(".scf-count[data-status='ABORTED']").inner_text() == "1"
    row_a.scroll_into_view_if_needed()
    shot(page, "4-terminated")

    # a row's "log" toggle (its line's own, told by the browser which event it drew there) opens that log
    row_b = table.locator(f".scf-row-box:has(.scf-row[data-rid='{b}'])")
    row_b.locator(".scf-select").click()
    page.wait_for_selector(f".scf-table .scf-row.scf-selected[data-rid='{b}']")
    page.wait_for_selector(".scf-table .scf-logpane .scf-line")
    assert table.locator(".scf-row.scf-selected").count() == 1
    (gates / "report").write_text("")  # each line's toggle heard from the browser which event it drew there
    shown = gates / "shown.json"
    deadline = time.monotonic() + 30
    while not shown.exists():
        assert time.monotonic() < deadline, "the kernel did not report the lines"
        time.sleep(0.05)
    lines = json.loads(shown.read_text())
    assert sorted(rid for rid, _, _ in lines) == sorted([a, b])
    assert all(drawn and seen == rid for rid, seen, drawn in lines), lines

    # the overview picture renders
    picture = page.locator("img.scf-overview-picture")
    picture.scroll_into_view_if_needed()
    page.wait_for_function("() => { const i = document.querySelector('img.scf-overview-picture');"
                           " return i && i.complete && i.naturalWidth > 500; }")
    shot(page, "5-overview")
