"""``scf-nb``, the command line, run for real: ``python -m scf_nb.cli`` subprocesses on a store the test filled
through the API (then shut down, so the store is free for them). Each subprocess start costs ~0.5-1 s, so each
test runs several subcommands on one store."""

from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import GATE
from processes import free_port, kill_tagged, stop, tagged_env, wait_for_server

import scf_nb
from scf_nb.cli import text
from scf_nb.cli.commands import COMMANDS
from scf_nb.cli.parser import build, moment

ROOT = Path(__file__).resolve().parent.parent

ECHO = '''
import sys
def main_handler(event, context):
    print("got", event["n"])
    print("warn", event["n"], file=sys.stderr)
    return {"n": event["n"], "twice": 2 * event["n"]}
'''
ADD = "def main_handler(event, context):\n    return sum(event)\n"
BAD = "def main_handler(event, context):\n    raise ValueError('cannot decode ' + event['src'])\n"
# prints "start", touches <gate>.started, waits for <gate>, prints "end": the test decides when it ends
GATED = GATE + '''
def main_handler(event, context):
    print("start", flush=True)
    touch(event["gate"] + ".started")
    wait_file(event["gate"])
    print("end", flush=True)
    return "done"
'''


@pytest.fixture
def cli_env() -> Iterator[dict[str, str]]:
    """The subprocesses' environment: this tree first on the path, tagged so every process they start is
    found and stopped afterwards."""
    tag, env = tagged_env({"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])})
    env.pop("SCF_NB_HOME", None)
    try:
        yield env
    finally:
        kill_tagged(tag)


def cli(env: dict[str, str], home: Path, *args: str, stdin: str | None = None,
        module: str = "scf_nb.cli") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, "--home", str(home), *args], input=stdin,
                          capture_output=True, text=True, env=env, timeout=120)


def popen(env: dict[str, str], home: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "scf_nb.cli", "--home", str(home), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_interruptible)


