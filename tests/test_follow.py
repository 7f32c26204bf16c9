"""``scf_nb.follow``: an event's lines in seq order, each once, the stored ones and then each as the store
commits it, until the event ends; on real loky instances and a real DuckDB store. Handlers wait on gate files;
the test opens a gate only after ``follow`` was called, so those lines are printed after the call."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until
from engine_support import code_of

from scf_nb.store import follow as follow_module
from scf_nb.store import observe

CHATTY = GATE + '''
def main_handler(event, context):
    for i in range(event["before"]):
        print("before", i, flush=True)
    wait_file(event["gate"])
    for i in range(event["after"]):
        print("after", i, file=sys.stderr if i % 7 == 0 else sys.stdout)
        if i % 500 == 0:
            sys.stdout.flush()
            time.sleep(0.002)  # a few commits' worth of lines, not one burst
    return "done"
'''


def chatty(scf: Any, tmp_path: Path, before: int = 3, after: int = 3000, trace: bool = True) -> tuple[Any, Path]:
    scf.create_function("chatty", CHATTY, async_run=True, trace=trace)
    gate = tmp_path / "gate"
    ev = scf.invoke("chatty", {"before": before, "after": after, "gate": str(gate)})
    wait_until(lambda: len(ev.logs()) == before, what="the lines before the gate")
    return ev, gate


def as_stored(ev: Any, since_seq: int = 0) -> list[tuple[Any, ...]]:
    df = ev.logs(since_seq=since_seq)
    return list(zip(df.seq, [t.to_pydatetime() for t in df.ts], df.stream, df.line, strict=True))


def test_follow_of_a_running_event_gives_every_line_once_in_order_and_ends_with_it(scf: Any, tmp_path: Path) -> None:
    ev, gate = chatty(scf, tmp_path)
    lines = scf.follow(ev.request_id)
    gate.write_text("")  # everything from here on is printed after the call
    got = list(lines)
    assert ev.status == "FINISHED"  # it ended with the event
    assert [line.seq for line in got] == list(range(1, 3004))
    assert [tuple(line) for line in got] == as_stored(ev)  # the same seq, ts, stream and text as logs()
    assert {line.stream for line in got} == {"stdout", "stderr"}
    first = got[0]
    assert (first.seq, first["seq"], first[0]) == (1, 1, 1)
    assert first["line"] == first.line == "before 0" and first["stream"] == "stdout"
    assert first["ts"] == first.ts and first.ts.tzinfo is not None
    with pytest.raises(KeyError):
        first["nope"]


def test_follow_after_the_end_gives_the_stored_lines_and_stops_at_once(scf: Any, tmp_path: Path) -> None:
    ev, gate = chatty(scf, tmp_path, after=200)
    gate.write_text("")
    ev.wait(60)
    t = time.monotonic()
    got = [tuple(line) for line in ev.follow()]
    assert time.monotonic() - t < 2.0
    assert got == as_stored(ev) and len(got) == 203


def test_since_seq_and_bad_arguments(scf: Any, tmp_path: Path) -> None:
    ev, gate = chatty(scf, tmp_path, after=100)
    later = scf.follow(ev.request_id, since_seq=2)
    gate.write_text("")
    assert [line.seq for line in later] == list(range(3, 104))
    assert [line.seq for line in ev.follow(since_seq=100)] == [101, 102, 103]
    assert [line.seq for line in ev.follow(since_seq=ev.logs().seq.iloc[100])] == [102, 103]  # numpy's int
    assert list(ev.follow(since_seq=103)) == []
    rid = ev.request_id
    assert code_of(lambda: scf.follow(rid, since_seq=-1)) == "InvalidParameterValue.SinceSeq"
    assert code_of(lambda: scf.follow(rid, since_seq="3")) == "InvalidParameterValue.SinceSeq"
    assert code_of(lambda: scf.follow(rid, timeout=-1)) == "InvalidParameterValue.Timeout"
    assert code_of(lambda: scf.follow(rid, timeout="1")) == "InvalidParameterValue.Timeout"
    assert code_of(lambda: scf.follow(rid, timeout=float("nan"))) == "InvalidParameterValue.Timeout"
    assert len(list(scf.follow(rid, timeout=float("inf")))) == 103  # ended: no wait at all


def test_unknown_id_fails_at_the_call(scf: Any) -> None:
    assert code_of(lambda: scf.follow("00000000-0000-4000-8000-000000000000")) == "ResourceNotFound.AsyncEvent"
    assert code_of(lambda: scf.follow("not an id")) == "ResourceNotFound.AsyncEvent"


def test_timeout_ends_the_iteration_early_and_the_event_runs_on(scf: Any, tmp_path: Path) -> None:
    ev, gate = chatty(scf, tmp_path, after=10)
    t = time.monotonic()
    got = [line.line for line in scf.follow(ev.request_id, timeout=0.3)]
    took = time.monotonic() - t
    assert got == ["before 0", "before 1", "before 2"]
    assert 0.25 <= took < 5.0
    assert ev.status == "RUNNING"
    gate.write_text("")
    assert ev.result(timeout=60) == "done"


def test_untraced_event_is_followed_all_the_same(scf: Any, tmp_path: Path) -> None:
    ev, gate = chatty(scf, tmp_path, after=500, trace=False)
    lines = ev.follow()
    gate.write_text("")
    got = [tuple(line) for line in lines]
    assert [g[0] for g in got] == list(range(1, 504))
    assert got == as_stored(ev)
    assert code_of(lambda: scf.get_event_status(ev.request_id)) == "ResourceNotFound.AsyncEvent"


def test_twenty_followers_at_once_all_get_every_line(scf: Any, tmp_path: Path) -> None:
    ev, gate = chatty(scf, tmp_path, after=5000)
    results: list[list[int]] = [[] for _ in range(20)]
    followers = [scf.follow(ev.request_id) for _ in range(20)]

    def read(i: int) -> None:
        results[i] = [line.seq for line in followers[i]]

    threads = [threading.Thread(target=read, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    gate.write_text("")
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads)
    assert all(seqs == list(range(1, 5004)) for seqs in results)


@pytest.mark.parametrize("limit", ["follower", "feed"])
def test_a_follower_far_behind_reads_what_it_missed_from_the_store(scf: Any, tmp_path: Path, monkeypatch: Any,
                                                                    limit: str) -> None:
    """Over its limit a follower is given no more lines (memory stays bounded) and reads them from the store:
    still every line, once, in order. ``feed``: lines dropped before the dispatcher (over its limit)."""
    if limit == "follower":
        monkeypatch.setattr(follow_module, "MAX_CHARS", 2000)
    else:
        monkeypatch.setattr(observe, "MAX_PENDING_CHARS", 0)
    ev, gate = chatty(scf, tmp_path, after=4000)
    lines = ev.follow()
    assert next(lines).seq == 1
    gate.write_text("")
    ev.wait(60)  # it is not read meanwhile: far behind
    rest = [tuple(line) for line in lines]
    assert [r[0] for r in rest] == list(range(2, 4004))
    assert rest == as_stored(ev, since_seq=1)


def test_a_waiting_follower_does_not_read_the_store(scf: Any, tmp_path: Path, monkeypatch: Any) -> None:
    """No poll loop: while its event prints nothing, a follower blocks on what the commits signal."""
    store = scf.client().engine.store
    reads = []
    real = store.log_lines
    monkeypatch.setattr(store, "log_lines", lambda *a: reads.append(a) or real(*a))  # the real read, counted
    ev, gate = chatty(scf, tmp_path, after=1)
    got: list[str] = []
    lines = ev.follow()
    reader = threading.Thread(target=lambda: got.extend(line.line for line in lines))
    reader.start()
    wait_until(lambda: len(got) == 3, what="the stored lines")
    threading.Event().wait(0.5)  # a window to count reads in, not a synchronisation
    assert len(reads) == 1
    gate.write_text("")
    reader.join(60)
    assert got == ["before 0", "before 1", "before 2", "after 0"]


def test_shutdown_ends_a_follower(scf: Any, tmp_path: Path) -> None:
    ev, _ = chatty(scf, tmp_path)
    got: list[int] = []
    lines = ev.follow()
    reader = threading.Thread(target=lambda: got.extend(line.seq for line in lines))
    reader.start()
    wait_until(lambda: len(got) == 3, what="the stored lines")
    scf.shutdown()  # the event ends FAILED (engine stopped): so does the follow
    reader.join(30)
    assert not reader.is_alive() and got == [1, 2, 3]


def test_a_follower_dropped_without_close_stops_being_fed(scf: Any, tmp_path: Path) -> None:
    """Dropped unclosed (garbage collected), a follower is removed by the feed's next turn, and the store stops
    recording for the feed once nobody listens."""
    import gc

    ev, gate = chatty(scf, tmp_path, after=10)
    store = scf.client().engine.store
    lines = ev.follow()
    assert next(lines).seq == 1 and store.observed
    del lines
    gc.collect()
    gate.write_text("")
    ev.wait(60)
    wait_until(lambda: not store.observed, what="the store no longer observed")


def test_close_from_another_thread_wakes_a_waiting_follower(scf: Any, tmp_path: Path) -> None:
    ev, gate = chatty(scf, tmp_path)
    got: list[int] = []
    lines = ev.follow()
    reader = threading.Thread(target=lambda: got.extend(line.seq for line in lines))
    reader.start()
    wait_until(lambda: len(got) == 3, what="the stored lines")
    lines.close()
    reader.join(30)
    assert not reader.is_alive() and got == [1, 2, 3]
    assert ev.status == "RUNNING"  # the event runs on
    gate.write_text("")
    assert ev.result(timeout=60) == "done"
