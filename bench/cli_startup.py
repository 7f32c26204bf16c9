"""What one ``scf-nb`` command costs, wall clock, beside a bare interpreter start and ``import pandas, duckdb``
measured in the same run (the machine's load moves all three alike).

    .venv/bin/python bench/cli_startup.py [--runs 7]

Each command runs ``--runs`` times as ``python -m scf_nb.cli --home TMP ...`` on a small store made first
(an async and a sync function, a few events); the table gives medians in seconds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import scf_nb

COMMANDS = [
    ("--help", ["--help"]),
    ("bad usage (events --status X)", ["events", "--status", "X"]),
    ("events", ["events"]),
    ("overview", ["overview"]),
    ("invoke SYNC", ["invoke", "add", "--event", "[1, 2]"]),
    ("invoke ASYNC --wait", ["invoke", "echo", "--event", "1", "--wait"]),
]


def median_seconds(argv: list[str], runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=False)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7)
    runs = parser.parse_args().runs
    home = Path(tempfile.mkdtemp()) / "store"
    scf_nb.configure(home=home)
    scf_nb.create_function("echo", "def main_handler(event, context):\n    print(event)\n    return event\n",
                           async_run=True)
    scf_nb.create_function("add", "def main_handler(event, context):\n    return sum(event)\n")
    scf_nb.wait([scf_nb.invoke("echo", n) for n in range(5)], timeout=60)
    scf_nb.shutdown()

    rows = [(f"python -c {code!r}", median_seconds([sys.executable, "-c", code], runs))
            for code in ("pass", "import pandas, duckdb")]
    for name, args in COMMANDS:
        command = [sys.executable, "-m", "scf_nb.cli", "--home", str(home), *args]
        rows.append((f"scf-nb {name}", median_seconds(command, runs)))
    width = max(len(name) for name, _ in rows)
    print(f"{'command':<{width}}  median s  (of {runs})")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:8.2f}")


if __name__ == "__main__":
    main()
