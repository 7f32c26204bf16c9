"""The user story of issue 3 in a real Jupyter kernel (ipykernel via jupyter_client): magics, a RequestId at
once, a finished event and a running one, then a kernel restart. The history, results and logs are still
there, the event that was running is FAILED with a reason, and nothing of the dead engine runs on."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import kill_quietly, pid_alive, wait_until

jupyter_client = pytest.importorskip("jupyter_client.manager")

TRANSCODE = """%%scf_function transcode --async --timeout 7200 --concurrency 2
import os, subprocess, sys, time
def main_handler(event, context):
    print("converting", event["src"])
    child = subprocess.Popen(["sleep", str(event.get("seconds", 0))])
    print("child", child.pid, "instance", os.getpid(), flush=True)
    subprocess.run([sys.executable, "-c", "import sys; print('child output', file=sys.stderr)"])
    child.wait()
    return {"out": event["src"] + ".mp4"}
"""


@pytest.fixture
def kernel(home: Path) -> Iterator[Any]:
    km, kc = jupyter_client.start_new_kernel(kernel_name="python3", cwd=str(home.parent))
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc: Any, code: str) -> str:
    """Execute a cell; its text output (stream + result). Fails the test on an error."""
    msg_id = kc.execute(code)
    out = []
    while True:
        msg = kc.get_iopub_msg(timeout=60)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "error":
            pytest.fail(f"cell failed: {content['ename']}: {content['evalue']}\n{code}")
        if kind == "stream":
            out.append(content["text"])
        elif kind == "execute_result":
            out.append(content["data"]["text/plain"])
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(out)


def test_events_outlive_a_kernel_restart(kernel: Any, home: Path) -> None:
    km, kc = kernel
    kc.wait_for_ready(timeout=60)
    run(kc, f"import scf_nb\nscf_nb.configure(home={str(home)!r})\n%load_ext scf_nb")
    assert "default/transcode ($LATEST, async, timeout 7200 s) is ready" in run(kc, TRANSCODE)

    done_id = ast.literal_eval(run(kc, "ev = %scf_invoke transcode --event '{\"src\": \"a.mov\"}'\n"
                                       "ev.wait(60)\nev.request_id"))
    long_id = ast.literal_eval(run(kc, "long = %scf_invoke transcode --event '{\"src\": \"b.mov\", \"seconds\": 600}'"
                                       "\nlong.request_id"))
    line = wait_until(lambda: ast.literal_eval(run(kc, "[l for l in long.logs().line if l.startswith('child ')]")),
                      what="the long event's child pid")
    _, child, _, instance = line[0].split()
    child_pid, instance_pid = int(child), int(instance)
    try:
        assert long_id in run(kc, "list(scf_nb.list_events(status='RUNNING').request_id)")

        km.restart_kernel(now=True)  # SIGKILL: no clean shutdown of the engine
        kc.wait_for_ready(timeout=60)
        wait_until(lambda: not pid_alive(instance_pid), what="the dead engine's instance to die with it")

        run(kc, f"import scf_nb\nscf_nb.configure(home={str(home)!r})")
        assert ast.literal_eval(run(kc, f"scf_nb.get_event({done_id!r}).result()")) == {"out": "a.mov.mp4"}
        lines = ast.literal_eval(run(kc, f"list(scf_nb.logs({done_id!r}).line)"))
        assert lines[0] == "converting a.mov" and "child output" in lines
        info = ast.literal_eval(run(kc, f"e = scf_nb.get_event({long_id!r}).info()\n"
                                        "{k: e[k] for k in ('status', 'error_type', 'error_message')}"))
        assert info["status"] == "FAILED" and info["error_type"] == "EngineLost"
        assert "stopped before it ended" in info["error_message"]
        wait_until(lambda: not pid_alive(child_pid), what="the event's child process to be killed")
    finally:
        kill_quietly(child_pid)
        kill_quietly(instance_pid)
