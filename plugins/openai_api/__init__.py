"""The OpenAI-compatible surface: ``/v1`` routed by the body's ``model`` to that model's runner.

Served on the main port and, as Ollama and LM Studio do, on every other API port.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import msgspec
from litestar import Controller, Request, Response, get, post, route
from litestar.params import FromPath

from llama_host import Host, HostDep, Surface, hookimpl
from llama_host.bodies import decode_json
from llama_host.errors import BadRequest, HostError, ModelNotFound
from llama_host.fastpath import FastHandler, FastRoute
from llama_host.openai_errors import OPENAI_EXCEPTION_HANDLERS, error_event
from llama_host.openapi import json_body
from llama_host.progress import loading_text, openai_loading_event
from llama_host.proxy import Upstream
from llama_host.request import Exchange, run
from llama_host.scheduler import Lease
from llama_host.variants import for_embeddings

from .native import native_controller
from .responses_surface import controller as responses_controller
from .schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RerankRequest,
)

NAME = "openai_api"
#: OpenAI count parameters and their least values (-1: no limit, as llama-server and LM Studio take it); a value
#: below is refused here rather than passed to the runner
COUNTS = {"max_tokens": -1, "max_completion_tokens": -1, "n": 1, "top_logprobs": 0}
#: the passthrough routes on the lean path (llama_host.fastpath) → their endpoint name
FAST_ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings"}


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    port: int | None = None
    """Port of the /v1 surface; default: the main port."""
    max_body_bytes: int = 32 * 2**20
    """Request bodies larger than this get 413."""
    on_api_ports: bool = True
    """Also serve /v1 on the Ollama and LM Studio ports (as those servers do)."""
    responses_store_entries: int = 1000
    """Past ``/v1/responses`` replies kept in memory for ``previous_response_id`` (least recently used first out)."""
    responses_store_bytes: int = 64 * 2**20
    """The most bytes (JSON) those kept responses and their conversations may take together."""
    native_routes: bool = True
    """Serve llama.cpp's own endpoints (``/completion``, ``/infill``, ``/tokenize``, ...) routed by ``model``."""
    fast_path: bool = True
    """Serve ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings`` through the host's lean ASGI
    path (llama_host.fastpath: the same checks, less CPU per request); false: through Litestar like every route."""


def model_entry(host: HostDep, name: str) -> dict[str, Any]:
    s = host.scheduler.status(name)
    facts = s.facts or host.scheduler.facts(name)
    return {"id": s.name, "object": "model", "created": int(s.metadata.get("mtime") or host.started_at),
            "owned_by": "llama-host", "state": s.state, "runtime": s.runtime, "aliases": s.aliases,
            "context_length": facts.context_length, "capabilities": facts.capabilities,
            "architecture": facts.architecture, "quantization": facts.quantization, "scheduling": s.scheduling}


