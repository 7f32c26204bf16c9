"""A real ``jupyter server`` subprocess with the scf_nb extension, enabled the way an install enables it: the
repository's ``extension/jupyter_server_config.d/scf_nb.json`` in the server's config folder. Every process it
starts (its kernels, the engine's instances) carries a tag, so the fixture stops all of them."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from processes import kill_tagged, tagged_env, tagged_processes

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "extension" / "jupyter_server_config.d" / "scf_nb.json"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class Server:
    url: str
    token: str
    proc: subprocess.Popen[bytes]
    home: Path
    root: Path
    runtime: Path
    tag: str
    log: Path

    def request(self, method: str, path: str, body: Any = None, token: str | None = None,
                headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any, dict[str, str]]:
        """One request to ``<url><path>``: status, JSON answer (or text), headers. ``token=""``: none."""
        token = self.token if token is None else token
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url.rstrip("/") + path, data=data, method=method,
                                     headers={**({"Authorization": f"token {token}"} if token else {}),
                                              **({"Content-Type": "application/json"} if data else {}),
                                              **(headers or {})})
        try:
            with _NO_PROXY.open(req, timeout=60) as answer:
                status, text, hdrs = answer.status, answer.read(), dict(answer.headers)
        except urllib.error.HTTPError as e:
            status, text, hdrs = e.code, e.read(), dict(e.headers)
        try:
            return status, json.loads(text), hdrs
        except ValueError:
            return status, text.decode(errors="replace"), hdrs

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Signal the server and wait for it to exit; its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def jupyter_server(tmp: Path, home: Path | None = None, env: dict[str, str] | None = None,
                   args: tuple[str, ...] = ()) -> Iterator[Server]:
    """A ``jupyter server`` on a free loopback port, root folder ``tmp/root``, engine home ``home``
    (default ``tmp/root/.scf_nb``, the extension's own default), with more command-line ``args``; stopped
    (SIGTERM, then SIGKILL) afterwards."""
    root, runtime, config = tmp / "root", tmp / "runtime", tmp / "config"
    for folder in (root, runtime, config / "jupyter_server_config.d"):
        folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(CONFIG, config / "jupyter_server_config.d" / CONFIG.name)
    token = uuid.uuid4().hex
    port = free_port()
    extra = {"JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(runtime), "PYTHONPATH": str(ROOT),
             "JUPYTER_PLATFORM_DIRS": "1", **(env or {})}
    if home is not None:
        extra["SCF_NB_HOME"] = str(home)
    tag, full_env = tagged_env(extra)
    full_env.pop("SCF_NB_SERVER", None)
    if home is None:
        full_env.pop("SCF_NB_HOME", None)
    log = tmp / "server.log"
    cmd = [sys.executable, "-m", "jupyter_server", "--no-browser", "--allow-root", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=str(tmp))
    server = Server(f"http://127.0.0.1:{port}/", token, proc, home or root / ".scf_nb", root, runtime, tag, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        try:
            server.stop(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        kill_tagged(tag)


def _wait_ready(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"jupyter server exited ({server.proc.returncode}):\n{server.log.read_text()[-4000:]}")
        try:
            status, answer, _ = server.request("GET", "/scf/api/engine")
            if status == 200 and (server.home / "server.json").exists():
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"jupyter server did not answer in {timeout} s:\n{server.log.read_text()[-4000:]}")


def leftovers(server: Server) -> list[str]:
    """Processes of the server's tag still running (none should be, once it stopped)."""
    return tagged_processes(server.tag)
