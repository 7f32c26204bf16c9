"""``python -m scf_nb.demo``: a tour of scf_nb on the embedded engine that finishes by itself (~10 s).

It registers an async "transcode" function, invokes five events (one fails, one is terminated), follows one
event's log live, and prints the event table and the overview from the DuckDB store in ``./.scf_nb``.
Run it twice: the second run still lists the first run's events (the store outlives the process).
"""

from __future__ import annotations

import time

import scf_nb

TRANSCODE = '''
import subprocess, sys, time
print("loading codec tables (cold start: once per instance)")

def main_handler(event, context):
    print(f"converting {event['src']}")
    for pct in (25, 50, 75, 100):
        time.sleep(event.get("seconds", 1) / 4)
        print(f"{event['src']}: {pct}%")
    # a child process's output is captured too (think ffmpeg)
    subprocess.run([sys.executable, "-c", "import sys; print('child: muxing done', file=sys.stderr)"])
    if event["src"].endswith(".bad"):
        raise ValueError(f"cannot decode {event['src']}")
    return {"out": event["src"].rsplit(".", 1)[0] + ".mp4"}
'''


def main() -> None:
    before = len(scf_nb.list_events(limit=None))
    print(f"store: {scf_nb.configure().db_path} ({before} events from earlier runs)")
    scf_nb.create_function("transcode", TRANSCODE, async_run=True, timeout=600, concurrency=2)

    started = time.perf_counter()
    srcs = [("a.mov", 1.0), ("b.mov", 1.5), ("c.bad", 0.5), ("d.mov", 1.0)]
    events = [scf_nb.invoke("transcode", {"src": src, "seconds": s}) for src, s in srcs]
    huge = scf_nb.invoke("transcode", {"src": "huge.mov", "seconds": 3600})
    took = (time.perf_counter() - started) * 1e3
    print(f"invoked {len(events) + 1} events in {took:.1f} ms; RequestIds came back at once:")
    for ev in events + [huge]:
        print(f"  {ev.request_id}  {ev.status}")

    print(f"\nfollowing {events[0].request_id} live:")
    for row in events[0].follow():  # each line as it is stored; the iteration ends with the event
        print(f"  [{row.stream}] {row.line}")
    print(f"  -- {events[0].status}")

    for ev in events:
        ev.wait()
    print(f"\nhuge.mov is {huge.status}; terminating it (the others are untouched) -> {huge.terminate()}")

    print("\nresults:")
    for ev in events + [huge]:
        try:
            print(f"  {ev.request_id}  {ev.result()}")
        except scf_nb.ScfError as e:
            print(f"  {ev.request_id}  {type(e).__name__}: {str(e).splitlines()[0]}")

    cols = ["request_id", "status", "start_time", "duration_ms", "error_message"]
    print("\nscf_nb.list_events('transcode', limit=5):")
    print(scf_nb.list_events("transcode", limit=5)[cols].to_string(index=False))
    print("\nscf_nb.overview('transcode'):")
    print(scf_nb.overview("transcode").to_string(index=False))
    scf_nb.shutdown()


if __name__ == "__main__":
    main()
