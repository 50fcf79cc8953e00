"""Errors in the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.

Shared by every surface that speaks OpenAI's dialect (the core's management API, ``/v1``, LM Studio, audio).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from litestar import Request, Response
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from llama_host.errors import HostError

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          429: "rate_limit_error"}
_CODES = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def openai_error(status: int, message: str, *, type: str | None = None, code: str | None = None,
                 param: str | None = None, retry_after: float | None = None) -> Response[Any]:
    headers = {}
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    body = {"error": {"message": message, "type": type or _TYPES.get(status, "server_error"), "param": param,
                      "code": code or _CODES.get(status)}}
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def error_event(exc: HostError) -> bytes:
    """An error as an OpenAI stream event (``data: {"error": ...}``): the SDKs raise it as an API error."""
    body = {"error": {"message": exc.detail(), "type": exc.type, "param": exc.param, "code": exc.code}}
    return b"data: " + msgspec.json.encode(body) + b"\n\n"


def _host_error(_: Request[Any, Any, Any], exc: HostError) -> Response[Any]:
    return openai_error(exc.status, exc.detail(), type=exc.type, code=exc.code, param=exc.param,
                        retry_after=exc.retry_after)


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    message = exc.detail
    if exc.status_code == 400 and isinstance(exc.extra, dict | list) and exc.extra:
        message = f"{exc.detail}: {exc.extra}"
    return openai_error(exc.status_code, message, retry_after=None)


def _unexpected(_: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    log.exception("unexpected error", exc_info=exc)
    return openai_error(500, f"internal error: {type(exc).__name__}: {exc}")


OPENAI_EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    HostError: _host_error, HTTPException: _http_error, Exception: _unexpected}
