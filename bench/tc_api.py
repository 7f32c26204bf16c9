"""Latency of the TencentCloud-compatible API through the official SDK, next to the embedded client's own call.

    .venv/bin/python bench/tc_api.py [--n 300]

One process: an embedded engine on a fresh store in a temp folder, the API on a loop thread of its own
(``start_in_thread``), the SDK client in the main thread, each request sequential. Prints p50/p99 in ms.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import statistics
import tempfile
import time
import zipfile
from collections.abc import Callable
from typing import Any

from tencentcloud.common.credential import Credential
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile
from tencentcloud.scf.v20180416 import models, scf_client

import scf_nb
from scf_nb.server.tencentcloud import start_in_thread

NOOP = "def main_handler(event, context):\n    return event\n"


def timed(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[min(n - 1, int(n * 0.99))]


def request(action: str, **fields: Any) -> Any:
    req = getattr(models, f"{action}Request")()
    req.from_json_string(json.dumps(fields))
    return req


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=300)
    n = parser.parse_args().n
    scf_nb.configure(home=tempfile.mkdtemp(prefix="scf_nb_tc_bench_"))
    client = scf_nb.client()
    server = start_in_thread(client, 0, "AKIDbench", "bench-key")
    try:
        profile = ClientProfile(httpProfile=HttpProfile(endpoint=f"127.0.0.1:{server.port}", protocol="http"))
        sdk = scf_client.ScfClient(Credential("AKIDbench", "bench-key"), "ap-guangzhou", profile)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("index.py", NOOP)
        sdk.CreateFunction(request("CreateFunction", FunctionName="noop", Handler="index.main_handler",
                                   AsyncRunEnable="TRUE", Code={"ZipFile": base64.b64encode(buf.getvalue()).decode()}))
        client.create_function("sync_noop", NOOP)
        client.invoke("noop", {}).wait(60)  # cold start outside the timings
        client.invoke("sync_noop", {})
        invoke = request("Invoke", FunctionName="noop", InvocationType="Event", ClientContext="{}")
        last: list[str] = []
        rows = {"embedded client.invoke (async)": timed(lambda: client.invoke("noop", {}), n),
                "SDK Invoke Event": timed(lambda: last.append(sdk.Invoke(invoke).Result.FunctionRequestId), n)}
        client.wait(last, timeout=120)
        status = request("GetAsyncEventStatus", InvokeRequestId=last[-1])
        rows["SDK GetAsyncEventStatus"] = timed(lambda: sdk.GetAsyncEventStatus(status), n)
        page = request("ListAsyncEvents", FunctionName="noop", Limit=100)
        rows[f"SDK ListAsyncEvents Limit 100 (of {2 * n + 1})"] = timed(lambda: sdk.ListAsyncEvents(page), n)
        sync = request("Invoke", FunctionName="sync_noop", InvocationType="RequestResponse", ClientContext="{}")
        rows["SDK Invoke RequestResponse (no-op)"] = timed(lambda: sdk.Invoke(sync), n)
        quiet = request("Invoke", FunctionName="sync_noop", InvocationType="RequestResponse", ClientContext="{}",
                        LogType="None")
        rows["SDK Invoke RequestResponse, LogType None"] = timed(lambda: sdk.Invoke(quiet), n)
        rows["embedded client.invoke (sync no-op)"] = timed(lambda: client.invoke("sync_noop", {}), n)
    finally:
        server.stop()
        scf_nb.shutdown()
    print(f"n={n} sequential requests each")
    for name, (p50, p99) in rows.items():
        print(f"  {name:<44} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")


if __name__ == "__main__":
    main()
