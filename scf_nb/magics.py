"""IPython magics: a thin adapter. Each parses its line with ``magic_arguments`` and makes one call on the
client API. ``%load_ext scf_nb`` registers them; ``%magic_name?`` shows the help below.

In a Jupyter kernel with ipywidgets, ``%scf_invoke`` (async), ``%scf_events``, ``%scf_logs --follow`` and
``%scf_overview`` show the notebook views of ``scf_nb.widgets``; elsewhere (a terminal IPython, no
ipywidgets) they give text and DataFrames."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from IPython.core.error import UsageError
from IPython.core.magic import Magics, magics_class

from . import api
from .clients.events import Event
from .core import readable
from .core.errors import ScfError

_P = ParamSpec("_P")
_R = TypeVar("_R")

if TYPE_CHECKING:  # the decorators return what they decorate: IPython's magic_arguments has no annotations,
    # and its line_magic / cell_magic say "the function or a decorator" (they also take a name)
    _F = TypeVar("_F", bound=Callable[..., Any])

    def line_magic(func: _F) -> _F: ...
    def cell_magic(func: _F) -> _F: ...
    def magic_arguments(name: str | None = None) -> Callable[[_F], _F]: ...
    def argument(*args: Any, **kwargs: Any) -> Callable[[_F], _F]: ...
    def parse_argstring(magic_func: Callable[..., Any], argstring: str, *,
                        partial: bool = False) -> argparse.Namespace: ...
    def display(*objs: Any, **kwargs: Any) -> None: ...
else:
    from IPython.core.magic import cell_magic, line_magic
    from IPython.core.magic_arguments import argument, magic_arguments, parse_argstring
    from IPython.display import display


def _unquote(text: str) -> str:
    """``magic_arguments`` keeps the quotes of a quoted argument (``--event '{"x": 1}'``)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def _parse(magic: Callable[..., Any], line: str) -> argparse.Namespace:
    try:
        return parse_argstring(magic, line)
    except UsageError:
        raise
    except (SystemExit, ValueError) as e:  # argparse exits on bad input; shlex raises on open quotes
        raise UsageError(f"{magic.__name__}: {e}") from None


def _print_line(row: Any) -> None:
    print(readable.log_text(row.ts, row.stream, row.line))


def _print_followed(request_id: str, stream: str | None) -> None:
    """``--follow``: each line as the store commits it (one ``follow``, no read loop), then the final status."""
    if stream not in (None, "stdout", "stderr"):
        raise UsageError(f"scf_logs: --stream must be stdout or stderr, got {stream!r}")
    lines = _call(api.follow, request_id)
    try:
        for row in lines:  # ends once the event has ended and its last line came
            if stream in (None, row.stream):
                _print_line(row)
    finally:
        lines.close()  # also on an interrupt: the event runs on
    print(f"-- {_call(api.client().wait_event, request_id, 0)}")


def _views(shell: Any) -> Any:
    """``scf_nb.widgets`` where ``shell`` can show widgets (a Jupyter kernel with ipywidgets), else None."""
    if getattr(shell, "kernel", None) is None:
        return None
    try:
        from . import widgets
    except ImportError:
        return None
    return widgets


