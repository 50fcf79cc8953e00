"""Anthropic's Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``, routed by the body's
``model`` to that model's runner, on every port that serves ``/v1`` (the Ollama port included, as Ollama serves it).

A translator on the core's request primitive: :mod:`.translate` turns the request into a chat completion and the
runner's chunks into Anthropic's events; metering, the lease, the queue and error classification are the core's.
``x-api-key`` (the core's key guard accepts it) and ``anthropic-version`` / ``anthropic-beta`` headers are accepted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec
from litestar import Controller, Request, Response, post
from litestar.exceptions import HTTPException
from litestar.types import ExceptionHandlersMap

from llama_host import Host, HostDep, Surface, hookimpl
from llama_host.bodies import decode_json
from llama_host.errors import BadRequest, HostError
from llama_host.progress import loading_text
from llama_host.request import Exchange, run

from . import translate as tr

if TYPE_CHECKING:
    from llama_host.proxy import Upstream
    from llama_host.scheduler import Lease

NAME = "anthropic_api"
log = logging.getLogger("llama_host.anthropic_api")
_encode = msgspec.json.Encoder().encode
_COUNTS = {"max_tokens": 1, "top_k": 0}


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    port: int | None = None
    """Port of the Messages API; default: the main port."""
    on_api_ports: bool = True
    """Also serve it on every other API port (the Ollama and LM Studio ports), as Ollama does."""
    max_body_bytes: int = 32 * 2**20
    """Request bodies larger than this get 413 ``request_too_large``."""


def anthropic_error(status: int, message: str, retry_after: float | None = None) -> Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else {}
    return Response(content=_encode(tr.error_body(status, message)), status_code=status, headers=headers,
                    media_type="application/json")


def _host_error(_: Request, exc: HostError) -> Response:
    return anthropic_error(exc.status, exc.detail(), exc.retry_after)


def _http_error(_: Request, exc: HTTPException) -> Response:
    return anthropic_error(exc.status_code, exc.detail)


def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unexpected error", exc_info=exc)
    return anthropic_error(500, f"internal error: {type(exc).__name__}: {exc}")


EXCEPTION_HANDLERS: ExceptionHandlersMap = {HostError: _host_error, HTTPException: _http_error,
                                            Exception: _unexpected}


async def _request(request: Request, host: Host) -> tuple[dict[str, Any], str]:
    """The decoded body and the name of the model it routes to."""
    req = decode_json(await request.body(), minimums=_COUNTS)
    if not isinstance(req, dict):
        raise BadRequest("the request body must be a JSON object")
    requested = req.get("model") or host.site.default_model
    if not requested or not isinstance(requested, str):
        raise BadRequest("model: Field required", param="model")
    return req, host.scheduler.get(requested, NAME).name


class Messages(Exchange):
    """``/v1/messages``: Anthropic's request as a chat completion, the runner's chunks as Anthropic's events."""

    surface = NAME
    endpoint = "messages"
    path = "/v1/chat/completions"
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def __init__(self, req: dict[str, Any], model: str, *, stream: bool) -> None:
        self.model, self.stream = model, stream
        self.media_type = "text/event-stream" if stream else "application/json"
        self._req = req
        self._echo = str(req.get("model") or model)
        try:
            self._body = tr.chat_request(req, model, stream=stream)
        except tr.RequestError as exc:
            raise BadRequest(str(exc)) from None
        self._stream = tr.MessageStream(req, self._echo)
        self.event = self._stream.feed  # type: ignore[method-assign]  # per token: no extra call layer

    def body(self) -> dict[str, Any]:
        return self._body

    def loading(self, seconds: float, last_load: float | None) -> bytes:
        """``ping`` events while the model loads: the SDKs skip them; the text is in the event's ``loading``."""
        return tr.sse("ping", {"type": "ping", "loading": loading_text(self.model, seconds, last_load)})

    def begin(self, lease: Lease) -> bytes:
        return self._stream.start()

    def end(self) -> bytes:
        return self._stream.finish()

    def reply(self, reply: Any, up: Upstream) -> bytes:
        return _encode(tr.message_from_chat(self._req, reply if isinstance(reply, dict) else {}, model=self._echo))

    def error(self, exc: HostError) -> bytes:
        return tr.MessageStream.fail(exc.status, exc.detail())


class CountTokens(Exchange):
    """``/v1/messages/count_tokens``: the runner applies the model's chat template (``/apply-template``), then
    tokenizes the prompt (``/tokenize``, special tokens added and parsed as the runner does for a chat) — the count
    the model would see."""

    surface = NAME
    endpoint = "count_tokens"
    path = "/tokenize"

    def __init__(self, req: dict[str, Any], model: str) -> None:
        self.model = model
        try:
            body = tr.chat_request(req, model, stream=False, count_only=True)
        except tr.RequestError as exc:
            raise BadRequest(str(exc)) from None
        self._template = {k: body[k] for k in ("messages", "tools") if k in body}

    async def send(self, host: Host, lease: Lease) -> Upstream:
        up = await host.relay.open(lease, "POST", "/apply-template", json=self._template)
        if up.status >= 400:
            return up  # the primitive reports the runner's error
        try:
            prompt = (await up.json()).get("prompt", "")
        finally:
            up.close()
        return await host.relay.open(lease, "POST", "/tokenize", json={"content": prompt, "add_special": True})

    def reply(self, reply: Any, up: Upstream) -> bytes:
        tokens = reply.get("tokens") if isinstance(reply, dict) else None
        return _encode({"input_tokens": len(tokens or ())})


class AnthropicController(Controller):
    path = "/"
    tags = ["anthropic"]

    @post("/v1/messages")
    async def messages(self, request: Request, host: HostDep) -> Response:
        req, model = await _request(request, host)
        return await run(host, Messages(req, model, stream=req.get("stream") is True))

    @post("/v1/messages/count_tokens")
    async def count_tokens(self, request: Request, host: HostDep) -> Response:
        req, model = await _request(request, host)
        return await run(host, CountTokens(req, model))


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


@hookimpl
def register_surfaces(host: HostDep) -> list[Surface]:
    settings: Settings = host.settings(NAME, Settings)
    controller = type("AnthropicController", (AnthropicController,),
                      {"request_max_body_size": settings.max_body_bytes})
    return [Surface(name=NAME, port=settings.port or host.site.port, route_handlers=[controller],
                    exception_handlers=EXCEPTION_HANDLERS, on_api_ports=settings.on_api_ports)]
