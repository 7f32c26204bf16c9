"""Async invocations over REST on an open-loop schedule (shared by bench/rest_load.py and the fault tests):
``rate`` requests a second, request ``i`` due at ``start + i / rate``, taken by the next free client thread,
each on its own keep-alive connection with the server's token. Latency is measured from the moment a request
is sent to its answer; ``late`` is how far behind its due time it was sent."""

from __future__ import annotations

import http.client
import json
import threading
import time

import numpy as np
from server_support import Server


class Load:
    """The open-loop schedule and what came back, shared by the client threads."""

    def __init__(self, rate: float, seconds: float, function: str = "noop", stop_on_error: bool = False) -> None:
        self.function = function
        self.stop_on_error = stop_on_error
        self.rate = rate
        self.total = int(rate * seconds)
        self.next = 0
        self.lock = threading.Lock()
        self.start = 0.0
        self.latency = np.zeros(self.total)
        self.late = np.zeros(self.total)
        self.accepted: list[str] = []
        self.statuses: dict[int, int] = {}
        self.errors: list[str] = []
        self.stop = False

    def take(self) -> int | None:
        with self.lock:
            if self.next >= self.total or self.stop:
                return None
            i, self.next = self.next, self.next + 1
            return i


def client_thread(server: Server, load: Load) -> None:
    host, port = server.url.split("//")[1].rstrip("/").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {"Authorization": f"token {server.token}", "Content-Type": "application/json"}
    body = json.dumps({"function": load.function, "event": {}}).encode()
    try:
        while (i := load.take()) is not None:
            due = load.start + i / load.rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            sent = time.perf_counter()
            try:
                conn.request("POST", "/scf/api/invoke", body, headers)
                answer = conn.getresponse()
                data = answer.read()
            except (OSError, http.client.HTTPException) as e:
                with load.lock:
                    load.errors.append(f"{type(e).__name__}: {e}")
                    load.stop = load.stop or load.stop_on_error
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                continue
            done = time.perf_counter()
            load.latency[i] = (done - sent) * 1000
            load.late[i] = max(0.0, sent - due) * 1000
            with load.lock:
                load.statuses[answer.status] = load.statuses.get(answer.status, 0) + 1
                if answer.status == 200:
                    load.accepted.append(json.loads(data)["request_id"])
    finally:
        conn.close()


def run_load(server: Server, load: Load, threads: int) -> float:
    workers = [threading.Thread(target=client_thread, args=(server, load), daemon=True) for _ in range(threads)]
    load.start = time.perf_counter() + 0.05
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return time.perf_counter() - load.start


def start_load(server: Server, load: Load, threads: int) -> threading.Thread:
    """``run_load`` in a thread of its own (join it)."""
    runner = threading.Thread(target=run_load, args=(server, load, threads), daemon=True)
    runner.start()
    return runner
