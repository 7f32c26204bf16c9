"""Admission: rate limits and event payload checks."""

from __future__ import annotations

import pytest

from scf_nb.core.errors import ScfError
from scf_nb.core.functions import make_function
from scf_nb.core.records import key_of, make_request_id
from scf_nb.core.status import Status, can_move, parse
from scf_nb.engine.admission import Admission, encode_event


def _fn(qps: float | None) -> object:
    return make_function("f", "def main_handler(e, c): pass", async_run=True, trace=True, timeout=None,
                         concurrency=None, qps_limit=qps, handler="main_handler", namespace="default",
                         env=None, memory_mb=None, description="")


def test_global_limit_rejects_beyond_a_second_of_burst_then_refills() -> None:
    adm = Admission(max_qps=10)
    for _ in range(10):
        adm.admit(_fn(None), now=100.0)
    with pytest.raises(ScfError) as e:
        adm.admit(_fn(None), now=100.0)
    assert e.value.code == "LimitExceeded.Qps" and "max_qps" in e.value.message
    adm.admit(_fn(None), now=100.2)  # 0.2 s refills two tokens at 10/s


def test_function_limit_applies_and_a_rejection_takes_no_global_token() -> None:
    adm = Admission(max_qps=3)
    limited = _fn(1)
    adm.admit(limited, now=5.0)
    with pytest.raises(ScfError) as e:
        adm.admit(limited, now=5.0)
    assert "qps_limit of f" in e.value.message
    adm.admit(_fn(None), now=5.0)
    adm.admit(_fn(None), now=5.0)  # 3 global tokens: one used above, the rejection took none


def test_event_payload_limits() -> None:
    assert encode_event(None, True) == "{}"
    assert encode_event({"a": "ü"}, True) == '{"a": "ü"}'
    for bad in ({1, 2}, float("nan"), object()):
        with pytest.raises(ScfError) as e:
            encode_event(bad, True)
        assert e.value.code == "InvalidParameterValue.ClientContext"
    big = "x" * (128 * 1024)
    with pytest.raises(ScfError) as e:
        encode_event(big, True)
    assert "at most 131072 bytes" in e.value.message
    assert encode_event(big, False)  # sync allows 6 MB
    with pytest.raises(ScfError):
        encode_event("é" * (3 * 1024 * 1024), False)  # 6 MB of UTF-8 bytes, counted as bytes


def test_request_ids_carry_their_key() -> None:
    ids = {make_request_id(k) for k in (1, 2, 2**40 + 7, 2**48 - 1)}
    assert len(ids) == 4
    assert sorted(key_of(i) for i in ids) == [1, 2, 2**40 + 7, 2**48 - 1]
    assert key_of("not-an-id") is None and key_of(42) is None
    assert key_of("zzzzzzzz-zzzz-4000-8000-000000000000") is None
    import uuid

    from scf_nb.core.records import make_request_ids
    one, (batch,) = make_request_id(2**48 - 1), [r for _, r in make_request_ids(2**48 - 1, 1)]
    for rid in (one, batch):  # one at a time (pure Python) and in a batch (numpy): the same form
        u = uuid.UUID(rid)
        assert str(u) == rid and u.version == 4 and u.variant == uuid.RFC_4122 and key_of(rid) == 2**48 - 1
    assert one[:15] == batch[:15] and one != batch  # the key's 48 bits and the version digit, then random
    for bad in (-1, 2**48):
        with pytest.raises(ValueError, match="event key"):
            make_request_id(bad)


def test_request_ids_taken_from_many_threads_are_unique_uuid_shaped_and_carry_rising_keys() -> None:
    import re
    import threading
    import uuid

    from scf_nb.core.records import RequestIds

    ids = RequestIds(1000)
    taken: list[list[tuple[int, str]]] = [[] for _ in range(4)]

    def take(mine: list[tuple[int, str]]) -> None:
        for _ in range(3 * RequestIds.BATCH):
            mine.append(ids.take())

    threads = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pairs = [p for mine in taken for p in mine]
    assert len({k for k, _ in pairs}) == len({r for _, r in pairs}) == len(pairs) == 12 * RequestIds.BATCH
    assert min(k for k, _ in pairs) == 1000
    for mine in taken:  # each thread sees its keys rise
        assert [k for k, _ in mine] == sorted(k for k, _ in mine)
    assert len({rid[14:] for _, rid in pairs}) == len(pairs)  # the random part differs too (made in batches)
    for key, rid in pairs:
        assert key_of(rid) == key
        assert uuid.UUID(rid).version == 4 and uuid.UUID(rid).variant == uuid.RFC_4122
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rid)


def test_statuses_only_move_forward() -> None:
    assert can_move(Status.QUEUED, Status.RUNNING) and can_move(Status.RUNNING, Status.ABORTED)
    assert not can_move(Status.FINISHED, Status.FAILED) and not can_move(Status.RUNNING, Status.QUEUED)
    assert parse("finished") is Status.FINISHED
    with pytest.raises(ValueError, match="use one of"):
        parse("DONE")
