"""The accept journal: an engine killed outright (SIGKILL, as a kernel restart or a killed server does) loses no
event whose RequestId ``invoke`` had returned, even one the store's writer had not written yet."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from scf_nb.core.errors import ScfError
from scf_nb.core.functions import check_name
from scf_nb.core.records import make_request_id

KILLED = textwrap.dedent('''
    import json, os, signal, sys
    import scf_nb
    scf_nb.configure(home=sys.argv[1], max_qps=1e9)
    scf_nb.create_function("held", "import time\\ndef main_handler(event, context):\\n    time.sleep(600)\\n",
                           async_run=True, concurrency=1)
    ids = [scf_nb.invoke("held", {"i": i, "text": "tab\\there, newline\\nthere, ünïcode"}).request_id
           for i in range(50)]
    print("IDS", json.dumps(ids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # at once: the writer holds young events back for up to 0.5 s
''')


def test_every_request_id_returned_before_a_sigkill_is_recorded(scf: Any, home: Path) -> None:
    run = subprocess.run([sys.executable, "-c", KILLED, str(home / "killed")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == -9, run.stderr
    ids = json.loads(next(line[4:] for line in run.stdout.splitlines() if line.startswith("IDS ")))
    scf.configure(home=str(home / "killed"))
    frame = scf.list_events("held", limit=None, order="ASC")
    assert frame["request_id"].tolist() == ids  # each one, once, in the order accepted
    assert set(frame["status"]) == {"FAILED"}
    info = scf.get_event(ids[-1]).info()
    assert info["error"]["type"] == "EngineLost", info
    # nothing left to replay: a second restart finds no journal entries again
    scf.shutdown()
    assert not (home / "killed" / "scf_nb.duckdb.accepted").exists() or \
        (home / "killed" / "scf_nb.duckdb.accepted").stat().st_size == 0
    scf.configure(home=str(home / "killed"))
    assert scf.count_events("held") == 50


THREADS_KILLED = textwrap.dedent('''
    import json, os, signal, sys, threading, time
    import scf_nb
    scf_nb.configure(home=sys.argv[1], max_qps=1e9, flush_interval=0.01)
    scf_nb.create_function("quick", "def main_handler(event, context):\\n    return event\\n", async_run=True,
                           concurrency=2)
    first = scf_nb.invoke("quick", {})
    first.wait(60)  # the instances are up: events end and are committed all along
    ids, stop = [first.request_id], time.monotonic() + 1.5
    def invoking(t):
        n = 0
        while time.monotonic() < stop:  # the writer commits and settles the journal all along
            ids.append(scf_nb.invoke("quick", {"t": t, "n": n}).request_id)
            n += 1
    threads = [threading.Thread(target=invoking, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print("IDS", json.dumps(ids), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
''')


def test_no_request_id_is_lost_when_threads_invoke_while_the_writer_commits_and_then_a_sigkill(
        scf: Any, home: Path) -> None:
    run = subprocess.run([sys.executable, "-c", THREADS_KILLED, str(home / "threads")], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == -9, run.stderr
    ids = json.loads(next(line[4:] for line in run.stdout.splitlines() if line.startswith("IDS ")))
    assert len(ids) > 100
    scf.configure(home=str(home / "threads"))
    frame = scf.list_events("quick", limit=None)
    assert sorted(frame["request_id"]) == sorted(ids)  # each one, once
    assert set(frame["status"]) <= {"FINISHED", "FAILED"}
    assert (frame["status"] == "FINISHED").any()  # most had ended and were committed before the kill


@pytest.mark.parametrize("name", ["f\n", "f\t", "f\nx", " f"])
def test_a_function_name_with_whitespace_is_refused(name: str) -> None:
    with pytest.raises(ScfError) as err:
        check_name("function", name)
    assert err.value.code == "InvalidParameterValue.FunctionName"


_FN = object()  # the function all _Accepted events share


class _Accepted:
    """What the journal reads of an accepted event (an EventState has these and more)."""

    def __init__(self, key: int) -> None:
        self.fn = _FN
        self.key, self.request_id, self.function_name, self.namespace = key, make_request_id(key), "f", "default"
        self.qualifier, self.invoke_type, self.traced, self.start_time = "$LATEST", "async", True, 1.5 + key
        self.payload = json.dumps({"k": key, "s": "tab\there\nnewline ünï"}, ensure_ascii=False)


def test_the_journal_skips_a_torn_line_and_compacts_to_what_is_unwritten(tmp_path: Path) -> None:
    from scf_nb.store import journal as J

    path = tmp_path / "j.accepted"
    j = J.Journal(path)
    events = [_Accepted(k) for k in range(1, 4)]
    for ev in events:
        j.add(ev)  # type: ignore[arg-type]
    j.close(remove=False)
    with open(path, "r+b") as f:  # a process killed inside its last store: a line without its end
        data = f.read()
        end = data.index(b"\0")
        f.seek(end)
        f.write(f"{make_request_id(4)}\tf\tdefault\t$LAT".encode())
    j = J.Journal(path)
    rows = j.read()
    assert [r[J.EVENT_COLUMNS.index("request_id")] for r in rows] == [ev.request_id for ev in events]
    assert [r[0] for r in rows] == [1, 2, 3]  # the key, from the RequestId
    assert rows[0][J.EVENT_COLUMNS.index("start_time")] == events[0].start_time
    assert rows[0][J.EVENT_COLUMNS.index("payload")] == events[0].payload
    j.settle([])
    assert j.read() == []
    # past COMPACT_BYTES the journal keeps only the unwritten events (and reads them back)
    many = [_Accepted(k) for k in range(10, 10 + J.COMPACT_BYTES // 60)]
    for ev in many:
        j.add(ev)  # type: ignore[arg-type]
    assert j.size > J.COMPACT_BYTES
    j.settle(many[-2:])  # type: ignore[arg-type]
    assert [r[0] for r in j.read()] == [many[-2].key, many[-1].key]
    j.add(_Accepted(99))  # type: ignore[arg-type]
    assert [r[0] for r in J.Journal(path).read()] == [many[-2].key, many[-1].key, 99]
    j.close(remove=True)
    assert not path.exists()


def test_a_journal_left_by_an_engine_of_the_older_line_format_is_read(tmp_path: Path) -> None:
    """Lines of an engine before 2026-12-03 start with the key and hold the start time in seconds: an engine
    killed before an upgrade still has its accepted events recorded by the next one."""
    from scf_nb.store import journal as J

    path = tmp_path / "old.accepted"
    rid = make_request_id(7)
    path.write_bytes(f"7\t{rid}\tf\tdefault\t$LATEST\tasync\t1\t1712345678.25\t{{\"a\": 1}}\n".encode())
    j = J.Journal(path)
    try:
        (row,) = j.read()
        col = J.EVENT_COLUMNS.index
        assert (row[0], row[col("request_id")], row[col("start_time")], row[col("payload")]) == \
            (7, rid, 1712345678.25, '{"a": 1}')
        j.add(_Accepted(8))  # type: ignore[arg-type]  # a new line after the old one: both read
        again = J.Journal(path)
        assert [r[0] for r in again.read()] == [7, 8]
        again.close(remove=False)
    finally:
        j.close(remove=True)


def test_old_bytes_left_after_the_data_by_a_cut_short_clear_are_never_read_as_lines(tmp_path: Path) -> None:
    """A process killed while it cleared the journal may leave zeros at the start and old lines after them
    (memset need not run front to back). The next journal's lines must not run on into those bytes."""
    from scf_nb.store import journal as J

    path = tmp_path / "cut.accepted"
    first = _Accepted(1)
    stale = f"9\t{make_request_id(9)}\tf\tdefault\t$LATEST\tasync\t1\t1.5\t{{}}\n".encode()  # a whole line
    path.write_bytes(bytes(len(J._line(first))) + stale + bytes(100))  # type: ignore[arg-type]
    j = J.Journal(path)
    try:
        assert j.read() == []
        j.add(first)  # type: ignore[arg-type]  # ends right where the old line starts
        assert [r[0] for r in j.read()] == [1]
    finally:
        j.close(remove=True)