class OpenAIController(Controller):
    path = "/"
    tags = ["openai"]

    @get("/v1/models", sync_to_thread=False)
    def list_models(self, host: HostDep) -> dict[str, Any]:
        data = [model_entry(host, s.name) for s in host.scheduler.statuses() if not s.unlisted and not s.missing]
        return {"object": "list", "data": data}

    @get("/v1/models/{model:path}", sync_to_thread=False)
    def get_model(self, host: HostDep, model: FromPath[str]) -> dict[str, Any]:
        spec = host.scheduler.resolve(model.lstrip("/"), NAME)
        if spec is None:
            raise ModelNotFound(model.lstrip("/"))
        return model_entry(host, spec.name)

    @post("/v1/chat/completions", operation_class=json_body(ChatCompletionRequest))
    async def chat(self, request: Request, host: HostDep) -> Response:
        return await relay(request, host, "/v1/chat/completions", "chat")

    @post("/v1/completions", operation_class=json_body(CompletionRequest))
    async def completions(self, request: Request, host: HostDep) -> Response:
        return await relay(request, host, "/v1/completions", "completions")

    @post("/v1/embeddings", operation_class=json_body(EmbeddingRequest))
    async def embeddings(self, request: Request, host: HostDep) -> Response:
        return await relay(request, host, "/v1/embeddings", "embeddings", embeddings=True)

    @post(["/v1/rerank", "/v1/reranking"], operation_class=json_body(RerankRequest))
    async def rerank(self, request: Request, host: HostDep) -> Response:
        return await relay(request, host, "/v1/rerank", "rerank")

    @route("/upstream/{model:str}/{rest:path}", http_method=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def upstream(self, request: Request, host: HostDep, model: FromPath[str], rest: FromPath[str]) -> Response:
        """Raw passthrough to the model's own server (``/props``, ``/slots``, ``/tokenize``, ...)."""
        spec = host.scheduler.get(model, NAME)
        path = rest if rest.startswith("/") else "/" + rest
        if request.url.query:
            path += "?" + request.url.query
        return await run(host, Passthrough(spec.name, "upstream", path, await request.body() or None, stream=True,
                                           method=request.method, content_type=request.headers.get("content-type"),
                                           check_status=False))


class Passthrough(Exchange):
    """The OpenAI dialect is the runner's own: the body goes as it came, the reply's bytes come back unchanged."""

    surface = NAME
    raw = True
    media_type = "text/event-stream"

    def __init__(self, model: str, endpoint: str, path: str, body: bytes | None, *, stream: bool,
                 method: str = "POST", content_type: str | None = None, check_status: bool = True) -> None:
        self.model, self.endpoint, self.path, self._body, self.stream = model, endpoint, path, body, stream
        self.method, self.check_status = method, check_status
        self._content_type = content_type or "application/json"

    def send(self, host: Host, lease: Lease) -> Coroutine[Any, Any, Upstream]:  # the relay's, not one more
        return host.relay.open(lease, self.method, self.path, body=self._body,
                               headers={"Content-Type": self._content_type})

    def error(self, exc: HostError) -> bytes:
        return error_event(exc)

    def loading(self, seconds: float, last_load: float | None) -> bytes:
        return openai_loading_event(self.model, loading_text(self.model, seconds, last_load),
                                    chat=self.endpoint == "chat")


async def relay(request: Request, host: HostDep, path: str, endpoint: str, *, embeddings: bool = False) -> Response:
    return await relay_body(host, await request.body(), path, endpoint, embeddings=embeddings)


def relay_body(host: Host, body: bytes, path: str, endpoint: str, *,
               embeddings: bool = False) -> Coroutine[Any, Any, Response]:
    """The request's checks, then :func:`run`'s coroutine for the caller to await (one coroutine less per request
    than awaiting it here); a bad body raises before anything is awaited."""
    obj = decode_json(body, minimums=COUNTS)
    if not isinstance(obj, dict):
        raise BadRequest("the request body must be a JSON object")
    requested = obj.get("model") or host.site.default_model
    if not requested or not isinstance(requested, str):
        raise BadRequest("you must provide a model parameter", param="model")
    spec = host.scheduler.get(requested, NAME)
    if embeddings:  # a chat model embeds through its embedding runner (llama_host.variants), as in Ollama
        spec = for_embeddings(host.scheduler, spec)
    return run(host, Passthrough(spec.name, endpoint, path, body, stream=obj.get("stream") is True))


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


def _fast_handler(path: str, endpoint: str) -> FastHandler:
    """:func:`relay_body` for one fast route (a closure, not a ``functools.partial`` with keywords: those merge a
    dict of keywords on each call)."""
    embeddings = endpoint == "embeddings"

    def handler(host: Host, body: bytes) -> Coroutine[Any, Any, Response]:
        return relay_body(host, body, path, endpoint, embeddings=embeddings)

    return handler


@hookimpl
def register_surfaces(host: HostDep) -> list[Surface]:
    settings: Settings = host.settings(NAME, Settings)
    controller = type("OpenAIController", (OpenAIController,), {"request_max_body_size": settings.max_body_bytes})
    handlers: list[Any] = [controller, responses_controller(host, settings.max_body_bytes,
                                                            settings.responses_store_entries,
                                                            settings.responses_store_bytes)]
    if settings.native_routes:
        handlers.append(type("NativeController", (native_controller(Passthrough, run),),
                             {"request_max_body_size": settings.max_body_bytes}))
    fast = {path: FastRoute(_fast_handler(path, endpoint), settings.max_body_bytes)
            for path, endpoint in FAST_ROUTES.items()} if settings.fast_path else {}
    return [Surface(name=NAME, port=settings.port or host.site.port, route_handlers=handlers,
                    exception_handlers=OPENAI_EXCEPTION_HANDLERS, on_api_ports=settings.on_api_ports,
                    fast_routes=fast)]
