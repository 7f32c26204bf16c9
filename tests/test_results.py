"""End to end: what a handler returns comes back from ``result()`` as it was (tuples, sets, non-string keys,
numpy, pandas, datetimes, bytes, Decimal), its JSON view in the store is faithful and drops nothing, and the
cold start is reported apart from the event's duration. Real loky instances, a real DuckDB file."""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import warnings
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest
from engine_support import lines

import scf_nb
from scf_nb.core.records import make_request_id
from scf_nb.core.results import ResultWarning

# One function returning each kind of value, chosen by the event's "k".
KINDS = textwrap.dedent('''
    import datetime, decimal, os, sys
    import numpy as np
    import pandas as pd

    class Point:  # defined in the function's code: only its instance can load it
        def __init__(self, x):
            self.x = x

        def __repr__(self):
            return f"Point({self.x})"

    UTC = datetime.timezone.utc
    VALUES = {
        "plain": lambda: {"a": [1, 2.5, "x", None, True, {"b": []}], "s": "ü"},
        "pairs": lambda: {"pairs": {(0, 0): 50}},
        "numpy": lambda: {"i": np.int64(7), "f": np.float32(1.5), "a": np.arange(6, dtype=np.int32).reshape(2, 3),
                          "when": np.datetime64("2024-01-02T03:04:05")},
        "frame": lambda: pd.DataFrame({"a": [1, 2], "t": pd.to_datetime(["2024-01-01", None])}, index=["x", "y"]),
        "series": lambda: pd.Series([1.5, 2.5], index=[(0, 1), (1, 2)], name="s"),
        "tuple": lambda: (1, "two", (3.0, None)),
        "mix": lambda: {
            "set": {3, 1, 2}, "fs": frozenset({"b", "a"}), "odd": {1, "x"},
            "when": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC), "day": datetime.date(2024, 5, 6),
            "raw": b"\\x00\\xff", "d": decimal.Decimal("1.10"),
            "nested": [{"k": (np.int64(1), {2: [np.float64(0.5)]})}],
            7: "int key", None: "none key", "clash": {1: "a", "1": "b"},
        },
        "point": lambda: {"p": Point(3), "n": 1},
        "gen": lambda: {"g": (i for i in range(3)), "n": 2},
        "nan": lambda: {"f": float("nan"), "g": [1.0, float("inf")]},
        "surrogate": lambda: {"s": "\\ud800x", "name": os.fsdecode(b"\\xff.mov")},
    }

    def main_handler(event, context):
        if event["k"] == "raise":  # a file name that is not UTF-8, as os.listdir gives it
            raise FileNotFoundError("no such file: " + os.fsdecode(b"\\xff.mov"))
        if "dir" in event:  # a module that only the instance can import
            sys.path.insert(0, event["dir"])
            import onlyhere
            return {"box": onlyhere.Box(5), "n": 3}
        return VALUES[event["k"]]()
''')


def run(scf: Any, k: str, **event: Any) -> Any:
    """Invoke the KINDS function with ``k``; the ended Event."""
    ev = scf.invoke("kinds", {"k": k, **event})
    assert ev.wait(timeout=60) == "FINISHED", ev.info()
    return ev


def stored(scf: Any, ev: Any) -> tuple[Any, bytes | None]:
    """The event's row in the store: its ``result`` column (the JSON view) parsed, and its pickle."""
    (text, blob), = scf.client().engine.store.rows(
        "SELECT result, result_pickle FROM events WHERE request_id = ?", [ev.request_id])
    return json.loads(text), blob


