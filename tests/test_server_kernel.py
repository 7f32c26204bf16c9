"""The engine hosted by a real ``jupyter server`` (a subprocess, the extension enabled by the file an install
ships): a kernel that server starts (through its own kernels API) uses it over HTTP, an event outlives the
kernel's restart, another process of the same home finds it, and stopping the server stops the instances and
leaves every record and line in the store."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until
from server_support import Server, jupyter_server, leftovers
from test_kernel import run as run_cell

import scf_nb

jupyter_client = pytest.importorskip("jupyter_client")

WORK = '''
import os, time
def main_handler(event, context):
    for i in range(event.get("lines", 1)):
        print("line", i, flush=True)
    deadline = time.monotonic() + 120
    while event.get("gate") and not os.path.exists(event["gate"]) and time.monotonic() < deadline:
        time.sleep(0.01)
    print("done", flush=True)
    return {"pid": os.getpid(), "pair": (1, 2)}
'''


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    with jupyter_server(tmp_path) as srv:
        yield srv


class Kernel:
    """A kernel started by the server (``POST /api/kernels``), driven over its connection file."""

    def __init__(self, server: Server) -> None:
        self.server = server
        status, answer, _ = server.request("POST", "/api/kernels", {"name": "python3"})
        assert status == 201, answer
        self.id = answer["id"]
        self.client = self._connect()

    def _connect(self) -> Any:
        kc = jupyter_client.BlockingKernelClient(connection_file=str(self.server.runtime / f"kernel-{self.id}.json"))
        kc.load_connection_file()
        kc.start_channels()
        kc.wait_for_ready(timeout=60)
        return kc

    def restart(self) -> None:
        self.client.stop_channels()
        status, answer, _ = self.server.request("POST", f"/api/kernels/{self.id}/restart")
        assert status == 200, answer
        self.client = self._connect()

    def run(self, code: str) -> str:
        return run_cell(self.client, code)

    def value(self, code: str) -> Any:
        return ast.literal_eval(self.run(code).strip())

    def close(self) -> None:
        self.client.stop_channels()
        self.server.request("DELETE", f"/api/kernels/{self.id}")


def script(code: str, home: Path) -> Any:
    """Run ``code`` in a plain Python process with ``SCF_NB_HOME=home`` (no server in its environment); the
    value of its last printed line."""
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("SCF_NB_SERVER",)}
    env.update(SCF_NB_HOME=str(home), PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_kernel_of_the_server_uses_its_engine_and_events_outlive_a_restart(server: Server,
                                                                            tmp_path: Path) -> None:
    server_pid = server.proc.pid
    kernel = Kernel(server)
    try:
        info = kernel.value("import scf_nb, json\nscf_nb.engine_info()")
        assert info["where"] == "server" and info["found"] == "env" and info["pid"] == server_pid
        assert info["home"] == str(server.home) and info["backend"] == "loky"
        assert info["url"] == server.url and info["store"] == str(server.home / "scf_nb.duckdb")
        gate = tmp_path / "gate"
        kernel.run(f"scf_nb.create_function('work', {WORK!r}, async_run=True)")
        rid = kernel.value(f"ev = scf_nb.invoke('work', {{'lines': 3, 'gate': {str(gate)!r}}})\nev.request_id")
        wait_until(lambda: kernel.value(f"scf_nb.get_event_status({rid!r})") == "RUNNING", 60, "the event to run")

        kernel.restart()
        assert kernel.value("import scf_nb\nscf_nb.get_event_status(" + repr(rid) + ")") == "RUNNING"
        gate.touch()
        result = kernel.value(f"scf_nb.get_event({rid!r}).result(timeout=60)")
        assert result["pair"] == (1, 2)
        assert kernel.value(f"list(scf_nb.logs({rid!r}).line)") == ["line 0", "line 1", "line 2", "done"]
        assert kernel.value(f"[l.line for l in scf_nb.follow({rid!r})]")[-1] == "done"

        # a plain script of the same home, without the server's environment: the discovery file
        other = script("""
            import json, scf_nb
            info = scf_nb.engine_info()
            print(json.dumps([info["where"], info["found"], info["pid"], list(scf_nb.list_events().request_id)]))
        """, server.home)
        assert other == ["server", "discovery file", server_pid, [rid]]
    finally:
        kernel.close()


def test_stopping_the_server_stops_instances_and_flushes_the_store(server: Server, tmp_path: Path) -> None:
    from scf_nb.clients.http import HttpClient

    client = HttpClient(server.url, server.token)
    client.create_function("work", WORK, async_run=True)
    finished = [client.invoke("work", {"lines": 50}) for _ in range(5)]
    client.wait(finished, timeout=60)
    running = client.invoke("work", {"lines": 2, "gate": str(tmp_path / "never")})
    wait_until(lambda: len(client.logs(running.request_id)) == 2, 60, "the running event's lines")
    client.close()
    assert (server.home / "server.json").exists()

    assert server.stop() == 0
    assert not (server.home / "server.json").exists()  # removed at a clean stop
    wait_until(lambda: leftovers(server) == [], 30, "every process of the server to be gone")

    scf_nb.configure(home=server.home)
    try:
        assert scf_nb.engine_info()["where"] == "embedded"
        for ev in finished:
            assert scf_nb.get_event_status(ev.request_id) == "FINISHED"
            assert len(scf_nb.logs(ev.request_id)) == 51
        info = scf_nb.get_event(running.request_id).info()
        assert info["status"] == "FAILED" and info["error_type"] == "EngineStopped"
        assert scf_nb.logs(running.request_id)["line"].tolist() == ["line 0", "line 1"]
        assert scf_nb.count_events() == 6
    finally:
        scf_nb.shutdown()
