"""``scf_nb.configure`` never stops running events silently: the same settings again change nothing, the
settings a running engine can take are applied live, and a change that needs a new engine is refused while
events are queued or running (naming them), unless ``force=True``.

Real loky instances and a real DuckDB store; handlers wait on gate files, not on sleeps.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import GATE, wait_until
from engine_support import code_of

from scf_nb import api

GATED = GATE + '''
def main_handler(event, context):
    print("waiting", flush=True)
    wait_file(event["gate"])
    return event.get("n")
'''


@pytest.fixture(autouse=True)
def settings_restored(scf: Any) -> Iterator[None]:
    """Settings stick for later calls: give the next test the ones this one started with."""
    before = dict(api._settings)
    yield
    scf.shutdown()
    api._settings.clear()
    api._settings.update(before)


def start_gated(scf: Any, gate: Path, name: str = "gated", n: int = 1) -> Any:
    scf.create_function(name, GATED, async_run=True)
    ev = scf.invoke(name, {"gate": str(gate), "n": n})
    wait_until(lambda: ev.status == "RUNNING" and not ev.logs().empty, what=f"{name} to run")  # its handler runs
    return ev


def test_the_same_settings_again_keep_the_engine_and_its_running_event(scf: Any, home: Path,
                                                                       tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ev = start_gated(scf, gate)
    engine = scf.client().engine
    scf.configure(home=home, grace_seconds=2.0)  # the fixture's own call: a setup cell run again
    scf.configure(home=str(home))
    scf.configure(home=home.parent / ".." / home.parent.name / home.name)  # the same folder, other spellings
    (tmp_path / "link").symlink_to(home)
    scf.configure(home=tmp_path / "link")
    assert scf.client().engine is engine
    assert ev.status == "RUNNING"
    gate.write_text("")
    assert ev.result(timeout=30) == 1
    assert scf.get_event_status(ev.request_id) == "FINISHED"


def test_a_relative_home_stays_where_it_was_given_after_a_chdir(scf: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    scf.configure(home="relative")
    gate = tmp_path / "gate"
    ev = start_gated(scf, gate)
    engine = scf.client().engine
    monkeypatch.chdir(tmp_path / "relative")
    assert scf.configure(grace_seconds=1.5).home == tmp_path / "relative"  # live; not a new home here
    assert scf.client().engine is engine and engine.config.grace_seconds == 1.5
    gate.write_text("")
    assert ev.result(timeout=30) == 1


@pytest.mark.parametrize("change", ["home", "store_memory_mb", "flush_interval"])
def test_a_change_needing_a_restart_is_refused_while_events_run_and_names_them(scf: Any, home: Path,
                                                                              tmp_path: Path, change: str) -> None:
    gate = tmp_path / "gate"
    ev = start_gated(scf, gate)
    queued = [scf.invoke("gated", {"gate": str(gate), "n": n}) for n in range(2, 6)]
    engine = scf.client().engine
    value = {"home": tmp_path / "other", "store_memory_mb": 128, "flush_interval": 0.05}[change]
    with pytest.raises(scf.ScfError) as err:
        scf.configure(**{change: value}, grace_seconds=1.0)
    assert err.value.code == "FailedOperation.EngineBusy"
    text = str(err.value)
    assert f"changing {change}" in text and "5 events are queued or running" in text
    assert ev.request_id in text and ", ..." in text
    assert "force=True" in text and "scf_nb.shutdown()" in text

    assert scf.client().engine is engine  # nothing changed: not even the setting that could go live
    assert scf.configure().home == home and scf.configure().grace_seconds == 2.0
    assert ev.status == "RUNNING"
    gate.write_text("")
    assert [e.result(timeout=30) for e in [ev, *queued]] == [1, 2, 3, 4, 5]


def test_force_restarts_with_running_events_which_become_engine_stopped(scf: Any, home: Path,
                                                                        tmp_path: Path) -> None:
    ev = start_gated(scf, tmp_path / "gate")
    other = tmp_path / "other"
    assert scf.configure(home=other, force=True).home == other
    scf.create_function("fresh", GATED, async_run=True)  # a new engine, on the new home
    assert scf.client().engine.config.db_path == other / "scf_nb.duckdb"
    assert code_of(lambda: scf.get_event_status(ev.request_id)) == "ResourceNotFound.AsyncEvent"

    scf.configure(home=home)  # nothing runs on the new one: it restarts on the first home
    info = scf.get_event(ev.request_id).info()
    assert info["status"] == "FAILED" and info["error"]["type"] == "EngineStopped"


def test_with_nothing_running_a_new_home_restarts_the_engine(scf: Any, tmp_path: Path) -> None:
    scf.create_function("gated", GATED, async_run=True)
    engine = scf.client().engine
    other = tmp_path / "other"
    scf.configure(home=other)
    assert engine.closed and scf.client().engine is not engine
    assert scf.list_functions().empty  # the new home has none


def test_live_settings_take_effect_without_a_restart(scf: Any, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ev = start_gated(scf, gate)
    engine = scf.client().engine
    scf.configure(grace_seconds=0.5, max_qps=3, idle_instance_seconds=100, retention_hours=10)
    assert scf.client().engine is engine and ev.status == "RUNNING"
    assert engine.config.idle_instance_seconds == 100 and engine.config.retention_hours == 10

    accepted, rejected = [], []
    for n in range(20):
        try:
            accepted.append(scf.invoke("gated", {"gate": str(gate), "n": n}))
        except scf.ScfError as e:
            rejected.append(str(e))
    assert 1 <= len(accepted) <= 5 and rejected and "max_qps (3/s)" in rejected[0]

    assert ev.terminate(grace=True) == "ABORTED"
    assert "SIGKILL after 0.5 s" in ev.info()["exit_reason"]
    gate.write_text("")
    for e in accepted:
        e.wait(timeout=30)


def test_a_higher_max_workers_starts_queued_events_at_once(scf: Any, tmp_path: Path) -> None:
    scf.configure(max_workers=1)
    gate = tmp_path / "gate"
    first = start_gated(scf, gate, "a")
    scf.create_function("b", GATED, async_run=True)
    second = scf.invoke("b", {"gate": str(gate), "n": 2})
    assert second.status == "QUEUED"  # no room: one instance at most, and it is busy
    engine = scf.client().engine
    scf.configure(max_workers=2)
    assert scf.client().engine is engine
    wait_until(lambda: second.status == "RUNNING", what="the queued event to start with the higher limit")
    assert first.status == "RUNNING"
    gate.write_text("")
    assert (first.result(timeout=30), second.result(timeout=30)) == (1, 2)


def test_a_bad_setting_is_refused_and_changes_nothing(scf: Any, tmp_path: Path) -> None:
    ev = start_gated(scf, tmp_path / "gate")
    engine = scf.client().engine
    assert code_of(lambda: scf.configure(nosuch=1)) == "InvalidParameterValue.Config"
    assert code_of(lambda: scf.configure(grace_seconds=-1)) == "InvalidParameterValue.Config"
    assert code_of(lambda: scf.configure(home=3)) == "InvalidParameterValue.Config"
    assert scf.client().engine is engine and ev.status == "RUNNING"
    assert scf.configure().grace_seconds == 2.0