def _call(fn: Callable[_P, _R], *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """One API call; its ScfError becomes a one-line UsageError, not a traceback."""
    try:
        return fn(*args, **kwargs)
    except ScfError as e:
        raise UsageError(str(e)) from None


@magics_class
class ScfMagics(Magics):
    @magic_arguments()
    @argument("name", help="function name")
    @argument("--async", dest="async_run", action="store_true", help="async execution (locked at creation)")
    @argument("--timeout", type=float, help="seconds before the event is FAILED (async default 24 h, sync 15 min)")
    @argument("--concurrency", type=int, help="most instances at once (default: CPU count)")
    @argument("--qps", type=float, help="invocations per second accepted for this function")
    @argument("--handler", default="main_handler", help="the function called with (event, context)")
    @argument("--namespace", default="default")
    @argument("--no-trace", dest="trace", action="store_false", help="do not record event statuses")
    @argument("--env", nargs="*", default=[], metavar="K=V", help="environment variables of its instances")
    @argument("--memory", type=int, help="memory limit in MB; an instance over it is killed (FAILED)")
    @argument("--num-cpus", type=float, help="CPUs each instance holds on a Ray cluster (backend 'ray')")
    @argument("--num-gpus", type=float, help="GPUs each instance holds on a Ray cluster (backend 'ray' only)")
    @argument("--resources", help="custom Ray resources of each instance as JSON, e.g. '{\"accel\": 1}'")
    @argument("--description", default="")
    @cell_magic
    def scf_function(self, line: str, cell: str) -> None:
        """Register the cell's code as an SCF-style function (updates its $LATEST if it exists).

        Example::

            %%scf_function transcode --async --timeout 7200 --concurrency 2
            def main_handler(event, context):
                return {"out": event["src"] + ".mp4"}
        """
        args = _parse(self.scf_function, line)
        env = {}
        for item in args.env:
            key, sep, value = _unquote(item).partition("=")
            if not sep or not key:
                raise UsageError(f"scf_function: --env takes KEY=VALUE pairs, got {item!r}")
            env[key] = value
        resources = None
        if args.resources:
            try:
                resources = json.loads(_unquote(args.resources))
            except ValueError as e:
                raise UsageError(f"scf_function: --resources takes a JSON object: {e}") from None
        fn = _call(api.create_function, _unquote(args.name), cell, async_run=args.async_run, trace=args.trace,
                   timeout=args.timeout, concurrency=args.concurrency, qps_limit=args.qps, handler=args.handler,
                   namespace=args.namespace, env=env, memory_mb=args.memory, description=args.description,
                   num_cpus=args.num_cpus, num_gpus=args.num_gpus, resources=resources)
        mode = "async" if fn.async_run else "sync"
        print(f"scf_nb: {fn.namespace}/{fn.name} ($LATEST, {mode}, timeout {fn.effective_timeout:g} s) is ready")

    @magic_arguments()
    @argument("name", help="function name")
    @argument("--event", help="the event as JSON, e.g. --event '{\"src\": \"a.mov\"}'")
    @argument("--event-var", help="name of a variable holding the event")
    @argument("--qualifier", default="$LATEST", help="version to run: $LATEST, 1, 2, ...")
    @argument("--namespace", default="default")
    @line_magic
    def scf_invoke(self, line: str) -> Event:
        """Invoke a function; returns the Event at once (async) or when it ended (sync): ``ev = %scf_invoke f``."""
        args = _parse(self.scf_invoke, line)
        if args.event is not None and args.event_var is not None:
            raise UsageError("scf_invoke: give --event or --event-var, not both")
        event: Any = None
        if args.event is not None:
            try:
                event = json.loads(_unquote(args.event))
            except json.JSONDecodeError as e:
                raise UsageError(f"scf_invoke: --event is not valid JSON: {e}") from None
        elif args.event_var is not None:
            user_ns = self._user_ns()
            if args.event_var not in user_ns:
                raise UsageError(f"scf_invoke: no variable named {args.event_var!r}")
            event = user_ns[args.event_var]
        name, qualifier = _unquote(args.name), _unquote(args.qualifier)
        ev = _call(api.invoke, name, event, qualifier=qualifier, namespace=args.namespace)
        views = _views(self.shell)
        if views is not None and _call(api.get_function, name, namespace=args.namespace,
                                       qualifier=qualifier).async_run:
            display(views.event_view(ev))
        return ev

    @magic_arguments()
    @argument("--function", help="only this function")
    @argument("--namespace")
    @argument("--status", nargs="+", help="QUEUED RUNNING FINISHED FAILED ABORTED")
    @argument("--limit", type=int, default=20)
    @argument("--offset", type=int, default=0)
    @argument("--order", default="DESC", help="ASC or DESC")
    @argument("--request-id", help="only this RequestId")
    @argument("--since", help="started at or after this time (YYYY-MM-DD HH:MM:SS, local)")
    @argument("--until", help="started before this time")
    @line_magic
    def scf_events(self, line: str) -> Any:
        """The event table (newest first): a live table with filters and Terminate buttons in a notebook,
        a DataFrame elsewhere (--limit rows from --offset)."""
        args = _parse(self.scf_events, line)
        since, until = (_unquote(t) if t else None for t in (args.since, args.until))
        views = _views(self.shell)
        if views is None:
            return _call(api.list_events, args.function, namespace=args.namespace, status=args.status,
                         request_id=args.request_id, start_time=(since, until) if since or until else None,
                         limit=args.limit, offset=args.offset, order=args.order)
        table = _call(views.event_table, args.function, namespace=args.namespace, status=args.status,
                      request_id=args.request_id, since=since, until=until, page_size=args.limit,
                      order=args.order)
        if args.offset:
            table.go(args.offset // args.limit)
        return table

    @magic_arguments()
    @argument("request_id", help="a RequestId, or the name of a variable holding an Event")
    @argument("--follow", action="store_true", help="keep printing new lines until the event ends")
    @argument("--stream", help="stdout or stderr only")
    @line_magic
    def scf_logs(self, line: str) -> None:
        """Print an event's log lines; with --follow, keep printing until it ends (interrupt to stop). In a
        notebook, --follow shows a live log pane instead (the cell returns at once)."""
        args = _parse(self.scf_logs, line)
        request_id = self._request_id(args.request_id)
        views = _views(self.shell) if args.follow else None
        if views is not None:
            display(_call(views.log_pane, request_id, stream=args.stream))
            return
        if args.follow:
            _print_followed(request_id, args.stream)
            return
        for row in _call(api.logs, request_id, stream=args.stream).itertuples(index=False):
            _print_line(row)

    @magic_arguments()
    @argument("request_id", help="a RequestId, or the name of a variable holding an Event")
    @argument("--grace", action="store_true", help="SIGTERM first; SIGKILL after the grace period")
    @line_magic
    def scf_terminate(self, line: str) -> None:
        """Terminate a queued or running event (it becomes ABORTED; no other event is touched)."""
        args = _parse(self.scf_terminate, line)
        request_id = self._request_id(args.request_id)
        print(f"{request_id}: {_call(api.terminate, request_id, grace=args.grace)}")

    @magic_arguments()
    @argument("name")
    @argument("--namespace", default="default")
    @argument("--description", default="")
    @line_magic
    def scf_publish(self, line: str) -> str:
        """Publish $LATEST as a new immutable version; returns its number."""
        args = _parse(self.scf_publish, line)
        return _call(api.publish_version, _unquote(args.name), namespace=args.namespace,
                     description=args.description)

    @magic_arguments()
    @argument("--function")
    @argument("--namespace")
    @line_magic
    def scf_overview(self, line: str) -> Any:
        """Counts and durations per status: beside pictures (events per status over time, durations per
        function) in a notebook, as a DataFrame elsewhere."""
        args = _parse(self.scf_overview, line)
        views = _views(self.shell)
        if views is None:
            return _call(api.overview, args.function, namespace=args.namespace)
        return _call(views.overview_view, args.function, namespace=args.namespace)

    def _request_id(self, text: str) -> str:
        text = _unquote(text)
        value = self._user_ns().get(text) if text.isidentifier() else None
        return value.request_id if isinstance(value, Event) else text

    def _user_ns(self) -> dict[str, Any]:
        assert self.shell is not None, "the magics are registered on a shell"
        user_ns: dict[str, Any] = self.shell.user_ns
        return user_ns


def load(ipython: Any) -> None:
    ipython.register_magics(ScfMagics)


__all__ = ["ScfMagics", "load"]
