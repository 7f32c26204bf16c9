"""The magics in a real Jupyter kernel (ipykernel via jupyter_client): with ipywidgets they show the notebook
views (widget outputs), without it they fall back to text; and a view re-run after a kernel restart shows the
event's whole history from the store."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import kill_quietly, pid_alive, wait_until

jupyter_client = pytest.importorskip("jupyter_client.manager")
pytest.importorskip("ipywidgets")

WIDGET = "application/vnd.jupyter.widget-view+json"
FUNCTION = """%%scf_function talk --async
import os, sys, time
def main_handler(event, context):
    for i in range(event.get("lines", 3)):
        print("line", i, flush=True)
    print("oops", file=sys.stderr, flush=True)
    print("pid", os.getpid(), flush=True)
    time.sleep(event.get("seconds", 0))
    return {"done": True}
"""


@pytest.fixture
def kernel(home: Path) -> Iterator[Any]:
    km, kc = jupyter_client.start_new_kernel(kernel_name="python3", cwd=str(home.parent))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc: Any, code: str) -> dict[str, Any]:
    """Execute a cell; what it gave: ``text`` (streams and text results) and ``mimes`` (the MIME types of its
    results and displays, in order). Fails the test on an error."""
    msg_id = kc.execute(code)
    text, mimes = [], []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "error":
            pytest.fail(f"cell failed: {content['ename']}: {content['evalue']}\n{code}")
        if kind == "stream":
            text.append(content["text"])
        elif kind in ("execute_result", "display_data"):
            mimes.append(WIDGET if WIDGET in content["data"] else "text/plain")
            if WIDGET not in content["data"]:
                text.append(content["data"].get("text/plain", ""))
        elif kind == "status" and content["execution_state"] == "idle":
            return {"text": "".join(text), "mimes": mimes}


def setup(kc: Any, home: Path, before: str = "") -> None:
    kc.wait_for_ready(timeout=60)
    run(kc, f"{before}import scf_nb\nscf_nb.configure(home={str(home)!r})\n%load_ext scf_nb")
    assert "is ready" in run(kc, FUNCTION)["text"]


def test_magics_show_views_in_a_notebook_kernel(kernel: Any, home: Path) -> None:
    _, kc = kernel
    setup(kc, home)
    out = run(kc, "ev = %scf_invoke talk --event '{\"lines\": 5}'\nev.wait(60)")
    assert out["mimes"] == [WIDGET, "text/plain"] and "FINISHED" in out["text"]  # the event view, then wait()
    assert run(kc, "%scf_events")["mimes"] == [WIDGET]
    assert run(kc, "%scf_logs ev --follow")["mimes"] == [WIDGET]  # the pane alone; the cell returns at once
    assert run(kc, "%scf_logs ev --follow --stream stderr")["mimes"] == [WIDGET]  # a pane of stderr alone
    assert run(kc, "%scf_overview")["mimes"] == [WIDGET]
    assert "line 4" in run(kc, "%scf_logs ev")["text"]  # without --follow: the lines as text, as before
    out = run(kc, "%scf_events --status NOPE")  # no table: the one-line UsageError the text path gives
    expected = run(kc, "try:\n    scf_nb.list_events(status=['NOPE'])\nexcept scf_nb.ScfError as e:\n    print(e)")
    assert out["mimes"] == [] and out["text"].strip() == f"UsageError: {expected['text'].strip()}", out


def test_magics_fall_back_to_text_without_ipywidgets(kernel: Any, home: Path) -> None:
    _, kc = kernel
    setup(kc, home, before="import sys\nsys.modules['ipywidgets'] = None  # as if it were not installed\n")
    out = run(kc, "ev = %scf_invoke talk\nev.wait(60)")
    assert out["mimes"] == ["text/plain"]
    events = run(kc, "%scf_events")
    assert events["mimes"] == ["text/plain"] and "request_id" in events["text"] and "FINISHED" in events["text"]
    follow = run(kc, "%scf_logs ev --follow")["text"]
    assert "line 2" in follow and "oops" in follow and follow.rstrip().endswith("-- FINISHED")
    assert "FINISHED" in run(kc, "%scf_overview")["text"]
    assert run(kc, "'scf_nb.widgets' in sys.modules")["text"] == "False"


def test_a_view_rerun_after_a_kernel_restart_shows_the_whole_history(kernel: Any, home: Path) -> None:
    km, kc = kernel
    setup(kc, home)
    rid = ast.literal_eval(run(kc, "ev = %scf_invoke talk --event '{\"lines\": 50, \"seconds\": 600}'\n"
                                   "ev.request_id")["text"].split("\n")[-1])
    pid_line = wait_until(lambda: ast.literal_eval(run(kc, "[l for l in ev.logs().line if l.startswith('pid ')]")
                                                   ["text"]), what="the event's lines")
    instance_pid = int(pid_line[0].split()[1])
    try:
        km.restart_kernel(now=True)  # SIGKILL: the engine dies with its event running
        kc.wait_for_ready(timeout=60)
        wait_until(lambda: not pid_alive(instance_pid), what="the dead engine's instance to die with it")
        run(kc, f"import scf_nb, scf_nb.widgets\nscf_nb.configure(home={str(home)!r})")
        out = run(kc, f"v = scf_nb.widgets.event_view({rid!r})\nv")
        assert out["mimes"] == [WIDGET]
        state = wait_until(lambda: ast.literal_eval(run(kc, "(v.finished and v.pane.ended, v.status, "
                                                            "v.pane.window.last_seq)")["text"])[0] and
                           ast.literal_eval(run(kc, "(v.status, v.pane.window.last_seq, v.outcome.value)")["text"]),
                           what="the re-run view to show the end")
        status, lines, outcome = state
        assert status == "FAILED" and lines == 52 and "EngineLost" in outcome
    finally:
        kill_quietly(instance_pid)
