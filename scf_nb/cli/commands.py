"""The subcommands: each parses nothing itself (``parser.py`` did), makes its calls on the module API
(``scf_nb.api``, so on whichever client ``api.client()`` chose) and prints the answer (``text.py``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import api
from ..clients.events import Event
from ..core import readable
from ..core.errors import ScfError
from . import text
from .text import clip, dumps, mode, took, when

PROG = "scf-nb"
ENDED = ("FINISHED", "FAILED", "ABORTED")
RESULT_CHARS = 10_000  # a result printed for people is cut here (--json gives all of it)
LOG_PAGE = 10_000  # lines read per call when printing a stored log


class UsageError(Exception):
    """Bad input only a subcommand can see (JSON, a file): reported as argparse does, exit status 2."""


def say(*lines: str) -> None:
    """Notes for the person at the terminal (stderr, so stdout stays the answer)."""
    for line in lines:
        print(f"{PROG}: {line}", file=sys.stderr)


def window(start: Any, end: Any) -> tuple[Any, Any] | None:
    return None if start is None and end is None else (start, end)


def events(args: argparse.Namespace) -> int:
    filters = dict(namespace=args.namespace, qualifier=args.qualifier, status=args.status,
                   invoke_type=args.invoke_type, request_id=args.request_id,
                   start_time=window(args.since, args.until), end_time=window(args.ended_since, args.ended_until))
    page = api.list_events(args.function, order=args.order, orderby=args.orderby, offset=args.offset,
                           limit=args.limit, **filters)
    total = api.count_events(args.function, **filters)
    if args.json:
        print(dumps({"total_count": total, "offset": args.offset, "events": text.records(page)}))
        return 0
    now = time.time()
    rows = [event_row(r, now) for r in text.rows(page)]
    if not rows:
        print(f"no events from offset {args.offset} ({total:,} in all)" if total else "no events")
        return 0
    print(text.table(("REQUEST ID", "FUNCTION", "VERSION", "TYPE", "STATUS", "STARTED", "ENDED", "DURATION",
                      "MEMORY", "NOTE"), rows, right=(7, 8)))
    end = args.offset + len(rows)
    more = f" (--offset {end} for more)" if end < total else ""
    print(f"{args.offset + 1}-{end} of {total:,} events{more}")
    return 0


def event_row(r: dict[str, Any], now: float) -> list[str]:
    """One row of the event table; an event not ended yet shows how long ago it was invoked, in brackets."""
    duration = took(r["duration_ms"])
    start = readable.epoch(r["start_time"])
    if not duration and start is not None and r["status"] not in ENDED:
        duration = f"({readable.duration(now - start)})"
    note = f"{r['error_type']}: {r['error_message']}" if r["error_type"] else (
        r["exit_reason"] if r["status"] != "FINISHED" else "")
    return [r["request_id"], clip(f"{r['namespace']}/{r['function_name']}", 32), r["qualifier"], mode(r["invoke_type"]),
            r["status"], when(r["start_time"]), when(r["end_time"]), duration,
            readable.megabytes(r["mem_usage_bytes"]), clip(note, 60)]


def logs(args: argparse.Namespace) -> int:
    if args.follow:
        try:
            print_followed(args.request_id, args.since_seq, args.stream, args.json)
        except KeyboardInterrupt:
            say(f"stopped following; {args.request_id} runs on")
            return 130
        print(f"-- {api.client().event_status(args.request_id)}", file=sys.stderr)
        return 0
    after = args.since_seq
    while True:  # a page at a time: a log of millions of lines prints without being held whole
        page = api.logs(args.request_id, since_seq=after, stream=args.stream, limit=LOG_PAGE)
        for row in page.itertuples(index=False):
            print(text.log_line(row, args.json))
        if len(page) < LOG_PAGE:
            return 0
        after = int(page["seq"].iloc[-1])


def print_followed(request_id: str, since_seq: int | None, stream: str | None, as_json: bool) -> None:
    """Print each line as the store commits it (one ``follow``, no polling) until the event has ended and its
    last line came. An interrupt stops the following only (it propagates): the event runs on."""
    lines = api.follow(request_id, since_seq=since_seq)
    try:
        for row in lines:
            if stream in (None, row.stream):
                print(text.log_line(row, as_json), flush=True)
    finally:
        lines.close()


def terminate(args: argparse.Namespace) -> int:
    status = api.terminate(args.request_id, grace=args.grace, wait=not args.no_wait)
    print(dumps({"request_id": args.request_id, "status": status}) if args.json else f"{args.request_id}  {status}")
    return 0


def engine_here() -> bool:
    """Whether the engine runs in this process (no server hosts this home's engine): its events then stop
    when the command ends, so ``invoke`` waits for them."""
    return bool(api.engine_info()["where"] == "embedded")


def invoke(args: argparse.Namespace) -> int:
    here = engine_here()  # asked first: after an interrupt the HTTP client's connection may be mid-answer
    ev = api.invoke(args.function, event_argument(args), qualifier=args.qualifier, namespace=args.namespace)
    try:  # from here on an interrupt is about this event
        return invoked(ev, args, here)
    except KeyboardInterrupt:
        if here:
            say(f"interrupted: {ev.request_id} {ev.terminate()}")
        else:
            say(f"interrupted; {ev.request_id} runs on (scf-nb terminate {ev.request_id} stops it)")
        return 130


def invoked(ev: Event, args: argparse.Namespace, here: bool) -> int:
    """What ``invoke`` prints of the event it made: a sync one's result; an async one's RequestId at once, then
    (``--wait``/``--follow``, or when its engine runs in this process) its lines, status and result."""
    info = ev.info()
    if info["invoke_type"] != "Event":  # sync: it has ended
        return report(info, args.json, with_status=False)
    wait = args.wait or args.follow
    if not wait and not here:
        print(dumps(info) if args.json else ev.request_id)
        return 0
    if not args.json:
        print(ev.request_id, flush=True)
    if not wait:
        say("no server hosts the engine of this home (scf-nb serve starts one), so the event runs in this "
            "process: waiting for its end (Ctrl-C terminates it)")
    if args.follow:
        print_followed(ev.request_id, None, None, False)
    ev.wait()
    return report(ev.info(), args.json, with_status=True)


def event_argument(args: argparse.Namespace) -> Any:
    """The event of ``invoke``: ``--event JSON``, ``--event-file PATH`` (``-``: standard input), or none."""
    if args.event_file is not None:
        try:
            source = sys.stdin.read() if args.event_file == "-" else Path(args.event_file).read_text()
        except OSError as e:
            raise UsageError(f"--event-file: cannot read {args.event_file}: {e.strerror}") from None
        flag = "--event-file"
    elif args.event is not None:
        source, flag = args.event, "--event"
    else:
        return None
    try:
        return json.loads(source)
    except json.JSONDecodeError as e:
        raise UsageError(f"{flag} is not valid JSON: {e}") from None


def result_of(info: dict[str, Any]) -> Any:
    """A FINISHED event's result; how it was decoded (a ``ResultWarning``) noted on stderr."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = api.client().event_result(info["request_id"], 0)
    say(*(f"note: {w.message}" for w in caught))
    return value


def result_text(value: Any) -> str:
    shown = json.dumps(text.plain(value), ensure_ascii=False)
    if len(shown) <= RESULT_CHARS:
        return shown
    return shown[:RESULT_CHARS] + f"... ({len(shown):,} characters; --json gives all)"


def report(info: dict[str, Any], as_json: bool, with_status: bool) -> int:
    """An ended event: its status (and how long it ran), then its result; or its error on stderr (status 1)."""
    status = info["status"]
    result = result_of(info) if status == "FINISHED" else None
    if as_json:
        print(dumps({**info, "result": result}))
    elif with_status:
        print(f"{status} in {took(info['duration_ms']) or '0 ms'}")
    if status == "FINISHED":
        if not as_json:
            print(result_text(result))
        return 0
    error = info.get("error") or {}
    why = f"{error['type']}: {error['message']}" if error else info.get("exit_reason") or status
    say(f"{info['request_id']} {status}: {clip(why, 300)} (scf-nb show {info['request_id']}: its details)")
    return 1


def show(args: argparse.Namespace) -> int:
    info = api.client().event_info(args.request_id)
    result = result_of(info) if info["status"] == "FINISHED" else None
    if args.json:
        print(dumps({**info, "result": result}))
        return 0
    error = info.get("error") or {}
    fields = [
        ("RequestId", info["request_id"]),
        ("function", f"{info['namespace']}/{info['function_name']} ({info['qualifier']})"),
        ("type", mode(info["invoke_type"])), ("status", info["status"]), ("invoked", when(info["start_time"])),
        ("started", when(info["run_time"])), ("ended", when(info["end_time"])),
        ("duration", took(info["duration_ms"])), ("cold start", took(info["init_duration_ms"])),
        ("memory", readable.megabytes(info["mem_usage_bytes"])), ("exit", info["exit_reason"] or ""),
        ("log lines", f"{info['log_seq']:,} (scf-nb logs {info['request_id']})"),
        ("error", f"{error['type']}: {error['message']}" if error else ""),
    ]
    for name, value in fields:
        if value:
            print(f"{name + ':':<12}{value}")
    if error.get("traceback"):
        print("traceback:\n" + error["traceback"].rstrip())
    if info["status"] == "FINISHED":
        print(f"{'result:':<12}{result_text(result)}")
    return 0


def overview(args: argparse.Namespace) -> int:
    frame = api.overview(args.function, namespace=args.namespace, since=args.since)
    if args.json:
        print(dumps(text.records(frame)))
        return 0
    rows = [[r["status"], f"{int(r['count']):,}", *(took(r[f"{k}_duration_ms"]) or "-" for k in ("avg", "p50", "p95",
                                                                                                   "max"))]
            for r in text.rows(frame)]
    print(text.table(("STATUS", "COUNT", "AVG", "P50", "P95", "MAX"), rows, right=range(1, 6)))
    return 0


def functions(args: argparse.Namespace) -> int:
    frame = api.list_functions(namespace=args.namespace)
    if args.json:
        print(dumps(text.records(frame)))
        return 0

    def unset(value: Any, unit: str = "") -> str:
        value = text.plain(value)
        return "-" if value is None else f"{value:g}{unit}"

    rows = [[r["namespace"], r["name"], r["version"], "async" if r["async_run"] else "sync",
             "on" if r["trace"] else "off", unset(r["timeout"], " s"), unset(r["concurrency"]),
             unset(r["memory_mb"], " MB"), r["handler"], when(r["updated_at"])] for r in text.rows(frame)]
    print(text.table(("NAMESPACE", "NAME", "VERSION", "MODE", "TRACE", "TIMEOUT", "CONCURRENCY", "MEMORY",
                      "HANDLER", "UPDATED"), rows, right=(5, 6, 7)))
    return 0


def export(args: argparse.Namespace) -> int:
    counts = api.export(args.path)
    if args.json:
        print(dumps(counts))
        return 0
    print(text.table(("TABLE", "ROWS"), [[name, f"{n:,}"] for name, n in counts.items()], right=(1,)))
    print(f"written to {Path(args.path).resolve()}")
    return 0


def serve(args: argparse.Namespace) -> int:
    from .serve import serve as run_server  # jupyter_server loads only here

    return run_server(ip=args.ip, port=args.port, tc_port=args.tc_port, token=args.token, root_dir=args.root_dir)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "events": events, "logs": logs, "terminate": terminate, "invoke": invoke, "show": show, "overview": overview,
    "functions": functions, "export": export, "serve": serve}

__all__ = ["COMMANDS", "ScfError", "UsageError"]
