"""The ``scf-nb`` command line: one argparse subcommand per action, each with its ``--help`` and examples."""

from __future__ import annotations

import argparse
import re
import textwrap
import time
from typing import Any

from .. import __version__

STATUSES = ("QUEUED", "RUNNING", "FINISHED", "FAILED", "ABORTED")
INVOKE_TYPES = {"async": "Event", "sync": "RequestResponse", "event": "Event", "requestresponse": "RequestResponse"}
_AGO = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|min|h|d)")
_UNIT = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}


def moment(text: str) -> Any:
    """A time flag: ``30m``/``2h``/``1d`` (that long ago), epoch seconds, or a time as ``list_events`` reads it
    (``YYYY-MM-DD HH:MM:SS`` local, ISO 8601), passed on as given so that the API's own check names a bad one."""
    if m := _AGO.fullmatch(text.strip()):
        return time.time() - float(m[1]) * _UNIT[m[2]]
    try:
        return float(text)
    except ValueError:
        return text


def status(text: str) -> str:
    value = text.upper()
    if value not in STATUSES:
        raise argparse.ArgumentTypeError(f"{text!r} is not a status: use {', '.join(STATUSES)}")
    return value


def invoke_type(text: str) -> str:
    try:
        return INVOKE_TYPES[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"{text!r}: use async (Event) or sync (RequestResponse)") from None


