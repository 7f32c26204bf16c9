"""The module-level API: ``scf_nb.invoke(...)`` and friends, bound to one default client whose engine runs
in this process (embedded). The engine starts on first use with ``configure``'s settings."""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any, Callable

from .core.client import Client
from .core.config import LIVE_SETTINGS, Config, from_environment
from .core.engine import Engine
from .core.errors import ScfError

_lock = threading.RLock()
_client: Client | None = None
_settings: dict[str, Any] = {}


def configure(*, force: bool = False, **settings: Any) -> Config:
    """Set engine settings (``home``, ``max_workers``, ``retention_hours``, ``max_qps``, ``grace_seconds``,
    ``idle_instance_seconds``, ``flush_interval``, ``store_memory_mb``, ``warm_spare``, ``clock``); returns the
    config in force. With no arguments, returns the current config and changes nothing.

    ``SCF_NB_<SETTING>`` environment variables give the defaults; settings given stick for later calls. A
    running engine and its events are never stopped silently:

    - settings equal to the current ones (the same ``home`` again): nothing happens, everything runs on;
    - a change of ``max_workers``, ``retention_hours``, ``max_qps``, ``grace_seconds``,
      ``idle_instance_seconds`` or ``clock`` only: applied to the running engine at once;
    - a change of anything else (``home``, ``flush_interval``, ``store_memory_mb``, ``warm_spare``) needs a new
      engine: with no event queued or running this one stops and the next call starts one; otherwise refused.

    Args:
        force: restart even while events are queued or running; they become FAILED ``EngineStopped``.

    Raises:
        ScfError: ``InvalidParameterValue.Config`` for an unknown or bad setting; ``FailedOperation.EngineBusy``
            for a change that needs a restart while events are queued or running (it names them).
    """
    with _lock:
        config = from_environment().updated(**{**_settings, **settings})
        engine = _client.engine if _client is not None and not _client.engine._closed else None
        if engine is not None and settings:
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


def client() -> Client:
    """The default client, starting its engine if needed."""
    global _client
    with _lock:
        if _client is None or _client.engine._closed:
            _client = Client(Engine(configure()))
        return _client


def shutdown() -> None:
    """Stop the default engine: instances die, running events become FAILED, the store is closed."""
    global _client
    with _lock:
        if _client is not None:
            _client.close()
            _client = None


def _bound(name: str) -> Callable[..., Any]:
    method = getattr(Client, name)

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        c = _client
        if c is None or c.engine._closed:
            c = client()
        return getattr(c, name)(*args, **kwargs)

    sig = inspect.signature(method)
    call.__signature__ = sig.replace(parameters=list(sig.parameters.values())[1:])  # type: ignore[attr-defined]
    del call.__wrapped__  # type: ignore[attr-defined]
    return call


create_function = _bound("create_function")
publish_version = _bound("publish_version")
get_function = _bound("get_function")
list_functions = _bound("list_functions")
delete_function = _bound("delete_function")
invoke = _bound("invoke")
wait = _bound("wait")
get_event = _bound("get_event")
get_event_status = _bound("get_event_status")
list_events = _bound("list_events")
overview = _bound("overview")
terminate = _bound("terminate")
logs = _bound("logs")
search_logs = _bound("search_logs")
follow = _bound("follow")
subscribe = _bound("subscribe")
export = _bound("export")
purge = _bound("purge")
