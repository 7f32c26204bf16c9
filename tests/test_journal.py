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


@pytest.mark.parametrize("name", ["f\n", "f\t", "f\nx", " f"])
def test_a_function_name_with_whitespace_is_refused(name: str) -> None:
    with pytest.raises(ScfError) as err:
        check_name("function", name)
    assert err.value.code == "InvalidParameterValue.FunctionName"


class _Accepted:
    """What the journal reads of an accepted event (an EventState has these and more)."""

    def __init__(self, key: int) -> None:
        self.key, self.request_id, self.function_name, self.namespace = key, f"rid-{key}", "f", "default"
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
        f.write(b"4\trid-4\tf\tdefault\t$LAT")
    j = J.Journal(path)
    rows = j.read()
    assert [r[J.EVENT_COLUMNS.index("request_id")] for r in rows] == ["rid-1", "rid-2", "rid-3"]
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