def count(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


class _Help(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30)


def build() -> argparse.ArgumentParser:
    """The parser; it names each subcommand (``command``) and keeps its parser (``parser``, for errors). It
    imports nothing heavy, so ``--help`` and bad usage answer before pandas or DuckDB load."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help="the store's folder (default: $SCF_NB_HOME, else ./.scf_nb)")
    parser = argparse.ArgumentParser(
        prog="scf-nb", parents=[common], formatter_class=_Help,
        description="Event management for scf_nb: SCF-style async events, their statuses and logs.",
        epilog=textwrap.dedent("""
            Each command uses the engine a running server hosts for this home (scf-nb serve, JupyterLab with
            scf_nb installed), else one it starts in its own process. scf-nb COMMAND --help shows each one.
            Exit status: 0 done, 1 an error (its code on stderr) or an event that failed, 2 bad usage,
            130 interrupted."""))
    parser.add_argument("--version", action="version", version=f"scf-nb {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, summary: str, examples: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=summary, description=summary, formatter_class=_Help,
                           epilog="examples:\n" + textwrap.indent(textwrap.dedent(examples).strip(), "  "))
        p.set_defaults(parser=p)
        return p

    _events(add("events", "List events, newest first, with the total the filters find.", """
        scf-nb events
        scf-nb events --function transcode --status RUNNING QUEUED
        scf-nb events --since 2h --order ASC --limit 100 --offset 100
        scf-nb events --status FAILED --json | jq '.events[].request_id'"""))
    _logs(add("logs", "Print an event's log lines; --follow prints new ones until the event ends.", """
        scf-nb logs 00000000-0001-4a2b-...
        scf-nb logs RID --follow --stream stderr     (Ctrl-C stops following; the event runs on)
        scf-nb logs RID --since-seq 120 --json"""))
    _terminate(add("terminate", "Terminate a queued or running event (ABORTED); prints its status afterwards.", """
        scf-nb terminate RID
        scf-nb terminate RID --grace        (SIGTERM first, the kill after the grace period)
        scf-nb terminate RID --no-wait"""))
    _invoke(add("invoke", "Invoke a function: prints the RequestId at once (async) or the result (sync).", """
        scf-nb invoke transcode --event '{"src": "a.mov"}'
        scf-nb invoke transcode --event-file event.json --wait
        echo '{"src": "b.mov"}' | scf-nb invoke transcode --event-file - --follow
        scf-nb invoke add --qualifier 2 --event '[1, 2]' --json"""))
    _show(add("show", "Show one event: times, duration, memory, its result or error and traceback.", """
        scf-nb show RID
        scf-nb show RID --json"""))
    _overview(add("overview", "Counts and durations per status.", """
        scf-nb overview
        scf-nb overview --function transcode --since 1d --json"""))
    _functions(add("functions", "List the functions and their versions.", """
        scf-nb functions
        scf-nb functions --namespace default --json"""))
    _export(add("export", "Write events, logs and functions as Parquet files into a folder; prints row counts.", """
        scf-nb export backup/2024-06-01"""))
    _serve(add("serve", "Run a Jupyter server hosting the engine (the scf_nb server extension), in this "
                        "process: SIGTERM or Ctrl-C stops it, its instances and flushes the store.", """
        scf-nb serve --port 8888
        scf-nb serve --home /srv/scf --port 8888 --tc-port 9000 --token SECRET
        SCF_NB_SECRET_ID=... SCF_NB_SECRET_KEY=... scf-nb serve --tc-port 9000"""))
    return parser


def _json(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON, for programs")


def _events(p: argparse.ArgumentParser) -> None:
    p.add_argument("--function", help="only this function")
    p.add_argument("--namespace", help="only this namespace")
    p.add_argument("--qualifier", help="only this version ($LATEST, 1, 2, ...)")
    p.add_argument("--status", nargs="+", type=status, metavar="S", help=" ".join(STATUSES))
    p.add_argument("--invoke-type", nargs="+", type=invoke_type, metavar="T", help="async or sync")
    p.add_argument("--request-id", help="only this RequestId")
    p.add_argument("--since", type=moment, help="started at or after: 'YYYY-MM-DD HH:MM:SS' (local), 30m, 2h, 1d")
    p.add_argument("--until", type=moment, help="started before this time")
    p.add_argument("--ended-since", type=moment, metavar="SINCE", help="ended at or after this time")
    p.add_argument("--ended-until", type=moment, metavar="UNTIL", help="ended before this time")
    p.add_argument("--order", type=str.upper, choices=("ASC", "DESC"), default="DESC")
    p.add_argument("--orderby", choices=("StartTime", "EndTime"), default="StartTime")
    p.add_argument("--offset", type=count, default=0)
    p.add_argument("--limit", type=count, default=20, help="rows on this page (default 20)")
    _json(p, "the page and the total")


def _logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("request_id", metavar="REQUEST_ID")
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until the event ends")
    p.add_argument("--stream", choices=("stdout", "stderr"), help="one stream only")
    p.add_argument("--since-seq", type=count, metavar="N", help="only the lines after line N")
    _json(p, "each line (one JSON object a line)")


def _terminate(p: argparse.ArgumentParser) -> None:
    p.add_argument("request_id", metavar="REQUEST_ID")
    p.add_argument("--grace", action="store_true", help="SIGTERM first; the kill after the grace period")
    p.add_argument("--no-wait", action="store_true", help="return at once, without waiting for ABORTED")
    _json(p, "the RequestId and status")


def _invoke(p: argparse.ArgumentParser) -> None:
    p.add_argument("function", metavar="FUNCTION", help="the function's name")
    given = p.add_mutually_exclusive_group()
    given.add_argument("--event", metavar="JSON", help="the event, as JSON")
    given.add_argument("--event-file", metavar="PATH", help="read the event (JSON) from a file; - for stdin")
    p.add_argument("--qualifier", default="$LATEST", help="the version to run (default $LATEST)")
    p.add_argument("--namespace", default="default", help="its namespace (default: default)")
    p.add_argument("--wait", action="store_true", help="async: wait for the end; print its status and result")
    p.add_argument("--follow", "-f", action="store_true", help="async: print its log lines until it ends (waits)")
    _json(p, "the event (and result)")


def _show(p: argparse.ArgumentParser) -> None:
    p.add_argument("request_id", metavar="REQUEST_ID")
    _json(p, "the event")


def _overview(p: argparse.ArgumentParser) -> None:
    p.add_argument("--function", help="only this function")
    p.add_argument("--namespace", help="only this namespace")
    p.add_argument("--since", type=moment, help="only events started since: a time, or 30m, 2h, 1d")
    _json(p, "one object per status")


def _functions(p: argparse.ArgumentParser) -> None:
    p.add_argument("--namespace", help="only this namespace")
    _json(p, "one object per function version")


def _export(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="PATH", help="the folder to write (made if missing)")
    _json(p, "the row counts")


def _serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("--ip", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=count, help="the server's port (default 8888, or the next free one)")
    p.add_argument("--tc-port", type=count, metavar="PORT",
                   help="also serve the TencentCloud-compatible API on this loopback port (needs "
                        "SCF_NB_SECRET_ID / SCF_NB_SECRET_KEY)")
    p.add_argument("--token", help="the token clients must send (default: a new random one, printed)")
    p.add_argument("--root-dir", metavar="DIR", help="the notebooks' folder (default: this one)")
