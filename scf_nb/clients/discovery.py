"""Finding the engine a Jupyter server hosts, as Jupyter's own runtime files work.

A server that hosts the engine of a home tells others in two ways:

- ``SCF_NB_SERVER`` in its environment (JSON of ``ServerInfo``), which the kernels it starts inherit, whatever
  their working directory;
- ``<home>/server.json`` (the same JSON, mode 0600: it holds the server's token), which any process using that
  home finds (a script, the CLI, a kernel of another server). It is removed when the server stops cleanly; one
  left by a server that died (its pid is gone, or nothing answers at its URL) is ignored.

Stdlib only: a plain script finds a server with nothing else loaded.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ENV = "SCF_NB_SERVER"
FILE = "server.json"
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ServerInfo:
    """Where a server that hosts an engine answers.

    Attributes:
        url: its URL with the base URL (``http://127.0.0.1:8888/``); the REST API is under ``<url>scf/api/``.
        base_url: the server's base URL (``/``).
        token: its token (the HTTP client sends it as ``Authorization: token ...``).
        pid: the server's process.
        home: the engine's home (absolute).
        started: when it started (epoch seconds).
    """

    url: str
    base_url: str
    token: str
    pid: int
    home: str
    started: float

    def text(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def parse(cls, text: str) -> ServerInfo | None:
        """The info in ``text``; None if it is not one (a half-written or foreign file)."""
        try:
            data = json.loads(text)
            return cls(str(data["url"]), str(data["base_url"]), str(data["token"]), int(data["pid"]),
                       str(data["home"]), float(data["started"]))
        except (ValueError, KeyError, TypeError):
            return None


def write(info: ServerInfo) -> Path:
    """Write ``<home>/server.json`` (mode 0600, replaced whole so a reader never sees half of it)."""
    home = Path(info.home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / FILE
    tmp = home / f".{FILE}.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(info.text())
    os.replace(tmp, path)
    return path


def remove(info: ServerInfo) -> None:
    """Remove the home's discovery file if it is ``info``'s (a newer server's file stays)."""
    path = Path(info.home) / FILE
    if read(Path(info.home)) == info:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def read(home: Path) -> ServerInfo | None:
    try:
        return ServerInfo.parse((Path(home) / FILE).read_text())
    except OSError:
        return None


def from_env() -> ServerInfo | None:
    text = os.environ.get(ENV)
    return ServerInfo.parse(text) if text else None


def find(home: Path) -> tuple[ServerInfo, str] | None:
    """A live server hosting the engine of ``home`` for this process, and how it was found (``"env"`` or
    ``"discovery file"``); None if there is none (or this process is that server)."""
    home = Path(os.path.abspath(home))
    candidates = [(from_env(), "env"), (read(home), "discovery file")]
    for info, how in candidates:
        if info is None or info.pid == os.getpid() or Path(info.home) != home:
            continue
        if alive(info):
            return info, how
    return None


def alive(info: ServerInfo, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Its process runs and its REST API answers (an engine there)."""
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: the URL decides
    request = urllib.request.Request(info.url.rstrip("/") + "/scf/api/engine",
                                     headers={"Authorization": f"token {info.token}"})
    try:
        # no proxy: the server is on this machine, and a proxy from the environment would not reach it
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request, timeout=timeout) as answer:
            data: Any = json.loads(answer.read())
    except (OSError, ValueError):
        return False
    engine = data.get("engine") if isinstance(data, dict) else None
    return isinstance(engine, dict) and engine.get("home") == info.home
