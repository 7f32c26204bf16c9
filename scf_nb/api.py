"""The module-level API: ``scf_nb.invoke(...)`` and friends, each calling the same method of the default
client, which ``client()`` alone chooses: the engine a Jupyter server hosts for the configured home, over HTTP
(``clients.http.HttpClient``), when one does (``clients.discovery``: ``SCF_NB_SERVER`` from the server that
started this kernel, or the home's ``server.json``); else an embedded one (``clients.embedded.Client``), whose
engine runs in this process and starts on first use with ``configure``'s settings. The functions have the
protocol's signatures and docstrings (``clients.protocol.ClientProtocol``; a test keeps them equal)."""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from .clients import discovery
from .clients.embedded import Client
from .clients.events import Event
from .clients.http import HttpClient
from .clients.protocol import ClientProtocol, WaitResult, documented
from .core.config import LIVE_SETTINGS, Config, from_environment
from .core.errors import ScfError
from .core.functions import LATEST, Function
from .engine.engine import Engine
from .store.follow import Follower
from .store.observe import Changes, Subscription

_lock = threading.RLock()
_client: ClientProtocol | None = None
_settings: dict[str, Any] = {}
_server: tuple[discovery.ServerInfo, str] | None = None  # the server whose engine _client reaches, how found
_hosted: dict[str, Any] | None = None  # set when this process is a Jupyter server hosting the engine


def configure(*, force: bool = False, **settings: Any) -> Config:
    """Set engine settings (``home``, ``max_workers``, ``retention_hours``, ``max_qps``, ``grace_seconds``,
    ``idle_instance_seconds``, ``flush_interval``, ``store_memory_mb``, ``warm_spare``, ``memory_cgroups``,
    ``backend``, ``ray_address``, ``clock``); returns the
    config in force. With no arguments, returns the current config and changes nothing.

    ``SCF_NB_<SETTING>`` environment variables give the defaults; settings given stick for later calls. A
    running engine and its events are never stopped silently:

    - settings equal to the current ones (the same ``home`` again): nothing happens, everything runs on;
    - a change of ``max_workers``, ``retention_hours``, ``max_qps``, ``grace_seconds``,
      ``idle_instance_seconds`` or ``clock`` only: applied to the running engine at once;
    - a change of anything else (``home``, ``flush_interval``, ``store_memory_mb``, ``warm_spare``,
      ``backend``, ``ray_address``) needs a new
      engine: with no event queued or running this one stops and the next call starts one; otherwise refused.

    Args:
        force: restart even while events are queued or running; they become FAILED ``EngineStopped``.

    Raises:
        ScfError: ``InvalidParameterValue.Config`` for an unknown or bad setting; ``FailedOperation.EngineBusy``
            for a change that needs a restart while events are queued or running (it names them).
    """
    with _lock:
        config = from_environment().updated(**{**_settings, **settings})
        engine = _client.engine if isinstance(_client, Client) and not _client.closed else None
        if _server is not None and _client is not None and not _client.closed and settings:
            _over_http(config, _server[0], settings)
        elif engine is not None and settings:
            changed = config.differences(engine.config)
            restart = [name for name in changed if name not in LIVE_SETTINGS]
            if restart:
                busy = engine.unfinished()
                if busy and not force:
                    raise _busy(restart, [ev.request_id for ev in busy])
                shutdown()
            elif changed:
                engine.reconfigure(config)
        elif engine is not None:
            config = engine.config
        if "home" in settings:
            settings["home"] = config.home  # absolute: a later os.chdir does not move the store
        _settings.update(settings)
        return config


def _busy(restart: list[str], ids: list[str]) -> ScfError:
    n = len(ids)
    some = ", ".join(ids[:3]) + (", ..." if n > 3 else "")
    events = f"{n} event is" if n == 1 else f"{n} events are"
    return ScfError(
        "FailedOperation.EngineBusy",
        f"configure: changing {', '.join(restart)} needs a new engine, and {events} queued or running ({some}); "
        f"a restart would stop them (FAILED EngineStopped). Wait for them (scf_nb.wait) or terminate them, or "
        f"restart anyway: scf_nb.configure(..., force=True), or scf_nb.shutdown() first. Applied live without "
        f"a restart: {', '.join(sorted(LIVE_SETTINGS))}")


