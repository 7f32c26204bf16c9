"""End to end: what events write to stdout/stderr reaches the store, live, whole, in order and attributed to
the right event. Real loky instance processes, a real DuckDB file (the ``scf`` fixture)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from conftest import GATE, kill_quietly, pid_alive, wait_until
from processes import kill_tagged, tagged_env

from scf_nb.core.logchannel import CONTINUED


def touch(path: Path) -> None:
    path.write_text("")


def lines(df: pd.DataFrame, stream: str | None = None) -> list[str]:
    return list(df.line if stream is None else df[df.stream == stream].line)


def assert_seq(df: pd.DataFrame) -> None:
    assert list(df.seq) == list(range(1, len(df) + 1))


def wait_logs(scf: Any, rid: str, n: int, what: str, **kw: Any) -> pd.DataFrame:
    """The event's logs (``scf.logs(rid, **kw)``) once they hold at least ``n`` lines."""
    seen: list[pd.DataFrame] = []

    def check() -> bool:
        seen[:] = [scf.logs(rid, **kw)]
        return len(seen[0]) >= n

    wait_until(check, what=what)
    return seen[0]


# -- every source, with its stream, in order ------------------------------------------------------------------
SOURCES = textwrap.dedent('''
    import ctypes, logging, os, subprocess, sys

    libc = ctypes.CDLL(None)

    def main_handler(event, context):
        print("print-out")
        print("print-err", file=sys.stderr)
        logging.warning("logging-warn")
        os.write(1, b"os-write-out\\n")
        os.write(2, b"os-write-err\\n")
        libc.printf(b"c-printf %d\\n", 42)
        libc.puts(b"c-puts")
        libc.fflush(None)
        os.system("echo from-shell")
        subprocess.run([sys.executable, "-c",
                        "import sys; print('py-child-out'); print('py-child-err', file=sys.stderr)"], check=True)
        subprocess.run(["sh", "-c", "echo sh-out; echo sh-err >&2"], check=True)
        print("last-out")
        return "ok"
''')


def test_capture_from_print_logging_os_write_c_and_child_processes(scf: Any) -> None:
    scf.create_function("sources", SOURCES, async_run=True)
    ev = scf.invoke("sources")
    assert ev.result(timeout=60) == "ok"
    df = scf.logs(ev.request_id)
    assert_seq(df)
    assert list(df.columns[:4]) == ["seq", "ts", "stream", "line"]
    assert lines(df, "stdout") == ["print-out", "os-write-out", "c-printf 42", "c-puts", "from-shell",
                                   "py-child-out", "sh-out", "last-out"]
    err = lines(df, "stderr")
    assert len(err) == 5
    assert err[0] == "print-err"
    assert err[1].endswith("logging-warn")
    assert err[2:] == ["os-write-err", "py-child-err", "sh-err"]
    assert set(df.stream) == {"stdout", "stderr"}
    assert df.ts.notna().all()


UNFLUSHED_C = textwrap.dedent('''
    import ctypes, sys, scf_nb

    scf_nb.configure(home=sys.argv[1])
    scf_nb.create_function("c", """
    import ctypes
    libc = ctypes.CDLL(None)
    def main_handler(event, context):
        libc.printf(b"c-line %d\\\\n", event["i"])
        print("py-line", event["i"])
    """, async_run=True)
    for i in range(2):
        ev = scf_nb.invoke("c", {"i": i})
        ev.result(timeout=60)
        print(sorted(scf_nb.logs(ev.request_id).line), flush=True)
    scf_nb.shutdown()
''')


