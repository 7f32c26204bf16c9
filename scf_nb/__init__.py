"""scf_nb: Tencent Cloud SCF's async execution and status tracking, in Jupyter.

Turn a cell into a function (``%%scf_function NAME --async``), invoke it (``%scf_invoke`` or
``scf_nb.invoke``), get a RequestId at once while the event runs in its own process, and follow its status,
result and every line it prints, live and afterwards (a DuckDB store).

The heavy parts (pandas, DuckDB, loky) load on first use, so instance processes, which import this package
at every cold start, stay light.
"""

from __future__ import annotations

from typing import Any

from .core.errors import EventAborted as EventAborted
from .core.errors import FunctionError as FunctionError
from .core.errors import ScfError as ScfError
from .core.status import Status as Status

__version__ = "0.1.0"

_API = {
    "configure", "client", "shutdown", "create_function", "publish_version", "get_function", "list_functions",
    "delete_function", "invoke", "wait", "get_event", "get_event_status", "list_events", "overview", "terminate",
    "logs", "search_logs", "export", "purge", "follow", "subscribe",
}
_TYPES = {"Event": ".core.events", "Function": ".core.functions", "Client": ".core.client",
          "Config": ".core.config", "Changes": ".core.observe", "Subscription": ".core.observe",
          "LogLine": ".core.follow"}

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