def _over_http(config: Config, server: discovery.ServerInfo, settings: dict[str, Any]) -> None:
    """``configure`` while the default client is a server's: another home lets go of it (the next call chooses
    again); the engine's other settings are the server's own."""
    global _client, _server
    if os.path.abspath(config.home) != server.home:
        if _client is not None:
            _client.close()
        _client, _server = None, None
        return
    others = sorted(set(settings) - {"home"})
    if others:
        warnings.warn(f"scf_nb: the engine runs in the Jupyter server at {server.url} (home {server.home}); "
                      f"{', '.join(others)} apply to it only as that server was started (its SCF_NB_* "
                      f"environment); here they change nothing", stacklevel=3)


def client() -> ClientProtocol:
    """The default client, starting its engine if needed: the one place that chooses which client the
    module-level functions use. A Jupyter server hosting the engine of the configured home: an ``HttpClient``
    to it; else an embedded ``Client`` (it has the engine as ``.engine``); if its store is locked by a server
    that started meanwhile, that server's."""
    c = _client
    if c is not None and not c.closed:  # the common case, without the lock
        return c
    return _choose()


def _choose() -> ClientProtocol:
    global _client, _server
    with _lock:
        if _client is None or _client.closed:
            config = configure()
            _client, _server = _connect(config)
        return _client


def _connect(config: Config) -> tuple[ClientProtocol, tuple[discovery.ServerInfo, str] | None]:
    found = None if _hosted is not None else discovery.find(config.home)
    if found is None:
        try:
            return Client(Engine(config)), None
        except ScfError as e:
            if e.code != "FailedOperation.StoreLocked" or _hosted is not None:
                raise
            found = discovery.find(config.home)  # a server took the store meanwhile: its engine, then
            if found is None:
                raise
    return HttpClient(found[0].url, found[0].token), found


def host(home: str | os.PathLike[str]) -> Client:
    """For the Jupyter server extension: start this process's engine on ``home`` and make it the default client
    (never another server's); ``engine_info`` says it is hosted here."""
    global _hosted
    with _lock:
        _hosted = {"url": None}
        configure(home=home)
        c = client()
        if not isinstance(c, Client):  # pragma: no cover - _connect gives an embedded one while hosting
            raise ScfError("FailedOperation.EngineHosted", "the hosted engine must run in this process")
        return c


def hosted_at(url: str) -> None:
    """The URL the hosting server answers at (known once it listens)."""
    if _hosted is not None:
        _hosted["url"] = url


def unhost() -> None:
    """For the Jupyter server extension, at the server's stop: the hosted engine stops (as ``shutdown``) and
    this process chooses its client as any other does again."""
    global _hosted
    with _lock:
        shutdown()
        _hosted = None


def engine_info() -> dict[str, Any]:
    """Where the engine that the module functions use runs, starting it if needed: ``where`` ("embedded": in
    this process; "server": in a Jupyter server, reached over HTTP, or this process is that server), ``url``
    (the server's, else None), ``pid`` (of the engine's process), ``home``, ``store`` (its DuckDB file),
    ``backend`` ("loky" or "ray"), ``backend_info`` (``Engine.describe()``: e.g. the Ray cluster's address and nodes)
    and ``found`` (how this process found the server: "env" (``SCF_NB_SERVER``, set by the
    server that started this kernel), "discovery file" (``<home>/server.json``), "this process" (it hosts the
    engine); None for an embedded engine)."""
    c = client()
    if isinstance(c, Client):
        cfg = c.engine.config
        return {"where": "embedded" if _hosted is None else "server",
                "url": None if _hosted is None else _hosted["url"], "pid": os.getpid(), "home": str(cfg.home),
                "store": str(cfg.db_path), "backend": cfg.backend, "backend_info": c.engine.describe(),
                "found": None if _hosted is None else "this process"}
    info: dict[str, Any] = c.engine_info() if isinstance(c, HttpClient) else {"where": "unknown"}
    info["found"] = _server[1] if _server is not None else None
    return info


def shutdown() -> None:
    """Stop the default engine: instances die, running events become FAILED, the store is closed. When it is a
    Jupyter server's, only disconnect: that engine runs on."""
    global _client, _server
    with _lock:
        if _client is not None:
            _client.close()
            _client, _server = None, None


