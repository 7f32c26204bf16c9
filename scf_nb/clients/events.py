"""``Event``: the handle ``invoke`` returns. It holds only a RequestId and the client it came from, and calls
only public methods of the client protocol (``protocol.ClientProtocol``), so the same handle works over any
client (in-process, later over HTTP) and for events of an earlier session."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from ..store.follow import Follower
    from .protocol import ClientProtocol


class Event:
    """One invocation of a function.

    Attributes:
        request_id: the RequestId.
    """

    __slots__ = ("_client", "request_id", "function_name")

    def __init__(self, client: ClientProtocol, request_id: str, function_name: str = "") -> None:
        self._client = client
        self.request_id = request_id
        self.function_name = function_name

    @property
    def status(self) -> str:
        """The current status: QUEUED, RUNNING, FINISHED, FAILED or ABORTED."""
        return self._client.event_status(self.request_id)

    def wait(self, timeout: float | None = None) -> str:
        """Block until the event has ended (or ``timeout`` seconds passed); returns the status then."""
        return self._client.wait_event(self.request_id, timeout)

    def result(self, timeout: float | None = None) -> Any:
        """The handler's return value, waiting for it: the value itself (numpy, pandas, tuples, sets, ...), or
        its JSON form with a ``ResultWarning`` where it cannot be loaded here (see the README).

        Raises:
            FunctionError: the event FAILED (carries the remote type, message and traceback).
            EventAborted: the event was terminated.
            TimeoutError: still not ended after ``timeout`` seconds.
        """
        return self._client.event_result(self.request_id, timeout)

    def logs(self, since_seq: int | None = None, stream: str | None = None) -> pd.DataFrame:
        """Every line the event wrote so far: columns ``seq, ts, stream, line``."""
        return self._client.logs(self.request_id, since_seq=since_seq, stream=stream)

    def follow(self, since_seq: int | None = None, timeout: float | None = None) -> Follower:
        """Its log lines as they come, until it ends (see ``scf_nb.follow``)."""
        return self._client.follow(self.request_id, since_seq=since_seq, timeout=timeout)

    def add_done_callback(self, fn: Callable[[Event], Any]) -> None:
        """Call ``fn(self)`` once when the event ends; at once if it has (see ``Client.add_done_callback``)."""
        self._client.add_done_callback(self, fn)

    def terminate(self, grace: bool = False, wait: bool = True) -> str:
        """Stop the event (see ``scf_nb.terminate``); returns its status afterwards."""
        return self._client.terminate_event(self.request_id, grace=grace, wait=wait)

    def info(self) -> dict[str, Any]:
        """Status, times, duration_ms, init_duration_ms (the cold start before it; None on a warm instance),
        billed_duration_ms, mem_usage_bytes, error and exit reason."""
        return self._client.event_info(self.request_id)

    def __repr__(self) -> str:
        name = f" {self.function_name}" if self.function_name else ""
        return f"<Event {self.request_id}{name} {self.status}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other.request_id == self.request_id

    def __hash__(self) -> int:
        return hash(self.request_id)