def quiet_result(ev: Any) -> Any:
    """``ev.result()``, failing the test on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return ev.result(timeout=30)


@pytest.fixture
def kinds(scf: Any) -> Any:
    scf.create_function("kinds", KINDS, async_run=True)
    return scf


def test_non_string_keys_come_back_and_the_json_view_keeps_them(kinds: Any, tmp_path: Path) -> None:
    ev = run(kinds, "pairs")
    assert quiet_result(ev) == {"pairs": {(0, 0): 50}}  # was {'pairs': {}}
    view, blob = stored(kinds, ev)
    assert view == {"pairs": {"[0, 0]": 50}} and blob
    kinds.export(tmp_path / "out")  # the JSON view as the public API hands it out
    (text,), = duckdb.sql(f"SELECT result FROM '{tmp_path / 'out' / 'events.parquet'}' "
                          f"WHERE request_id = '{ev.request_id}'").fetchall()
    assert json.loads(text) == view
    assert not any("repr()" in line for line in lines(ev))


def test_numpy_values_come_back_as_numpy(kinds: Any) -> None:
    ev = run(kinds, "numpy")
    got = quiet_result(ev)
    assert type(got["i"]) is np.int64 and got["i"] == 7
    assert type(got["f"]) is np.float32 and got["f"] == np.float32(1.5)
    assert got["a"].dtype == np.int32 and got["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert got["when"] == np.datetime64("2024-01-02T03:04:05")
    assert stored(kinds, ev)[0] == {"i": 7, "f": 1.5, "a": [[0, 1, 2], [3, 4, 5]], "when": "2024-01-02T03:04:05"}
    assert lines(ev) == []


def test_pandas_frames_and_series_come_back_as_they_were(kinds: Any) -> None:
    frame = run(kinds, "frame")
    expected = pd.DataFrame({"a": [1, 2], "t": pd.to_datetime(["2024-01-01", None])}, index=["x", "y"])
    pd.testing.assert_frame_equal(quiet_result(frame), expected)
    assert stored(kinds, frame)[0] == {"index": ["x", "y"], "columns": ["a", "t"],
                                       "data": [[1, "2024-01-01T00:00:00"], [2, None]]}
    series = run(kinds, "series")
    pd.testing.assert_series_equal(quiet_result(series), pd.Series([1.5, 2.5], index=[(0, 1), (1, 2)], name="s"))
    assert stored(kinds, series)[0] == {"name": "s", "index": [[0, 1], [1, 2]], "data": [1.5, 2.5]}


def test_tuples_sets_datetimes_bytes_decimals_and_nested_mixes(kinds: Any) -> None:
    tup = run(kinds, "tuple")
    assert quiet_result(tup) == (1, "two", (3.0, None))
    assert stored(kinds, tup)[0] == [1, "two", [3.0, None]]
    mix = run(kinds, "mix")
    utc = dt.timezone.utc
    assert quiet_result(mix) == {
        "set": {1, 2, 3}, "fs": frozenset({"a", "b"}), "odd": {1, "x"},
        "when": dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=utc), "day": dt.date(2024, 5, 6),
        "raw": b"\x00\xff", "d": Decimal("1.10"), "nested": [{"k": (1, {2: [0.5]})}],
        7: "int key", None: "none key", "clash": {1: "a", "1": "b"}}
    view = stored(kinds, mix)[0]
    assert sorted(view.pop("odd"), key=str) == [1, "x"]  # a set that cannot be sorted: every element kept
    assert view == {
        "set": [1, 2, 3], "fs": ["a", "b"], "when": "2024-05-06T07:08:09+00:00", "day": "2024-05-06",
        "raw": "AP8=", "d": "1.10", "nested": [{"k": [1, {"2": [0.5]}]}], "7": "int key", "null": "none key",
        "clash": [[1, "a"], ["1", "b"]]}  # keys whose JSON text collides: kept as pairs, none dropped
    assert lines(mix) == []


def test_plain_json_results_are_unchanged_and_keep_no_pickle(kinds: Any) -> None:
    ev = run(kinds, "plain")
    assert quiet_result(ev) == {"a": [1, 2.5, "x", None, True, {"b": []}], "s": "ü"}
    assert stored(kinds, ev) == ({"a": [1, 2.5, "x", None, True, {"b": []}], "s": "ü"}, None)
    assert lines(ev) == []


def test_a_class_of_the_functions_own_code_falls_back_to_the_json_view_clearly(kinds: Any) -> None:
    ev = run(kinds, "point")
    with pytest.warns(ResultWarning, match="holds Point, defined in the function's code.*its JSON form"):
        assert ev.result(timeout=30) == {"p": "Point(3)", "n": 1}
    assert stored(kinds, ev)[0] == {"p": "Point(3)", "n": 1}
    (note,) = lines(ev)
    assert "kept as JSON only" in note and "defined in the function's code" in note and "Point" in note
    gen = run(kinds, "gen")  # cannot be pickled at all
    with pytest.warns(ResultWarning, match="cannot be pickled"):
        got = gen.result(timeout=30)
    assert got["n"] == 2 and got["g"].startswith("<generator object")
    (note,) = lines(gen)
    assert "cannot be pickled" in note and "generator" in note


def test_a_value_that_cannot_be_unpickled_here_gives_its_json_view_with_a_warning(kinds: Any,
                                                                                 tmp_path: Path) -> None:
    # The instance can import a module this process cannot (as when numpy is missing where result() runs).
    (tmp_path / "onlyhere.py").write_text("class Box:\n    def __init__(self, v):\n        self.v = v\n"
                                          "    def __repr__(self):\n        return f'Box({self.v})'\n")
    ev = run(kinds, "", dir=str(tmp_path))
    with pytest.warns(ResultWarning, match="onlyhere"):
        assert ev.result(timeout=30) == {"box": "Box(5)", "n": 3}
    view, blob = stored(kinds, ev)
    assert view == {"box": "Box(5)", "n": 3} and blob
    (note,) = lines(ev)
    assert "repr() text for: Box" in note and "pickle" in note and "stored with repr()" not in note


def test_nan_and_infinity_come_back_and_the_json_view_is_strict_json(kinds: Any) -> None:
    ev = run(kinds, "nan")
    got = quiet_result(ev)
    assert np.isnan(got["f"]) and got["g"] == [1.0, float("inf")]
    (text,), = kinds.client().engine.store.rows("SELECT result FROM events WHERE request_id = ?", [ev.request_id])
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} is not JSON")) == {"f": None,
                                                                                          "g": [1.0, None]}


def test_text_that_utf8_cannot_hold_is_stored_and_the_store_keeps_writing(kinds: Any) -> None:
    # A lone surrogate made every batch of the store's writer fail from then on: nothing more was written.
    ev = run(kinds, "surrogate")
    assert quiet_result(ev) == {"s": "\ud800x", "name": "\udcff.mov"}
    failed = kinds.invoke("kinds", {"k": "raise"})
    with pytest.raises(kinds.FunctionError) as err:
        failed.result(timeout=30)
    assert err.value.error_message == "no such file: \\udcff.mov"  # as a backslash escape
    after = run(kinds, "plain")
    assert kinds.list_events("kinds", limit=None)["request_id"].tolist() == [after.request_id, failed.request_id,
                                                                             ev.request_id]
    assert kinds.client().engine.store.write_errors == 0


# -- the cold start, apart from the event's duration ---------------------------------------------------------------
SLOW_START = textwrap.dedent('''
    import time
    time.sleep(0.3)  # loading a model

    def main_handler(event, context):
        return event
''')


def test_the_cold_start_is_reported_apart_from_the_first_events_duration(scf: Any) -> None:
    scf.create_function("model", SLOW_START, async_run=True, concurrency=1)
    first = scf.invoke("model", {"n": 1})
    assert first.result(timeout=60) == {"n": 1}
    second = scf.invoke("model", {"n": 2})
    assert second.result(timeout=60) == {"n": 2}
    cold, warm = first.info(), second.info()
    assert cold["init_duration_ms"] >= 300 and cold["duration_ms"] < 100
    assert warm["init_duration_ms"] is None and warm["instance_pid"] == cold["instance_pid"]
    frame = scf.list_events("model", order="ASC")
    assert frame["init_duration_ms"].iloc[0] >= 300 and pd.isna(frame["init_duration_ms"].iloc[1])


def test_a_cold_start_that_raises_reports_its_init_duration(scf: Any) -> None:
    scf.create_function("broken", SLOW_START + "raise RuntimeError('no model')\n", async_run=True)
    ev = scf.invoke("broken")
    with pytest.raises(scf.FunctionError, match="no model"):
        ev.result(timeout=60)
    assert ev.info()["init_duration_ms"] >= 300


OLD_EVENTS = """
CREATE TABLE events (
    event_key BIGINT, request_id VARCHAR, function_name VARCHAR, namespace VARCHAR, qualifier VARCHAR,
    invoke_type VARCHAR, status VARCHAR, traced BOOLEAN, start_time TIMESTAMPTZ, run_time TIMESTAMPTZ,
    end_time TIMESTAMPTZ, duration_ms DOUBLE, billed_duration_ms BIGINT, mem_usage_bytes BIGINT,
    result VARCHAR, error_type VARCHAR, error_message VARCHAR, error_traceback VARCHAR, exit_reason VARCHAR,
    payload VARCHAR, instance_pid BIGINT)"""


def test_a_store_of_the_earlier_schema_gets_the_new_columns(home: Path) -> None:
    home.mkdir(parents=True)
    old_id = make_request_id(1)
    with duckdb.connect(str(home / "scf_nb.duckdb")) as db:
        db.execute(OLD_EVENTS)
        db.execute("INSERT INTO events VALUES (1, ?, 'old', 'default', '$LATEST', 'Event', 'FINISHED', true, "
                   "now(), now(), now(), 2.0, 2, 1000, '{\"x\": 1}', NULL, NULL, NULL, 'returned', 'null', 1)",
                   [old_id])
    scf_nb.configure(home=home)
    try:
        old = scf_nb.get_event(old_id)
        assert old.result(timeout=0) == {"x": 1} and old.info()["init_duration_ms"] is None
        scf_nb.create_function("new", "def main_handler(event, context):\n    return (1, 2)\n", async_run=True)
        ev = scf_nb.invoke("new")
        assert ev.result(timeout=60) == (1, 2) and ev.info()["init_duration_ms"] is not None
        assert scf_nb.list_events(limit=None)["request_id"].tolist() == [ev.request_id, old_id]
    finally:
        scf_nb.shutdown()