# The module-level functions: the protocol's methods on the default client. Each one's docstring is the
# protocol's (``documented``), so the contract is written once.
@documented
def create_function(name: str, code: str, *, async_run: bool = False, trace: bool = True,
                    timeout: float | None = None, concurrency: int | None = None, qps_limit: float | None = None,
                    handler: str = "main_handler", namespace: str = "default", env: dict[str, str] | None = None,
                    memory_mb: int | None = None, description: str = "", num_cpus: float | None = None,
                    num_gpus: float | None = None, resources: dict[str, float] | None = None) -> Function:
    return client().create_function(name, code, async_run=async_run, trace=trace, timeout=timeout,
                                    concurrency=concurrency, qps_limit=qps_limit, handler=handler,
                                    namespace=namespace, env=env, memory_mb=memory_mb, description=description,
                                    num_cpus=num_cpus, num_gpus=num_gpus, resources=resources)


@documented
def publish_version(name: str, *, namespace: str = "default", description: str = "") -> str:
    return client().publish_version(name, namespace=namespace, description=description)


@documented
def get_function(name: str, *, namespace: str = "default", qualifier: str = LATEST) -> Function:
    return client().get_function(name, namespace=namespace, qualifier=qualifier)


@documented
def list_functions(*, namespace: str | None = None) -> pd.DataFrame:
    return client().list_functions(namespace=namespace)


@documented
def delete_function(name: str, *, namespace: str = "default") -> None:
    client().delete_function(name, namespace=namespace)


@documented
def invoke(name: str, event: Any = None, *, qualifier: str = LATEST, namespace: str = "default",
           wait: bool = True) -> Event:
    return client().invoke(name, event, qualifier=qualifier, namespace=namespace, wait=wait)


@documented
def wait(events: Iterable[Event | str], *, timeout: float | None = None) -> WaitResult:
    return client().wait(events, timeout=timeout)


@documented
def get_event(request_id: str) -> Event:
    return client().get_event(request_id)


@documented
def get_event_status(request_id: str) -> str:
    return client().get_event_status(request_id)


@documented
def list_events(function: str | None = None, *, namespace: str | None = None, qualifier: str | None = None,
                status: str | Iterable[str] | None = None, invoke_type: str | Iterable[str] | None = None,
                request_id: str | None = None, start_time: tuple[Any, Any] | None = None,
                end_time: tuple[Any, Any] | None = None, order: str = "DESC", orderby: str = "StartTime",
                offset: int = 0, limit: int | None = 20) -> pd.DataFrame:
    return client().list_events(function, namespace=namespace, qualifier=qualifier, status=status,
                                invoke_type=invoke_type, request_id=request_id, start_time=start_time,
                                end_time=end_time, order=order, orderby=orderby, offset=offset, limit=limit)


@documented
def count_events(function: str | None = None, *, namespace: str | None = None, qualifier: str | None = None,
                 status: str | Iterable[str] | None = None, invoke_type: str | Iterable[str] | None = None,
                 request_id: str | None = None, start_time: tuple[Any, Any] | None = None,
                 end_time: tuple[Any, Any] | None = None) -> int:
    return client().count_events(function, namespace=namespace, qualifier=qualifier, status=status,
                                 invoke_type=invoke_type, request_id=request_id, start_time=start_time,
                                 end_time=end_time)


@documented
def overview(function: str | None = None, *, namespace: str | None = None, since: Any = None) -> pd.DataFrame:
    return client().overview(function, namespace=namespace, since=since)


@documented
def terminate(request_id: str, *, grace: bool = False, wait: bool = True) -> str:
    return client().terminate(request_id, grace=grace, wait=wait)


@documented
def logs(request_id: str, *, since_seq: int | None = None, stream: str | None = None,
         limit: int | None = None) -> pd.DataFrame:
    return client().logs(request_id, since_seq=since_seq, stream=stream, limit=limit)


@documented
def search_logs(text: str, *, function: str | None = None, namespace: str | None = None,
                limit: int | None = 1000) -> pd.DataFrame:
    return client().search_logs(text, function=function, namespace=namespace, limit=limit)


@documented
def follow(request_id: str, *, since_seq: int | None = None, timeout: float | None = None) -> Follower:
    return client().follow(request_id, since_seq=since_seq, timeout=timeout)


@documented
def subscribe(fn: Callable[[Changes], Any]) -> Subscription:
    return client().subscribe(fn)


@documented
def export(path: str | Path) -> dict[str, int]:
    return client().export(path)


@documented
def purge() -> int:
    return client().purge()