def test_c_output_without_fflush_belongs_to_its_event_without_pythonunbuffered(tmp_path: Path) -> None:
    """This machine sets PYTHONUNBUFFERED=1, which also makes C stdio unbuffered; a user's machine may not."""
    tag, env = tagged_env()
    env.pop("PYTHONUNBUFFERED", None)
    proc = subprocess.Popen([sys.executable, "-c", UNFLUSHED_C, str(tmp_path / "store")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        kill_tagged(tag)
    assert proc.returncode == 0, err
    assert out.splitlines() == ["['c-line 0', 'py-line 0']", "['c-line 1', 'py-line 1']"]


# -- live lines and following ----------------------------------------------------------------------------------
FOLLOW = GATE + textwrap.dedent('''
    def main_handler(event, context):
        print("first 1")
        print("first 2")
        wait_file(event["go1"])
        print("second 1")
        print("second 2", file=sys.stderr)
        wait_file(event["go2"])
        return "ok"
''')


def test_lines_are_queryable_while_the_event_runs_and_since_seq_follows(scf: Any, tmp_path: Path) -> None:
    go1, go2 = tmp_path / "go1", tmp_path / "go2"
    scf.create_function("follow", FOLLOW, async_run=True)
    ev = scf.invoke("follow", {"go1": str(go1), "go2": str(go2)})
    rid = ev.request_id

    df = wait_logs(scf, rid, 2, "the first lines while the event runs")
    assert ev.status == "RUNNING"
    assert lines(df) == ["first 1", "first 2"] and list(df.seq) == [1, 2]

    touch(go1)
    later = wait_logs(scf, rid, 2, "the lines after seq 2", since_seq=2)
    assert ev.status == "RUNNING"
    assert list(later.seq) == [3, 4]
    assert sorted(zip(later.stream, later.line, strict=True)) == [("stderr", "second 2"), ("stdout", "second 1")]
    assert len(scf.logs(rid, since_seq=4)) == 0
    assert list(ev.logs(since_seq=3).seq) == [4]  # the Event handle follows the same way

    touch(go2)
    assert ev.result(timeout=60) == "ok"
    df = scf.logs(rid)
    assert_seq(df)
    assert lines(df, "stdout") == ["first 1", "first 2", "second 1"]
    assert len(scf.logs(rid, since_seq=4)) == 0


def test_follow_with_the_seq_values_of_the_returned_frame(scf: Any) -> None:
    """The follow pattern a caller writes: ``since_seq=df.seq.iloc[-1]`` (a numpy integer, not an int)."""
    scf.create_function("many", MANY, async_run=True)
    ev = scf.invoke("many", {"n": 5})
    ev.result(timeout=60)
    df = scf.logs(ev.request_id)
    assert list(scf.logs(ev.request_id, since_seq=df.seq.iloc[2]).seq) == [4, 5]
    assert list(ev.logs(since_seq=df.seq.max()).seq) == []


def test_stream_filter_and_bad_log_arguments(scf: Any) -> None:
    scf.create_function("sources", SOURCES, async_run=True)
    ev = scf.invoke("sources")
    ev.result(timeout=60)
    err = scf.logs(ev.request_id, stream="stderr")
    assert set(err.stream) == {"stderr"} and len(err) == 5
    assert set(scf.logs(ev.request_id, stream="stdout").stream) == {"stdout"}
    for kw, word in ((dict(stream="both"), "both"), (dict(since_seq=-1), "-1"), (dict(since_seq="3"), "3")):
        with pytest.raises(scf.ScfError) as e:
            scf.logs(ev.request_id, **kw)
        assert e.value.code.startswith("InvalidParameterValue."), e.value
        assert word in e.value.message
    with pytest.raises(scf.ScfError) as e:
        scf.logs("00000000-0000-4000-8000-000000000000")
    assert e.value.code == "ResourceNotFound.AsyncEvent"


# -- nothing lost on kill, nothing given to another event -------------------------------------------------------
VICTIM = GATE + textwrap.dedent('''
    import subprocess

    def main_handler(event, context):
        for i in range(event["n"]):
            print(f"victim {i}")
        print("victim err", file=sys.stderr)
        child = subprocess.Popen(["sh", "-c", 'echo child-line; echo "$$" > "$0.tmp"; mv "$0.tmp" "$0"; '
                                              'exec sleep 1000', event["child"]])
        wait_file(event["child"])
        touch(event["ready"], str(os.getpid()))  # written, not yet read by the engine: now kill
        time.sleep(1000)
''')

SIBLING = GATE + textwrap.dedent('''
    def main_handler(event, context):
        for i in range(200):
            print(f"sibling {i}")
        wait_file(event["go"])
        for i in range(200, 400):
            print(f"sibling {i}")
        return "sibling ok"
''')

QUIET = '''
def main_handler(event, context):
    print("next event line")
    return "next ok"
'''


@pytest.mark.parametrize("how", ["terminate", "sigkill"])
def test_nothing_lost_when_an_event_is_killed_and_nothing_leaks(scf: Any, tmp_path: Path, how: str) -> None:
    n = 3000
    scf.create_function("victim", VICTIM, async_run=True)
    scf.create_function("sibling", SIBLING, async_run=True)
    sib = scf.invoke("sibling", {"go": str(tmp_path / "go")})
    ready, child_file = tmp_path / "ready", tmp_path / "child"
    ev = scf.invoke("victim", {"n": n, "ready": str(ready), "child": str(child_file)})
    wait_until(ready.exists, timeout=60, what="the victim's lines to be written")
    instance_pid, child_pid = int(ready.read_text()), int(child_file.read_text())
    try:
        wait_until(lambda: len(scf.logs(sib.request_id)) >= 200, what="the sibling's first lines")
        if how == "terminate":
            assert scf.terminate(ev.request_id) == "ABORTED"
        else:
            os.kill(instance_pid, signal.SIGKILL)
            assert ev.wait(timeout=30) == "FAILED"
            assert "SIGKILL" in (ev.info()["error"] or {}).get("message", "")
        touch(tmp_path / "go")
        assert sib.result(timeout=60) == "sibling ok"

        df = scf.logs(ev.request_id)
        assert_seq(df)
        assert lines(df, "stdout") == [f"victim {i}" for i in range(n)] + ["child-line"]
        assert lines(df, "stderr") == ["victim err"]

        sdf = scf.logs(sib.request_id)
        assert_seq(sdf)
        assert lines(sdf) == [f"sibling {i}" for i in range(400)]

        scf.create_function("victim", QUIET, async_run=True)  # the next event of the same function
        nxt = scf.invoke("victim")
        assert nxt.result(timeout=60) == "next ok"
        assert lines(scf.logs(nxt.request_id)) == ["next event line"]
        assert len(scf.logs(ev.request_id)) == n + 2  # nothing arrived later for the killed event

        wait_until(lambda: not pid_alive(instance_pid) and not pid_alive(child_pid),
                   what="the killed instance and its child process to be gone")
    finally:
        kill_quietly(child_pid)
        kill_quietly(instance_pid)


TAGGED = textwrap.dedent('''
    import sys

    def main_handler(event, context):
        tag = event["tag"]
        for i in range(event["n"]):
            print(f"{tag} out {i}")
            if i % 100 == 0:
                print(f"{tag} err {i}", file=sys.stderr)
        sys.stdout.write(f"{tag} tail without newline")
        sys.stderr.write(f"{tag} err tail")
        return tag
''')


def test_lines_of_events_running_side_by_side_and_one_after_another_stay_with_their_event(scf: Any) -> None:
    """Two instances at once, each serving several events in a row (warm): every line, including a last
    one without a newline, belongs to the event that wrote it."""
    n = 2000
    scf.create_function("tagged", TAGGED, async_run=True, concurrency=2)
    events = {f"ev{k}": scf.invoke("tagged", {"tag": f"ev{k}", "n": n}) for k in range(6)}
    for tag, ev in events.items():
        assert ev.result(timeout=60) == tag
    for tag, ev in events.items():
        df = scf.logs(ev.request_id)
        assert_seq(df)
        assert lines(df, "stdout") == [f"{tag} out {i}" for i in range(n)] + [f"{tag} tail without newline"]
        assert lines(df, "stderr") == [f"{tag} err {i}" for i in range(0, n, 100)] + [f"{tag} err tail"]


PROGRESS = r'''
import sys

def main_handler(event, context):
    for p in (10, 20, 30):
        sys.stdout.write(f"\rprogress {p}%")
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.write("windows line\r\n")
    print("done")
'''


def test_progress_bars_with_carriage_returns_become_lines(scf: Any) -> None:
    scf.create_function("progress", PROGRESS, async_run=True)
    ev = scf.invoke("progress")
    ev.result(timeout=60)
    assert lines(scf.logs(ev.request_id)) == ["progress 10%", "progress 20%", "progress 30%", "windows line",
                                               "done"]


# -- volume, long lines, bad bytes ------------------------------------------------------------------------------
MANY = '''
def main_handler(event, context):
    for i in range(event["n"]):
        print("line", i)
    return event["n"]
'''


def test_many_lines_are_stored_exactly_once_in_order(scf: Any) -> None:
    n = 200_000
    scf.create_function("many", MANY, async_run=True)
    ev = scf.invoke("many", {"n": n})
    assert ev.result(timeout=120) == n
    df = scf.logs(ev.request_id)
    assert len(df) == n
    assert_seq(df)
    assert lines(df) == [f"line {i}" for i in range(n)]
    assert set(df.stream) == {"stdout"}


LONG = textwrap.dedent('''
    import os, sys

    def main_handler(event, context):
        if event.get("long"):
            sys.stdout.write("x" * event["long"])  # no newline: the end-of-event marker follows it
            return "long"
        os.write(1, b"bad \\xff\\xfe bytes\\n")
        os.write(2, b"\\x80 at start\\n")
        os.write(1, "utf-8 ok: \\u00e9\\u4e2d\\n".encode())
        print("after")
        return "short"
''')


def test_a_5mb_line_without_newline_is_stored_in_pieces_and_the_next_event_is_fine(scf: Any) -> None:
    size = 5_000_000
    scf.create_function("long", LONG, async_run=True)
    ev = scf.invoke("long", {"long": size})
    assert ev.result(timeout=60) == "long"
    df = scf.logs(ev.request_id)
    assert_seq(df)
    assert len(df) > 1
    assert all(line.endswith(CONTINUED) for line in df.line[:-1])  # pieces of one line, marked (logchannel)
    assert "".join(df.line).replace(CONTINUED, "") == "x" * size

    nxt = scf.invoke("long", {})  # the same (warm) instance, the same pipes
    assert nxt.result(timeout=60) == "short"
    assert lines(scf.logs(nxt.request_id), "stdout")[-1] == "after"
    assert len(scf.logs(ev.request_id)) == len(df)


def test_non_utf8_bytes_are_stored_as_escapes_and_ingestion_goes_on(scf: Any) -> None:
    scf.create_function("long", LONG, async_run=True)
    ev = scf.invoke("long", {})
    assert ev.result(timeout=60) == "short"
    df = scf.logs(ev.request_id)
    assert_seq(df)
    assert lines(df, "stdout") == ["bad \\xff\\xfe bytes", "utf-8 ok: \u00e9\u4e2d", "after"]
    assert lines(df, "stderr") == ["\\x80 at start"]
    again = scf.invoke("long", {})
    assert again.result(timeout=60) == "short"
    assert len(scf.logs(again.request_id)) == 4


# -- search ----------------------------------------------------------------------------------------------------
ECHO = '''
def main_handler(event, context):
    print("plain line")
    print(event["say"])
    return None
'''


def test_search_logs_finds_lines_across_events_with_their_request_id(scf: Any) -> None:
    scf.create_function("one", ECHO, async_run=True)
    scf.create_function("two", ECHO, async_run=True)
    a = scf.invoke("one", {"say": "the Needle-1 is here"})
    b = scf.invoke("two", {"say": "another NEEDLE-2"})
    c = scf.invoke("one", {"say": "hay only"})
    for ev in (a, b, c):
        ev.result(timeout=60)
    found = scf.search_logs("needle")
    assert sorted(zip(found.request_id, found.line, strict=True)) == sorted(
        [(a.request_id, "the Needle-1 is here"), (b.request_id, "another NEEDLE-2")])
    assert {"request_id", "function_name", "seq", "ts", "stream", "line"} <= set(found.columns)
    only_two = scf.search_logs("needle", function="two")
    assert list(only_two.request_id) == [b.request_id]
    assert len(scf.search_logs("plain line")) == 3
    assert len(scf.search_logs("no such text anywhere")) == 0
    with pytest.raises(scf.ScfError):
        scf.search_logs("")
