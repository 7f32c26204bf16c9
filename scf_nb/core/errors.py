"""Errors, each carrying the TencentCloud error code the REST layer maps one to one."""

from __future__ import annotations

from typing import Any


class ScfError(Exception):
    """Base of every error scf_nb raises on purpose.

    Attributes:
        code: the TencentCloud error code, e.g. ``ResourceNotFound.AsyncEvent``.
        message: what went wrong, for a person.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"[{code}] {message}")
        self.code = code
        self.message = message


class FunctionError(ScfError):
    """The handler raised (or its instance died): ``Event.result()`` of a FAILED event.

    Attributes:
        error_type: the remote exception's type name (``ValueError``), or the cause of death.
        error_message: the remote exception's message.
        traceback: the remote traceback as text ("" when the process died).
        request_id: the event's RequestId.
    """

    def __init__(self, request_id: str, error_type: str, error_message: str, traceback: str = "") -> None:
        super().__init__("FailedOperation.FunctionError", f"{error_type}: {error_message}")
        self.request_id = request_id
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback

    def __str__(self) -> str:
        text = f"event {self.request_id} failed: {self.error_type}: {self.error_message}"
        if self.traceback:
            text += "\n\nRemote traceback:\n" + self.traceback.rstrip()
        return text


class EventAborted(ScfError):
    """``Event.result()`` of an event that was terminated (ABORTED).

    Attributes:
        request_id: the event's RequestId.
        reason: why it ended (its exit reason).
    """

    def __init__(self, request_id: str, message: str = "the event was terminated") -> None:
        super().__init__("FailedOperation.AsyncEventStatus", f"event {request_id} was aborted: {message}")
        self.request_id = request_id
        self.reason = message


def not_found_event(request_id: Any) -> ScfError:
    return ScfError("ResourceNotFound.AsyncEvent", f"no event with RequestId {request_id!r}")


def not_found_function(name: str, namespace: str, qualifier: str | None = None) -> ScfError:
    what = f"{namespace}/{name}" + (f":{qualifier}" if qualifier else "")
    return ScfError("ResourceNotFound.Function", f"no function {what}")


def invalid(code_suffix: str, message: str) -> ScfError:
    """An ``InvalidParameterValue.<suffix>`` error."""
    return ScfError(f"InvalidParameterValue.{code_suffix}", message)
