"""Every error under the Ollama routes rendered as Ollama does: ``{"error": "<message>"}`` with a status."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from llama_host.errors import HostError

log = logging.getLogger("llama_host.ollama_api")
_encode = msgspec.json.Encoder().encode


def _reply(message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(content=_encode({"error": message}), status_code=status, media_type="application/json",
                    headers=headers)


def host_error(_: Request[Any, Any, Any], exc: HostError) -> Response:
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if exc.retry_after else None
    return _reply(exc.detail(), exc.status, headers)


def http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response:
    detail = exc.detail
    if exc.status_code == 404 and detail in ("Not Found", ""):
        detail = "404 page not found"
    elif exc.status_code == 405:
        detail = "405 method not allowed"
    return _reply(detail, exc.status_code, getattr(exc, "headers", None))


def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response:
    log.exception("ollama_api: %s %s failed", request.method, request.url.path)
    return _reply(f"internal error: {exc}", 500)


EXCEPTION_HANDLERS = {HostError: host_error, HTTPException: http_error, Exception: unexpected}
