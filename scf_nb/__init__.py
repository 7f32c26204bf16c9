"""scf_nb: Tencent Cloud SCF's async execution and status tracking, in Jupyter.

Turn a cell into a function (``%%scf_function NAME --async``), invoke it (``%scf_invoke`` or
``scf_nb.invoke``), get a RequestId at once while the event runs in its own process, and follow its status,
result and every line it prints, live and afterwards (a DuckDB store).

The heavy parts (pandas, DuckDB, loky) load on first use, so instance processes, which import this package
at every cold start, stay light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .core.errors import EventAborted as EventAborted
from .core.errors import FunctionError as FunctionError
from .core.errors import ScfError as ScfError
from .core.status import Status as Status

if TYPE_CHECKING:  # what __getattr__ loads on first use, for type checkers: the real signatures
    from .api import client as client
    from .api import configure as configure
    from .api import count_events as count_events
    from .api import create_function as create_function
    from .api import delete_function as delete_function
    from .api import engine_info as engine_info
    from .api import export as export
    from .api import follow as follow
    from .api import get_event as get_event
    from .api import get_event_status as get_event_status
    from .api import get_function as get_function
    from .api import invoke as invoke
    from .api import list_events as list_events
    from .api import list_functions as list_functions
    from .api import logs as logs
    from .api import overview as overview
    from .api import publish_version as publish_version
    from .api import purge as purge
    from .api import search_logs as search_logs
    from .api import shutdown as shutdown
    from .api import subscribe as subscribe
    from .api import terminate as terminate
    from .api import wait as wait
    from .clients.embedded import Client as Client
    from .clients.events import Event as Event
    from .clients.http import HttpClient as HttpClient
    from .clients.protocol import ClientProtocol as ClientProtocol
    from .core.config import Config as Config
    from .core.functions import Function as Function
    from .store.follow import Follower as Follower
    from .store.follow import LogLine as LogLine
    from .store.observe import Changes as Changes
    from .store.observe import Subscription as Subscription
    from .widgets import event_table as event_table

__version__ = "0.1.0"

_API = {
    "configure", "client", "shutdown", "create_function", "publish_version", "get_function", "list_functions",
    "delete_function", "invoke", "wait", "get_event", "get_event_status", "list_events", "count_events",
    "overview", "terminate",
    "logs", "search_logs", "export", "purge", "follow", "subscribe", "engine_info",
}
# names loaded from a module of their own on first use: types, and the notebook views (needs ipywidgets)
_TYPES = {"Event": ".clients.events", "Function": ".core.functions", "Client": ".clients.embedded",
          "ClientProtocol": ".clients.protocol", "Config": ".core.config", "Changes": ".store.observe",
          "Subscription": ".store.observe", "LogLine": ".store.follow", "Follower": ".store.follow",
          "HttpClient": ".clients.http", "event_table": ".widgets"}

__all__ = sorted(_API | set(_TYPES) | {"ScfError", "FunctionError", "EventAborted", "Status",
                                       "load_ipython_extension", "unload_ipython_extension"})


def __getattr__(name: str) -> Any:
    import importlib

    if name in _API:
        value = getattr(importlib.import_module(".api", __name__), name)
    elif name in _TYPES:
        value = getattr(importlib.import_module(_TYPES[name], __name__), name)
    else:
        raise AttributeError(f"module 'scf_nb' has no attribute {name!r}")
    globals()[name] = value  # found once: later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    return __all__


def load_ipython_extension(ipython: Any) -> None:
    """``%load_ext scf_nb``: registers the magics."""
    from .magics import load

    load(ipython)


def unload_ipython_extension(ipython: Any) -> None:
    """``%unload_ext scf_nb``."""
