"""Row 2: a no-op event's round trip, ``invoke()`` -> FINISHED observable (``ev.wait()``), against raw
loky's ``submit(noop).result()``. Warm instances; blocks of the two alternate so drift hits both alike."""

from __future__ import annotations

from common import engine_home, loky_executor, noop, now_us, row, stats, warm_function


def run(quick: bool) -> list[dict]:
    import scf_nb

    blocks, per_block = (5, 100) if quick else (20, 150)
    ex = loky_executor()
    lk, sc = [], []
    with engine_home():
        warm_function("noop")
        for b in range(blocks):
            for side in ((0, 1) if b % 2 else (1, 0)):
                for _ in range(per_block):
                    if side == 0:
                        t = now_us()
                        ex.submit(noop).result()
                        lk.append(now_us() - t)
                    else:
                        t = now_us()
                        status = scf_nb.invoke("noop").wait(30)
                        sc.append(now_us() - t)
                        assert status == "FINISHED", status
    return [row("2", "no-op round trip: invoke -> FINISHED (wait)", "us", stats(sc), loky=stats(lk),
                ratio_target=("<=", 1.0), target="p50 <= 1.0x loky",
                note="loky column: submit(noop).result()")]
