"""Errors in LM Studio's dialect.

Replies use OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` (the core's
``llama_host.openai_errors`` handlers render them). LM Studio's v1 event stream names its error kinds differently
(``invalid_request``, ``model_not_found``, ...): :func:`stream_error` gives that shape for the ``error`` event.
"""

from __future__ import annotations

from typing import Any

from llama_host.errors import HostError

_STREAM_KINDS = {400: "invalid_request", 404: "model_not_found", 501: "not_implemented"}


class NotSupported(HostError):
    """A documented LM Studio feature this host does not provide (MCP integrations)."""

    status, code, type = 501, "not_implemented", "invalid_request_error"


class NotLoaded(HostError):
    """``/api/v1/models/unload`` of a model that has no loaded instance."""

    status, code, type = 404, "model_not_loaded", "invalid_request_error"

    def __init__(self, instance_id: str) -> None:
        super().__init__(f"no loaded instance '{instance_id}'", param="instance_id")


def stream_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of a v1 ``error`` event."""
    if isinstance(exc, HostError):
        kind = _STREAM_KINDS.get(exc.status) or ("invalid_request" if 400 <= exc.status < 500 else "internal_error")
        err: dict[str, Any] = {"type": kind, "message": exc.detail(), "code": exc.code}
        if exc.param:
            err["param"] = exc.param
        return err
    return {"type": "unknown", "message": str(exc) or type(exc).__name__}