def _interruptible() -> None:
    """(In the child, before it runs.) SIGINT does what Ctrl-C does in a terminal, even when this test run was
    started with SIGINT ignored, as a script's background job is: the child would inherit that, and Python
    then never raises KeyboardInterrupt (two tests failed so, the CLI being right)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Lines:
    """A subprocess's stdout, line by line, read by a thread of its own: ``next()`` waits for one line with a
    deadline (a select on the pipe would miss lines already read into the file's buffer)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc, self._lines = proc, queue.Queue[str | None]()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for line in self.proc.stdout:
                self._lines.put(line.rstrip("\n"))
        except (OSError, ValueError):  # the test closed the pipe (stop) while this thread read it
            pass
        self._lines.put(None)

    def next(self, timeout: float = 60.0) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            pytest.fail(f"no line from {self.proc.args[3:]} within {timeout} s")
        if line is None:
            self.proc.wait(timeout=10)
            pytest.fail(f"{self.proc.args[3:]} exited ({self.proc.returncode}): "
                        f"{self.proc.stderr.read() if self.proc.stderr else ''}")
        return line


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return result.stdout


def wait_for(path: Path, proc: subprocess.Popen[str] | None = None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the command exited ({proc.returncode}): {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {path}")
        time.sleep(0.01)


@pytest.fixture
def filled(scf: Any, home: Path) -> dict[str, Any]:
    """A store with an async function that logs, a sync one, one that raises, and their events; the engine
    stopped afterwards so the CLI's processes can open the store."""
    scf.create_function("echo", ECHO, async_run=True)
    scf.create_function("add", ADD)
    scf.create_function("bad", BAD, async_run=True)
    echoes = [scf.invoke("echo", {"n": n}) for n in range(3)]
    failed = scf.invoke("bad", {"src": "c.mov"})
    scf.wait(echoes + [failed], timeout=60)
    total = scf.invoke("add", [1, 2, 3])
    scf.shutdown()
    return {"echoes": [e.request_id for e in echoes], "failed": failed.request_id, "sync": total.request_id}


def reopen(home: Path) -> Any:
    scf_nb.configure(home=home)
    return scf_nb


def test_pyproject_declares_the_console_script() -> None:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"scf-nb": "scf_nb.cli:main"}


def test_every_subcommand_has_help_with_examples(cli_env: dict[str, str], home: Path) -> None:
    parser = build()
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(subs) == set(COMMANDS)
    for name, sub in subs.items():
        assert "examples:" in sub.format_help() and f"scf-nb {name}" in sub.format_help(), name
    out = ok(cli(cli_env, home, "--help", module="scf_nb"))  # python -m scf_nb is the same command
    assert all(name in out for name in COMMANDS)
    logs_help = ok(cli(cli_env, home, "logs", "--help"))
    assert "--follow" in logs_help and "scf-nb logs RID --follow" in logs_help


def test_reads_match_the_api(cli_env: dict[str, str], home: Path, filled: dict[str, Any], tmp_path: Path) -> None:
    """events, overview, functions, show, logs and export: --json equal to the API's answers, and readable text."""
    events = json.loads(ok(cli(cli_env, home, "events", "--json", "--limit", "3", "--order", "asc")))
    failed = json.loads(ok(cli(cli_env, home, "events", "--status", "failed", "--json")))
    table = ok(cli(cli_env, home, "events", "--function", "echo"))
    overview = json.loads(ok(cli(cli_env, home, "overview", "--json")))
    functions = json.loads(ok(cli(cli_env, home, "functions", "--json")))
    shown = json.loads(ok(cli(cli_env, home, "show", filled["echoes"][0], "--json")))
    shown_text = ok(cli(cli_env, home, "show", filled["failed"]))
    lines = [json.loads(line) for line in ok(cli(cli_env, home, "logs", filled["echoes"][1], "--json")).splitlines()]
    stderr_text = ok(cli(cli_env, home, "logs", filled["echoes"][1], "--stream", "stderr"))
    counts = json.loads(ok(cli(cli_env, home, "export", str(tmp_path / "exported"), "--json")))

    scf = reopen(home)
    page = scf.list_events(order="ASC", limit=3)
    assert events["total_count"] == scf.count_events() == 5 and events["offset"] == 0
    assert [e["request_id"] for e in events["events"]] == page["request_id"].tolist()
    first = events["events"][0]
    assert pd.Timestamp(first["start_time"]) == page["start_time"].iloc[0]
    assert first["duration_ms"] == pytest.approx(page["duration_ms"].iloc[0])
    assert set(first) == set(page.columns)
    assert [e["request_id"] for e in failed["events"]] == [filled["failed"]] and failed["total_count"] == 1
    assert failed["events"][0]["error_type"] == "ValueError"

    rows = table.splitlines()
    assert rows[0].split()[:3] == ["REQUEST", "ID", "FUNCTION"] and rows[-1] == "1-3 of 3 events"
    assert all(rid in table for rid in filled["echoes"]) and "default/echo" in table and "FINISHED" in table
    assert len({row.index("FINISHED") for row in rows[1:-1]}) == 1  # aligned columns

    assert overview == text.records(scf.overview())
    assert {r["status"]: r["count"] for r in overview}["FINISHED"] == 4
    assert [f["name"] for f in functions] == scf.list_functions()["name"].tolist()
    assert shown["result"] == {"n": 0, "twice": 0} and shown["status"] == "FINISHED"
    assert shown["log_seq"] == scf.get_event(filled["echoes"][0]).info()["log_seq"] == 2
    assert "ValueError: cannot decode c.mov" in shown_text and "Traceback" in shown_text  # the remote one
    expected = scf.logs(filled["echoes"][1])
    assert [(r["seq"], r["stream"], r["line"]) for r in lines] == list(
        zip(expected["seq"], expected["stream"], expected["line"], strict=True))
    assert pd.Timestamp(lines[0]["ts"]) == expected["ts"].iloc[0]
    assert stderr_text.strip().endswith(" e warn 1") and len(stderr_text.splitlines()) == 1
    assert counts == {"events": 5, "logs": 6, "functions": 3}
    assert (tmp_path / "exported").is_dir()


def test_invoke_prints_results_and_errors(cli_env: dict[str, str], home: Path, filled: dict[str, Any]) -> None:
    assert ok(cli(cli_env, home, "invoke", "add", "--event", "[4, 5]")).strip() == "9"  # sync: the result
    waited = json.loads(ok(cli(cli_env, home, "invoke", "echo", "--event-file", "-", "--wait", "--json",
                               stdin='{"n": 7}')))
    assert waited["status"] == "FINISHED" and waited["result"] == {"n": 7, "twice": 14}
    text_out = ok(cli(cli_env, home, "invoke", "echo", "--event", '{"n": 2}', "--wait")).splitlines()
    assert text_out[1].startswith("FINISHED in ") and json.loads(text_out[2]) == {"n": 2, "twice": 4}
    bad = cli(cli_env, home, "invoke", "bad", "--event", '{"src": "x.bad"}', "--wait")
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stdout.splitlines()[1].startswith("FAILED in ")
    assert f"{bad.stdout.split()[0]} FAILED: ValueError: cannot decode x.bad" in bad.stderr

    scf = reopen(home)
    assert scf.get_event(waited["request_id"]).result() == {"n": 7, "twice": 14}
    assert scf.get_event(text_out[0]).status == "FINISHED"
    assert scf.get_event_status(bad.stdout.split()[0]) == "FAILED"


BAD_INPUT = [
    # (arguments, exit status, what stderr says)
    (["events", "--status", "BOGUS"], 2, "argument --status: 'BOGUS' is not a status"),
    (["events", "--limit", "x"], 2, "argument --limit: 'x' is not a whole number"),
    (["invoke", "echo", "--event", "{oops"], 2, "--event is not valid JSON"),
    (["invoke", "echo", "--event-file", "missing.json"], 2, "--event-file: cannot read missing.json"),
    (["logs"], 2, "the following arguments are required: REQUEST_ID"),
    (["logs", "no-such-id"], 1, "scf-nb: [ResourceNotFound.AsyncEvent] no event with RequestId 'no-such-id'"),
    (["invoke", "nope"], 1, "scf-nb: [ResourceNotFound.Function] no function default/nope"),
    (["events", "--since", "yesterday"], 1, "scf-nb: [InvalidParameterValue.TimeInterval] start_time: cannot read"),
    (["events", "--limit", "0"], 1, "scf-nb: [InvalidParameterValue.Limit]"),
]


def test_bad_input_gets_one_clear_line_and_its_exit_status(cli_env: dict[str, str], home: Path,
                                                           filled: dict[str, Any]) -> None:
    for args, status, message in BAD_INPUT + [
            (["terminate", filled["echoes"][0]], 1, "scf-nb: [FailedOperation.AsyncEventStatus] event")]:
        result = cli(cli_env, home, *args)
        assert result.returncode == status, (args, result.stderr)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr and result.stdout == ""
        if status == 1:
            assert len(result.stderr.splitlines()) == 1, result.stderr
    assert cli(cli_env, home).returncode == 2  # no subcommand: the help, status 2


def test_invoke_follow_prints_lines_as_they_come(cli_env: dict[str, str], scf: Any, home: Path,
                                                 tmp_path: Path) -> None:
    """``invoke --follow`` (the same printer as ``logs --follow``): the first line arrives while the event
    waits on the gate; after it opens, the last line, the status and the result, and the command ends."""
    scf.create_function("gated", GATED, async_run=True)
    scf.shutdown()
    gate = tmp_path / "gate"
    proc = popen(cli_env, home, "invoke", "gated", "--follow", "--event", json.dumps({"gate": str(gate)}))
    try:
        out = Lines(proc)
        rid = out.next()
        assert out.next().endswith(" o start")  # live: the event is still waiting on its gate
        assert not gate.exists() and proc.poll() is None
        gate.write_text("")
        assert out.next().endswith(" o end")
        assert out.next().startswith("FINISHED in ") and out.next() == '"done"'
        assert proc.wait(timeout=60) == 0
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        stop(proc)
    assert reopen(home).get_event_status(rid) == "FINISHED"


def test_an_interrupted_invoke_terminates_the_event_of_its_own_engine(cli_env: dict[str, str], scf: Any,
                                                                       home: Path, tmp_path: Path) -> None:
    """Without a server the event runs in the command's process: invoke waits for it (saying why), and Ctrl-C
    terminates it (ABORTED, exit status 130, no traceback) rather than leave it to die with the process."""
    scf.create_function("gated", GATED, async_run=True)
    scf.shutdown()
    gate = tmp_path / "gate"
    proc = popen(cli_env, home, "invoke", "gated", "--event", json.dumps({"gate": str(gate)}))
    try:
        rid = Lines(proc).next()
        wait_for(Path(f"{gate}.started"), proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
        assert proc.stderr is not None
        err = proc.stderr.read()
        assert "no server hosts the engine" in err and f"interrupted: {rid} ABORTED" in err
        assert "Traceback" not in err
    finally:
        stop(proc)
    scf = reopen(home)
    assert scf.get_event_status(rid) == "ABORTED" and scf.logs(rid)["line"].tolist() == ["start"]


def test_text_helpers() -> None:
    """JSON of API values (times, NaN, numpy), aligned columns, one-line cells, relative times."""
    import numpy as np

    ts = pd.Timestamp("2024-06-01 12:00:00.5", tz="UTC")
    assert text.plain({"t": ts, "x": float("nan"), "n": np.int64(3), "a": [pd.NaT, None], "o": {1}}) == {
        "t": "2024-06-01T12:00:00.500000+00:00", "x": None, "n": 3, "a": [None, None], "o": [1]}
    assert text.table(("A", "NUM"), [["xyz", "1"], ["b", "100"]], right=(1,)).splitlines() == [
        "A    NUM", "xyz    1", "b    100"]
    assert text.clip("a\nb  c", 10) == "a b c" and text.clip("x" * 20, 8) == "xxxxx..."
    assert abs(moment("2h") - (time.time() - 7200)) < 5 and moment("1700000000") == 1700000000.0
    assert moment("2024-06-01 10:00:00") == "2024-06-01 10:00:00"  # list_events reads (and checks) it


# -- with a server hosting the engine: scf-nb serve ---------------------------------------------------------------
@pytest.fixture
def served(cli_env: dict[str, str], scf: Any, home: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``scf-nb serve`` on a store with the gated function, answering /api/status; stopped (SIGTERM, then a
    kill if it hangs) afterwards."""
    pytest.importorskip("scf_nb.server.extension")  # the extension (ScfNbApp)
    scf.create_function("gated", GATED, async_run=True, concurrency=4)  # four run at once (default: CPUs)
    scf.shutdown()
    port, token = free_port(), "cli-test-token"
    log = (tmp_path / "serve.log").open("w")  # jupyter's log: a file, never a pipe that could fill and block it
    proc = subprocess.Popen([sys.executable, "-m", "scf_nb.cli", "serve", "--home", str(home), "--port", str(port),
                             "--token", token, "--root-dir", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=log, text=True, env=cli_env)
    try:
        url = f"http://127.0.0.1:{port}/"
        out = Lines(proc)
        assert f"{url}?token={token}" in out.next() + out.next()  # it says where, with the token
        wait_for_server(url, token, proc, tmp_path / "serve.log")
        yield {"proc": proc, "url": url, "token": token}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        stop(proc)
        log.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_stops_on_a_signal_with_the_store_complete(served: dict[str, Any], home: Path, signum: int) -> None:
    """SIGTERM or SIGINT (no prompt): the server, its engine and the store stop; exit status 0, the store free
    and whole."""
    served["proc"].send_signal(signum)
    assert served["proc"].wait(timeout=60) == 0
    scf = reopen(home)  # the store is free again: the engine let go of it
    assert scf.list_functions()["name"].tolist() == ["gated"]


def test_serve_refuses_a_store_another_process_holds(cli_env: dict[str, str], scf: Any, home: Path,
                                                    tmp_path: Path) -> None:
    """A server whose engine cannot start (this test's engine holds the store) would serve nothing: it says why
    and exits 1."""
    pytest.importorskip("scf_nb.server.extension")  # the extension (ScfNbApp)
    scf.list_functions()  # this process's engine holds the store
    served = subprocess.run([sys.executable, "-m", "scf_nb.cli", "serve", "--home", str(home), "--port",
                             str(free_port()), "--root-dir", str(tmp_path)], capture_output=True, text=True,
                            env=cli_env, timeout=120)
    assert served.returncode == 1
    assert served.stderr.splitlines()[-1].startswith(
        f"scf-nb: [FailedOperation.Serve] the engine of {home} did not start: [FailedOperation.StoreLocked]")


def test_serve_hosts_the_engine_for_the_other_commands(cli_env: dict[str, str], served: dict[str, Any],
                                                       home: Path, tmp_path: Path) -> None:
    """With ``scf-nb serve`` running, ``invoke`` returns the RequestId at once; ``logs --follow`` from another
    process gets the lines as they come and ends with the event; Ctrl-C on a follower or on ``invoke --wait``
    leaves the event running; ``terminate`` stops one; SIGTERM stops the server (status 0) with the store
    complete: the events it ran FAILED, their lines kept."""
    gates = [tmp_path / f"gate{i}" for i in range(3)]
    rids = [ok(cli(cli_env, home, "invoke", "gated", "--event", json.dumps({"gate": str(g)}))).strip() for g in gates]
    for g in gates:
        wait_for(Path(f"{g}.started"))

    follower = popen(cli_env, home, "logs", rids[0], "--follow")
    try:
        lines = Lines(follower)
        assert lines.next().endswith(" o start") and follower.poll() is None
        gates[0].write_text("")
        assert lines.next().endswith(" o end")
        assert follower.wait(timeout=60) == 0
        assert follower.stderr is not None and follower.stderr.read().strip() == "-- FINISHED"
    finally:
        stop(follower)

    interrupted = popen(cli_env, home, "logs", rids[1], "--follow")
    try:
        assert Lines(interrupted).next().endswith(" o start")
        interrupted.send_signal(signal.SIGINT)
        assert interrupted.wait(timeout=60) == 130
        assert interrupted.stderr is not None
        assert interrupted.stderr.read().strip() == f"scf-nb: stopped following; {rids[1]} runs on"
    finally:
        stop(interrupted)

    gate = tmp_path / "gate3"  # an interrupted invoke --wait leaves the server's event running, too
    waiting = popen(cli_env, home, "invoke", "gated", "--wait", "--event", json.dumps({"gate": str(gate)}))
    try:
        rids.append(Lines(waiting).next())
        wait_for(Path(f"{gate}.started"), waiting)
        waiting.send_signal(signal.SIGINT)
        assert waiting.wait(timeout=60) == 130
        assert waiting.stderr is not None
        assert f"interrupted; {rids[3]} runs on (scf-nb terminate {rids[3]} stops it)" in waiting.stderr.read()
    finally:
        stop(waiting)
    running = json.loads(ok(cli(cli_env, home, "events", "--status", "RUNNING", "--json")))
    assert sorted(e["request_id"] for e in running["events"]) == sorted(rids[1:])

    assert ok(cli(cli_env, home, "terminate", rids[1])).split() == [rids[1], "ABORTED"]

    served["proc"].send_signal(signal.SIGTERM)  # rids[2] and [3] still run: the stop fails them, logs kept
    assert served["proc"].wait(timeout=60) == 0
    scf = reopen(home)
    assert [scf.get_event_status(r) for r in rids] == ["FINISHED", "ABORTED", "FAILED", "FAILED"]
    assert [scf.logs(r)["line"].tolist() for r in rids] == [["start", "end"], ["start"], ["start"], ["start"]]
