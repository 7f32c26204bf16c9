"""The magics, driven through a real IPython shell (the same code path a notebook cell takes)."""

from __future__ import annotations

from typing import Any

import pytest
from conftest import GATE, wait_until
from IPython.core.interactiveshell import InteractiveShell
from IPython.testing.globalipapp import start_ipython

import scf_nb
from scf_nb import api

HANDLER = """
import os
def main_handler(event, context):
    print("got", event, os.environ.get("COLOR"))
    return {"echo": event, "fn": context.function_name}
"""


@pytest.fixture
def ip(scf: Any) -> Any:
    start_ipython()  # once per process; later calls return None
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "scf_nb")
    yield shell
    shell.user_ns.pop("ev", None)


def run(ip: Any, source: str) -> Any:
    """Run a cell; return its value, failing the test on an unexpected error."""
    result = ip.run_cell(source)
    assert result.error_in_exec is None and result.error_before_exec is None, result
    return result.result


def test_cell_becomes_function_and_invoke_returns_event(ip: Any, capsys: Any) -> None:
    run(ip, "%%scf_function echo --async --env COLOR=blue --timeout 60\n" + HANDLER)
    assert "default/echo ($LATEST, async, timeout 60 s) is ready" in capsys.readouterr().out
    fn = scf_nb.get_function("echo")
    assert fn.async_run and fn.env == {"COLOR": "blue"} and fn.timeout == 60

    ev = run(ip, """ev = %scf_invoke echo --event '{"src": "a.mov"}'\nev""")
    assert isinstance(ev, scf_nb.Event)
    assert ev.result(timeout=30) == {"echo": {"src": "a.mov"}, "fn": "echo"}
    assert ev.logs()["line"].tolist() == ["got {'src': 'a.mov'} blue"]


def test_event_var_and_qualifier(ip: Any) -> None:
    run(ip, "%%scf_function echo --async\n" + HANDLER)
    assert run(ip, "%scf_publish echo") == "1"
    ip.user_ns["payload"] = {"n": [1, 2]}
    ev = run(ip, "%scf_invoke echo --event-var payload --qualifier 1")
    assert ev.result(timeout=30)["echo"] == {"n": [1, 2]}
    assert scf_nb.list_events("echo")["qualifier"].tolist() == ["1"]


def test_events_overview_logs_and_terminate(ip: Any, capsys: Any) -> None:
    run(ip, "%%scf_function slow --async\nimport time\ndef main_handler(e, c):\n"
            "    print('working', flush=True)\n    time.sleep(60)\n")
    ev = run(ip, "ev = %scf_invoke slow\nev")
    wait_until(lambda: len(ev.logs()) == 1, what="the handler's first line")
    running = run(ip, "%scf_events --status RUNNING")
    assert running["request_id"].tolist() == [ev.request_id]

    capsys.readouterr()
    run(ip, "%scf_logs ev")
    assert "working" in capsys.readouterr().out
    run(ip, "%scf_terminate ev")
    assert f"{ev.request_id}: ABORTED" in capsys.readouterr().out
    run(ip, f"%scf_logs {ev.request_id} --follow")  # returns because the event has ended
    assert "-- ABORTED" in capsys.readouterr().out

    counts = run(ip, "%scf_overview --function slow").set_index("status")["count"]
    assert counts["ABORTED"] == 1 and counts["RUNNING"] == 0


@pytest.mark.parametrize("cell, message", [
    ("%scf_invoke echo --event '{bad'", "--event is not valid JSON"),
    ("%scf_invoke nosuch", "ResourceNotFound.Function"),
    ("%scf_events --limit x", "invalid int value"),
    ("%scf_terminate 00000000-0000-4000-8000-000000000000", "ResourceNotFound.AsyncEvent"),
    ("%%scf_function bad --async\ndef main_handler(e, c):\n    return (\n", "InvalidParameterValue.Code"),
    ("%%scf_function echo --env NOEQUALS\n" + HANDLER, "--env takes KEY=VALUE"),
    ("%scf_invoke echo --event '{}' --event-var x", "not both"),
])
def test_bad_input_is_a_one_line_usage_error(ip: Any, capsys: Any, cell: str, message: str) -> None:
    run(ip, "%%scf_function echo --async\n" + HANDLER)
    capsys.readouterr()
    result = ip.run_cell(cell)
    err = capsys.readouterr()
    text = err.out + err.err
    assert result.success is False
    assert "UsageError" in text and message in text
    assert "Traceback" not in text
    # nothing was recorded by a rejected call
    assert scf_nb.list_events().empty


FOLLOWED = GATE + '''
def main_handler(event, context):
    print("start", flush=True)
    wait_file(event["gate"])
    print("end", flush=True)
'''


def test_follow_ends_with_every_line(ip: Any, capsys: Any, monkeypatch: Any, tmp_path: Any) -> None:
    """``--follow`` prints the lines stored and those printed after it started, then the status line. The
    gate opens right after ``follow`` was called, so the last line and the end come while it waits."""
    gate = tmp_path / "gate"
    run(ip, "%%scf_function followed --async\n" + FOLLOWED)
    ip.user_ns["payload"] = {"gate": str(gate)}
    ev = run(ip, "ev = %scf_invoke followed --event-var payload\nev")
    wait_until(lambda: len(ev.logs()) == 1, what="the handler's first line")
    real_follow = api.follow

    def follow_then_open_the_gate(*args: Any, **kwargs: Any) -> Any:  # the real call; it only watches
        lines = real_follow(*args, **kwargs)
        gate.write_text("")
        return lines

    monkeypatch.setattr(api, "follow", follow_then_open_the_gate)
    capsys.readouterr()
    run(ip, "%scf_logs ev --follow")
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 2)[2] for line in out[:-1]] == ["start", "end"]
    assert out[-1] == "-- FINISHED"


STREAMS = GATE + '''
def main_handler(event, context):
    print("out 1", flush=True)
    wait_file(event["gate"])
    for i in range(2, 200):
        print("out", i, flush=True)
        print("err", i, file=sys.stderr, flush=True)
'''


def test_follow_uses_follow_and_keeps_its_stream(ip: Any, capsys: Any, monkeypatch: Any, tmp_path: Any) -> None:
    """``--follow --stream stderr``: the lines of one stream only, printed after the call included, read by
    one ``follow`` (no read loop of the magic's own: ``logs`` is not called)."""
    gate = tmp_path / "gate"
    run(ip, "%%scf_function streams --async\n" + STREAMS)
    ip.user_ns["payload"] = {"gate": str(gate)}
    ev = run(ip, "ev = %scf_invoke streams --event-var payload\nev")
    wait_until(lambda: len(ev.logs()) == 1, what="the handler's first line")
    real_follow, calls = api.follow, []

    def follow_then_open_the_gate(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        lines = real_follow(*args, **kwargs)
        gate.write_text("")
        return lines

    monkeypatch.setattr(api, "follow", follow_then_open_the_gate)
    monkeypatch.setattr(api, "logs", None)  # --follow must not read logs itself
    capsys.readouterr()
    run(ip, "%scf_logs ev --follow --stream stderr")
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" ", 1)[1] for line in out[:-1]] == [f"e err {i}" for i in range(2, 200)]
    assert out[-1] == "-- FINISHED" and calls == [(ev.request_id,)]
    result = ip.run_cell("%scf_logs ev --follow --stream both")
    assert result.success is False and "--stream must be stdout or stderr" in capsys.readouterr().err