def test_a_journal_whose_rewrite_could_not_map_its_file_still_takes_lines(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed compaction must not leave a journal that drops lines silently (as a closed one does)."""
    from scf_nb.store import journal as J

    path = tmp_path / "rw.accepted"
    j = J.Journal(path)
    many = [_Accepted(k) for k in range(1, 2 + J.COMPACT_BYTES // 60)]
    for ev in many:
        j.add(ev)  # type: ignore[arg-type]
    real = J.mmap.mmap

    def failing(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(J.mmap, "mmap", real)  # once
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(J.mmap, "mmap", failing)
    with pytest.raises(OSError):
        j.settle(many[-1:])  # type: ignore[arg-type]  # the rewrite is in place, its map failed
    late = _Accepted(10 ** 6)
    j.add(late)  # type: ignore[arg-type]
    try:
        assert [r[0] for r in J.Journal(path).read()] == [many[-1].key, late.key]
    finally:
        j.close(remove=True)


def test_a_journal_line_written_after_its_event_reached_the_file_changes_nothing_on_recovery(tmp_path: Path) -> None:
    """``invoke`` writes its line once it let go of the store's lock: by then the writer may have committed the
    event and emptied the journal. The next engine finds a line for an event the file has, and keeps the
    file's record (here FINISHED) instead of adding it again or failing it."""
    from scf_nb.core.functions import make_function
    from scf_nb.core.records import EventState, make_request_id
    from scf_nb.core.status import Status
    from scf_nb.store.store import Store

    path = tmp_path / "s.duckdb"
    fn = make_function("late", "def main_handler(event, context):\n    return 1\n", async_run=True, trace=True,
                       timeout=None, concurrency=None, qps_limit=None, handler="main_handler",
                       namespace="default", env=None, memory_mb=None, description="")
    store = Store(path, 256, lambda events: None)
    done = EventState(1, make_request_id(1), fn, fn.version, "{}", 100.0)
    queued = EventState(2, make_request_id(2), fn, fn.version, '{"n": 2}', 101.0)
    with store.lock:
        store.add_event(done)
        done.end(Status.FINISHED, 102.0, duration_ms=5.0)
        store.changed(done)
    store.sync()  # in the file, FINISHED; the journal settled (empty)
    assert store.journal.read() == []
    store.journal.add(done)  # the late line
    with store.lock:
        store.add_event(queued)
    store.journal.add(queued)
    store.journal.close(remove=False)  # the process dies here: nothing more reaches the file
    store._db.close()

    again = Store(path, 256, lambda events: None)
    try:
        assert again.recover("engine lost", 200.0, "1:mark") == 1  # only the queued one was unfinished
        rows = dict(again.cursor().execute("SELECT event_key, status FROM events ORDER BY event_key").fetchall())
        assert rows == {1: "FINISHED", 2: "FAILED"}
        assert again.journal.read() == []
    finally:
        again.close()


def test_a_journal_longer_than_one_read_is_read_whole_wherever_its_pieces_end(tmp_path: Path) -> None:
    """The journal is read a piece at a time up to its first NUL: lines across a piece's end, data ending
    exactly at one, and data with no zeros after it (a file cut to its data) all come back, each line once."""
    from scf_nb.store import journal as J

    for total in (J._READ_BYTES - 1, J._READ_BYTES, J._READ_BYTES + 1, 3 * J._READ_BYTES + 17):
        path = tmp_path / f"long{total}.accepted"
        lines, size, k = [], 0, 1
        while size < total:
            ev = _Accepted(k)
            line = J._line(ev)  # type: ignore[arg-type]
            if size + 2 * len(line) > total:  # the last line padded (in its payload) to end at exactly `total`
                ev.payload = ""
                ev.payload = json.dumps({"pad": "x" * (total - size - len(J._line(ev)) - 11)})  # type: ignore
                line = J._line(ev)  # type: ignore[arg-type]
            lines.append(line)
            size += len(line)
            k += 1
        data = b"".join(lines)
        assert len(data) == total
        for tail in (b"", bytes(J.CAPACITY)):
            path.write_bytes(data + tail)
            j = J.Journal(path)
            try:
                assert j.size == len(data)
                assert [r[0] for r in j.read()] == list(range(1, k)), (total, len(tail))
            finally:
                j.close(remove=False)


def test_a_new_store_beside_a_journal_left_by_a_dead_engine_records_and_fails_its_events(tmp_path: Path) -> None:
    """A store file made now (nothing to migrate or recover in it) still takes what a journal beside it holds:
    those events are recorded and failed, as on any restart."""
    from scf_nb.store import journal as J
    from scf_nb.store.store import Store

    path = tmp_path / "s.duckdb"
    j = J.Journal(path.with_name(path.name + ".accepted"))
    for k in (1, 2):
        j.add(_Accepted(k))  # type: ignore[arg-type]
    j.close(remove=False)  # its store file was removed, or never written
    store = Store(path, 256, lambda events: None)
    try:
        assert store.created
        assert store.recover("engine lost", 200.0, "1:mark") == 2
        assert store.cursor().execute("SELECT event_key, status FROM events ORDER BY 1").fetchall() == \
            [(1, "FAILED"), (2, "FAILED")]
    finally:
        store.close()
    again = Store(path, 256, lambda events: None)
    try:
        assert not again.created and again.recover("engine lost", 300.0, "2:mark") == 0
    finally:
        again.close()
