"""The module-level API: ``scf_nb.invoke(...)`` and friends, bound to one default client whose engine runs
in this process (embedded). The engine starts on first use with ``configure``'s settings."""

from __future__ import annotations

import functools
import inspect
import threading
from typing import Any, Callable

from .core.client import Client
from .core.config import Config, from_environment
from .core.engine import Engine

_lock = threading.RLock()
_client: Client | None = None
_settings: dict[str, Any] = {}


def configure(**settings: Any) -> Config:
    """Set engine settings (``home``, ``max_workers``, ``retention_hours``, ``max_qps``, ``grace_seconds``,
    ``idle_instance_seconds``, ``flush_interval``, ``store_memory_mb``, ``clock``); returns the config.

    ``SCF_NB_<SETTING>`` environment variables give the defaults. A running engine is shut down (its running
    events become FAILED) and the next call starts one with the new settings. With no arguments, returns the
    current config and changes nothing.
    """
    global _client
    with _lock:
        config = from_environment().updated(**{**_settings, **settings})
        if settings:
            shutdown()
            _settings.update(settings)
        return config


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
export = _bound("export")
purge = _bound("purge")
