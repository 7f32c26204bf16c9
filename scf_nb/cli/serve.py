"""``scf-nb serve``: jupyter_server's ``ServerApp`` in this process, with the scf_nb server extension
(``scf_nb.server``) enabled, so that the engine, its instances and the store live and die with this process.

Settings go in as command-line config (``--ServerApp.ip=...``), which wins over the user's config files as
``jupyter server --ip`` would. SIGTERM and SIGINT both stop the server at once, without jupyter's "Shut down
this Jupyter server (y/[n])?" prompt: the extension then stops the engine (instances killed, store flushed)
before the process exits with status 0."""

from __future__ import annotations

import importlib
import os
import signal
import sys
from types import FrameType
from typing import Any

from .. import api
from ..core.errors import ScfError

EXTENSION = "scf_nb.server"


def server_argv(ip: str, port: int | None, tc_port: int | None, token: str | None,
                root_dir: str | None) -> list[str]:
    """The ServerApp command line these flags mean."""
    argv = [f"--ServerApp.ip={ip}", "--ServerApp.open_browser=False", "--ServerApp.allow_root=True",
            f"--ServerApp.jpserver_extensions={EXTENSION}=True",
            "--ServerApp.reraise_server_extension_failures=True"]  # no server without its engine
    if port is not None:  # a port asked for is that port, or an error; jupyter's default moves on if taken
        argv += [f"--ServerApp.port={port}", "--ServerApp.port_retries=0"]
    if token is not None:
        argv.append(f"--IdentityProvider.token={token}")
    if tc_port is not None:
        argv.append(f"--ScfNbApp.tc_port={tc_port}")
    if root_dir is not None:
        argv.append(f"--ServerApp.root_dir={root_dir}")
    return argv


def serve(*, ip: str, port: int | None, tc_port: int | None, token: str | None, root_dir: str | None) -> int:
    """Run the server until SIGTERM or SIGINT; returns the exit status (0 after a clean stop).

    Raises:
        ScfError: ``FailedOperation.Serve`` when jupyter_server or the extension is missing or fails to load.
    """
    home = api.configure().home
    os.environ["SCF_NB_HOME"] = str(home)  # the kernels this server starts use the same store
    try:
        importlib.import_module(EXTENSION)
        from jupyter_server.serverapp import ServerApp
    except ImportError as e:
        raise ScfError("FailedOperation.Serve", f"scf-nb serve needs jupyter_server and {EXTENSION}: {e}") from None
    app = ServerApp()
    try:
        app.initialize(argv=server_argv(ip, port, tc_port, token, root_dir))
    except Exception as e:  # an extension that failed to load (reraised, see server_argv)
        raise ScfError("FailedOperation.Serve", f"the server did not start: {type(e).__name__}: {e}") from None
    hosting(home)
    stopping: list[int] = []

    def stop(signum: int, frame: FrameType | None) -> None:
        if not stopping:  # a second signal while it stops changes nothing
            stopping.append(signum)
            app.stop(from_signal=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    announce(app, home, tc_port)
    app.start()  # returns once stopped: extensions (the engine) and kernels shut down
    return 0


def hosting(home: Any) -> None:
    """The extension started the engine in this process (a server that cannot host it, because another process
    holds the store, would serve nothing: refuse to).

    Raises:
        ScfError: ``FailedOperation.Serve`` naming why the engine did not start.
    """
    try:
        here = api.engine_info()["found"] == "this process"
    except ScfError as e:
        raise ScfError("FailedOperation.Serve", f"the engine of {home} did not start: [{e.code}] {e.message}") from None
    if not here:
        raise ScfError("FailedOperation.Serve", f"the engine of {home} runs in another process, not this server")


def announce(app: Any, home: Any, tc_port: int | None) -> None:
    """Where to reach it, with the token, as jupyter prints it."""
    host = "127.0.0.1" if app.ip in ("", "0.0.0.0") else app.ip
    base = f"http://{'[' + host + ']' if ':' in host else host}:{app.port}{app.base_url}"
    token = app.identity_provider.token
    query = f"?token={token}" if token else ""
    lines = [f"scf-nb serve: the engine of {home} runs in this process (pid {os.getpid()}); SIGTERM or Ctrl-C "
             f"stops it", f"    {base}{query}", f"    events page: {base}scf/events{query}"]
    if tc_port is not None:
        lines.append(f"    TencentCloud API: http://127.0.0.1:{tc_port}/")
    print("\n".join(lines), flush=True)
    sys.stderr.flush()
