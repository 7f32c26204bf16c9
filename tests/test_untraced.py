"""``trace=False``: SCF's status tracking is off, but the logs are kept (in SCF they go to the log service
whatever tracking says). ``logs`` and ``search_logs`` find the lines of an untraced event while it runs,
after it ended and after the engine was restarted on the same home; the tracking views (``get_event_status``,
``list_events``, ``overview``, ``terminate``) keep treating it as unknown.

Real loky instances and a real DuckDB store; the event waits on a gate file, not on a sleep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from conftest import GATE, wait_until
from engine_support import code_of

QUIET = GATE + '''
def main_handler(event, context):
    print("untraced says hello", flush=True)
    wait_file(event["gate"])
    print("untraced says bye", flush=True)
    return "done"
'''


def assert_logs_found(scf: Any, rid: str, expected: list[str]) -> None:
    assert scf.logs(rid)["line"].tolist() == expected
    assert scf.logs(rid, since_seq=1)["line"].tolist() == expected[1:]
    found = scf.search_logs("untraced says")
    assert found["request_id"].tolist() == [rid] * len(expected)
    assert found["line"].tolist() == expected


def assert_unknown_to_tracking(scf: Any, rid: str) -> None:
    assert code_of(lambda: scf.get_event_status(rid)) == "ResourceNotFound.AsyncEvent"
    assert code_of(lambda: scf.get_event(rid)) == "ResourceNotFound.AsyncEvent"
    assert code_of(lambda: scf.terminate(rid)) == "ResourceNotFound.AsyncEvent"
    assert rid not in scf.list_events(limit=None)["request_id"].tolist()
    assert int(scf.overview("quiet")["count"].sum()) == 0


def test_untraced_event_logs_are_found_running_ended_and_after_a_restart(scf: Any, home: Path,
                                                                          tmp_path: Path) -> None:
    scf.create_function("quiet", QUIET, async_run=True, trace=False)
    gate = tmp_path / "gate"
    ev = scf.invoke("quiet", {"gate": str(gate)})
    rid = ev.request_id
    wait_until(lambda: len(ev.logs()) == 1, what="the untraced event's first line")

    assert ev.status == "RUNNING"
    assert_logs_found(scf, rid, ["untraced says hello"])
    assert_unknown_to_tracking(scf, rid)

    gate.write_text("")
    assert ev.result(timeout=30) == "done"
    both = ["untraced says hello", "untraced says bye"]
    assert_logs_found(scf, rid, both)
    assert_unknown_to_tracking(scf, rid)

    scf.shutdown()
    scf.configure(home=home)  # a new engine on the same store
    assert_logs_found(scf, rid, both)
    assert_unknown_to_tracking(scf, rid)


def test_logs_of_an_unknown_request_id_is_still_not_found(scf: Any) -> None:
    assert code_of(lambda: scf.logs("00000000-0001-4000-8000-000000000000")) == "ResourceNotFound.AsyncEvent"
    assert code_of(lambda: scf.logs("not an id")) == "ResourceNotFound.AsyncEvent"
