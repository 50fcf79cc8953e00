"""Errors in LM Studio's dialect, which is OpenAI's: ``{"error": {"message", "type", "param", "code"}}``.

LM Studio's v1 event stream names its error kinds differently (``invalid_request``, ``model_not_found``, ...):
:func:`stream_error` gives that shape for the ``error`` event.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from llama_host.errors import HostError

log = logging.getLogger(__name__)

_HTTP_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", "forbidden"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "payload_too_large"),
    422: ("invalid_request_error", "unprocessable_entity"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}


class UpstreamHTTPError(Exception):
    """The runner answered with an error status before any byte went to the client: relay it, reshaped."""

    def __init__(self, status: int, payload: Any) -> None:
        self.status = status
        self.payload = payload
        super().__init__(upstream_message(payload) or f"runner answered {status}")


class NotSupported(HostError):
    """A documented LM Studio feature this host does not provide (MCP integrations)."""

    status, code, type = 501, "not_implemented", "invalid_request_error"


def upstream_message(payload: Any) -> str | None:
    """The message in a runner's error body (``{"error": {"message"}}``, ``{"error": "..."}`` or plain text)."""
    if isinstance(payload, (bytes, bytearray)):
        try:
            payload = msgspec.json.decode(payload)
        except msgspec.DecodeError:
            return payload.decode("utf-8", "replace").strip() or None
    if isinstance(payload, dict):
        err = payload.get("error", payload)
        if isinstance(err, dict):
            message = err.get("message")
            return str(message) if message is not None else None
        if isinstance(err, str):
            return err
    if isinstance(payload, str):
        return payload
    return None


def http_kind(status: int) -> tuple[str, str]:
    """OpenAI ``type`` and a ``code`` for an HTTP status."""
    if status in _HTTP_TYPES:
        return _HTTP_TYPES[status]
    return ("server_error", "internal_error") if status >= 500 else ("invalid_request_error", "invalid_request")


def error_body(message: str, type_: str, *, param: str | None = None, code: str | int | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response[Any]:
    return Response(body, status_code=status, headers=headers or None, media_type="application/json")


def host_error(_: Request[Any, Any, Any], exc: HostError) -> Response[Any]:
    headers = {"retry-after": str(math.ceil(exc.retry_after))} if exc.retry_after else None
    return _response(exc.status, error_body(exc.detail(), exc.type, param=exc.param, code=exc.code), headers)


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    type_, code = http_kind(exc.status_code)
    headers = dict(exc.headers or {})
    return _response(exc.status_code, error_body(str(exc.detail), type_, code=code), headers)


def upstream_error(_: Request[Any, Any, Any], exc: UpstreamHTTPError) -> Response[Any]:
    type_, code = http_kind(exc.status)
    if isinstance(exc.payload, dict) and isinstance(exc.payload.get("error"), dict):
        err = exc.payload["error"]
        type_ = str(err.get("type") or type_)
    return _response(exc.status, error_body(str(exc), type_, code=code))


def unexpected_error(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("lmstudio_api: unexpected error", exc_info=exc)
    return _response(500, error_body(f"internal error: {exc}", "server_error", code="internal_error"))


def exception_handlers() -> dict[type[Exception], Any]:
    return {
        HostError: host_error,
        HTTPException: http_error,
        UpstreamHTTPError: upstream_error,
        Exception: unexpected_error,
    }


def stream_error(exc: BaseException) -> dict[str, Any]:
    """The ``error`` object of a v1 ``error`` event."""
    if isinstance(exc, HostError):
        kind = {404: "model_not_found", 400: "invalid_request", 501: "not_implemented"}.get(exc.status, "internal_error")
        err: dict[str, Any] = {"type": kind, "message": exc.detail(), "code": exc.code}
        if exc.param:
            err["param"] = exc.param
        return err
    if isinstance(exc, UpstreamHTTPError):
        kind = "invalid_request" if 400 <= exc.status < 500 else "internal_error"
        return {"type": kind, "message": str(exc), "code": f"upstream_{exc.status}"}
    return {"type": "unknown", "message": str(exc) or type(exc).__name__}
