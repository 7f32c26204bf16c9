"""scf_nb benchmark suite: every row of issue 3's target table, each next to a raw loky baseline measured in
the same process run.

    python bench/run.py --quick            # short run (~2 min)
    python bench/run.py                    # full run (~10 min)
    python bench/run.py --only roundtrip   # one benchmark (repeat --only or use commas for several)
    python bench/run.py --list             # the benchmark names

Each benchmark runs in its own fresh Python process (so memory figures and loky state are its own), which
also runs its loky baseline. The table goes to stdout; everything (raw figures too) to
``bench/results/<time>[-quick].json`` and ``bench/results/latest.json``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

# name -> (module, what it measures, time limit of its process in seconds for the full run)
BENCHMARKS = {
    "invoke": ("b_invoke", "1. async invoke() returning", 240),
    "roundtrip": ("b_roundtrip", "2. no-op round trip vs loky", 180),
    "throughput": ("b_throughput", "3. no-op events/s vs loky", 300),
    "terminate": ("b_terminate", "4. terminate -> ABORTED, Python code, bystanders", 300),
    "terminate_c": ("b_terminate_c", "5. terminate(grace=True) of a GIL-holding C call", 300),
    "logs": ("b_logs", "6. log lines ingested; print -> queryable latency", 300),
    "store": ("b_store", "7. 1M events + 10M lines: queries and engine RSS", 600),
    "cold": ("b_cold", "8. first event from a cold engine", 240),
    "memory": ("b_memory", "9. RSS of the process that ran 1M events + 10M lines, and 1M more", 900),
    "widgets": ("b_widgets", "10. notebook views: event table at 1M events, log pane at 10k lines/s", 900),
}


def child(name: str, quick: bool, out: str) -> int:
    """Run one benchmark in this process and write its rows to ``out``."""
    sys.path.insert(0, str(HERE))
    module = importlib.import_module(BENCHMARKS[name][0])
    t = time.perf_counter()
    rows = module.run(quick)
    Path(out).write_text(json.dumps({"name": name, "rows": rows, "seconds": time.perf_counter() - t},
                                    default=str))
    return 0


def run_one(name: str, quick: bool) -> dict:
    limit = BENCHMARKS[name][2] // (2 if quick else 1)
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--out", out]
    cmd += ["--quick"] if quick else []
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, check=False, timeout=limit)
        if proc.returncode != 0:
            return {"name": name, "error": f"exit code {proc.returncode}", "rows": [],
                    "seconds": time.perf_counter() - t}
        return json.loads(Path(out).read_text())
    except subprocess.TimeoutExpired:
        return {"name": name, "error": f"timed out after {limit} s", "rows": [], "seconds": time.perf_counter() - t}
    finally:
        os.unlink(out)


def fmt(v) -> str:
    from common import _fmt

    return _fmt(v)


def table(results: list[dict]) -> str:
    head = ("#", "figure", "unit", "scf_nb p50", "scf_nb p95", "loky p50", "loky p95", "ratio", "target", "result")
    lines = []
    for res in results:
        if res.get("error"):
            lines.append((res["name"], f"ERROR: {res['error']}", "", "", "", "", "", "", "", "ERROR"))
        for r in res["rows"]:
            scf, loky = r["scf"] or {}, r["loky"] or {}
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
            lines.append((r["id"], r["figure"], r["unit"], fmt(scf.get("p50")), fmt(scf.get("p95")),
                          fmt(loky.get("p50")), fmt(loky.get("p95")), ratio, r["target"], r["verdict"]))
    widths = [max(len(str(x[i])) for x in [head] + lines) for i in range(len(head))]
    out = [" | ".join(str(c).ljust(w) for c, w in zip(head, widths, strict=True)),
           "-+-".join("-" * w for w in widths)]
    out += [" | ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines]
    notes = []
    for res in results:
        for r in res["rows"]:
            bits = [f"checked: {'; '.join(r['checked'])}"] if r["checked"] else []
            bits += [r["note"]] if r["note"] else []
            if bits:
                notes.append(f"  {r['id']}: " + " | ".join(bits))
    return "\n".join(out + ["", "notes:"] + notes)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short run (fewer repetitions, 1/10 of the data)")
    p.add_argument("--only", action="append", default=[], metavar="NAME",
                   help="run only these benchmarks (repeat, or comma-separate); see --list")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.quick, args.out)
    if args.list:
        for name, (_, what, _) in BENCHMARKS.items():
            print(f"{name:12} {what}")
        return 0
    names = [n.strip() for o in args.only for n in o.split(",") if n.strip()] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    sys.path.insert(0, str(HERE))
    _compile_measured()
    started = datetime.now()
    load_start = os.getloadavg()
    results = []
    for name in names:
        print(f"== {name}: {BENCHMARKS[name][1]}", file=sys.stderr, flush=True)
        res = run_one(name, args.quick)
        print(f"   ({res['seconds']:.1f} s{', ' + res['error'] if res.get('error') else ''})", file=sys.stderr,
              flush=True)
        results.append(res)
    text = table(results)
    print()
    print(f"scf_nb benchmarks, {'quick' if args.quick else 'full'} run, {started:%Y-%m-%d %H:%M:%S}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}, load avg {load_start[0]:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end")
    versions = _versions()
    commit = versions.get("git_commit")
    where = f" (commit {commit}{', with uncommitted changes' if versions.get('git_dirty') else ''})" if commit else ""
    print(f"scf_nb from {versions['scf_nb_path']}{where}; loky {versions['loky']}, duckdb {versions['duckdb']}")
    print(text)
    RESULTS.mkdir(exist_ok=True)
    doc = {"started": started.isoformat(), "quick": args.quick, "cpus": os.cpu_count(),
           "python": platform.python_version(), "versions": versions, "loadavg_start": load_start,
           "loadavg_end": os.getloadavg(),
           "results": results, "table": text}
    stem = f"{started:%Y%m%d-%H%M%S}{'-quick' if args.quick else ''}"
    for path in (RESULTS / f"{stem}.json", RESULTS / "latest.json"):
        path.write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nwritten: {RESULTS / (stem + '.json')}")
    return 1 if any(r.get("error") for r in results) else 0


def _compile_measured() -> None:
    """Byte-compile the scf_nb being measured, as installing it does. Where PYTHONDONTWRITEBYTECODE is set (it
    is on these machines) no ``.pyc`` is ever written, so every process, each instance included, compiled every
    module from source at each start: row 8 was 10-20 % slower for that alone (bench/README.md, 2026-12-04)."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("scf_nb")
    if spec is not None and spec.origin:
        compileall.compile_dir(str(Path(spec.origin).parent), quiet=1)


def _versions() -> dict:
    out = {}
    for mod in ("scf_nb", "loky", "duckdb", "pandas", "numpy"):
        try:
            out[mod] = importlib.import_module(mod).__version__
        except (ImportError, AttributeError):
            out[mod] = None
    import scf_nb

    path = Path(scf_nb.__file__).parent
    out["scf_nb_path"] = str(path)  # which copy was measured (PYTHONPATH can change it)
    try:  # read-only git queries: the commit measured, and whether scf_nb had uncommitted changes
        git = ["git", "-C", str(path)]
        out["git_commit"] = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           check=True).stdout.strip()
        out["git_dirty"] = bool(subprocess.run(git + ["status", "--porcelain", "."], capture_output=True,
                                               text=True, check=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        out["git_commit"] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
