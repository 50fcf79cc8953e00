"""LM Studio's REST API v0: models, and OpenAI-style inference with ``stats``, ``model_info`` and ``runtime``."""

from __future__ import annotations

from typing import Any

import msgspec

from litestar import Controller, Response, get, post
from litestar.params import FromPath

from llama_host import Host
from llama_host.errors import HostError
from llama_host.host import HostDep
from llama_host.openai_errors import error_event
from llama_host.progress import loading_text, openai_loading_event
from llama_host.proxy import Upstream
from llama_host.request import Exchange, run
from llama_host.scheduler import Lease
from llama_host.types import ModelSpec
from llama_host.variants import for_embeddings

from . import describe, sse
from .exchange import SURFACE, AnyRequest, read_body, resolve
from .state import LMSDep, RunnerFacts, SurfaceState, runner_facts
from .v0 import Extras, StreamDecorator, token_limit, upstream_body
from .wire import (
    V0ChatRequest,
    V0CompletionRequest,
    V0EmbeddingRequest,
    V0InferenceRequest,
    V0Model,
    V0ModelInfo,
    V0ModelList,
    V0Runtime,
)


_encode = msgspec.json.Encoder().encode


class LMStudioV0Controller(Controller):
    path = "/api/v0"
    tags = ["lmstudio"]

    @get("/models", sync_to_thread=False)
    def models(self, host: HostDep, lms: LMSDep) -> V0ModelList:
        data = [
            describe.v0_model(host.scheduler.models[s.name], s, s.facts or host.scheduler.facts(s.name),
                              default_publisher=lms.settings.default_publisher)
            for s in host.scheduler.statuses()
            if not s.unlisted and not s.missing and s.name in host.scheduler.models
        ]
        return V0ModelList(data=data)

    @get("/models/{model:path}", sync_to_thread=False)
    def model(self, host: HostDep, lms: LMSDep, model: FromPath[str]) -> V0Model:
        spec = host.scheduler.get(model.lstrip("/"), SURFACE)
        status = host.scheduler.status(spec.name)
        return describe.v0_model(spec, status, host.scheduler.facts(spec.name),
                                 default_publisher=lms.settings.default_publisher)

    @post("/chat/completions", status_code=200)
    async def chat_completions(self, request: AnyRequest, host: HostDep, lms: LMSDep) -> Response[Any]:
        return await self._infer(request, host, lms, V0ChatRequest, "chat/completions",
                                 "/v1/chat/completions")

    @post("/completions", status_code=200)
    async def completions(self, request: AnyRequest, host: HostDep, lms: LMSDep) -> Response[Any]:
        return await self._infer(request, host, lms, V0CompletionRequest, "completions", "/v1/completions")

    @post("/embeddings", status_code=200)
    async def embeddings(self, request: AnyRequest, host: HostDep, lms: LMSDep) -> Response[Any]:
        return await self._infer(request, host, lms, V0EmbeddingRequest, "embeddings", "/v1/embeddings")

    async def _infer(self, request: AnyRequest, host: Host, lms: SurfaceState,
                     kind: type[V0InferenceRequest], endpoint: str, path: str) -> Response[Any]:
        body, req = await read_body(request, kind)
        spec = resolve(host, req.model)
        if kind is V0EmbeddingRequest:  # a chat model embeds through its embedding runner (llama_host.variants)
            spec = for_embeddings(host.scheduler, spec)
        return await run(host, V0Inference(lms, spec, kind, f"/api/v0/{endpoint}", path, body, req))


class V0Inference(Exchange):
    """An OpenAI body goes to the runner nearly as is; the reply (or the last chunk) gains LM Studio's extras."""

    surface = SURFACE

    def __init__(self, lms: SurfaceState, spec: ModelSpec, kind: type[V0InferenceRequest], endpoint: str, path: str,
                 body: dict[str, Any], req: V0InferenceRequest) -> None:
        self.model, self.endpoint, self.path, self.ttl = spec.name, endpoint, path, req.ttl
        self.stream = bool(req.stream) and kind is not V0EmbeddingRequest
        self.media_type = "text/event-stream" if self.stream else "application/json"
        self._lms, self._spec, self._kind, self._client_body = lms, spec, kind, body
        self._extras: Extras | None = None
        self._decorator: StreamDecorator | None = None

    def body(self) -> dict[str, Any]:
        return upstream_body(self._client_body, self._spec.name)

    async def send(self, host: Host, lease: Lease) -> Upstream:
        facts = await runner_facts(host, self._lms, lease)
        self._extras = v0_extras(host, self._spec, lease, facts, self._client_body)
        self._decorator = StreamDecorator(self._extras)
        return await super().send(host, lease)

    def event(self, chunk: Any) -> bytes:
        return sse.data_event(self._decorator.chunk(chunk))  # type: ignore[union-attr]

    def end(self) -> bytes:
        trailer = self._decorator.trailer()  # type: ignore[union-attr]
        return (sse.data_event(trailer) if trailer is not None else b"") + sse.DONE

    def reply(self, reply: Any, up: Upstream) -> bytes:
        if isinstance(reply, dict) and self._kind is not V0EmbeddingRequest and self._extras is not None:
            self._extras.apply(reply)
        return _encode(reply)

    def error(self, exc: HostError) -> bytes:
        return error_event(exc)

    def loading(self, seconds: float, last_load: float | None) -> bytes:
        """As the OpenAI surface: a ``reasoning_content`` chunk (chat), else an SSE comment."""
        return openai_loading_event(self.model, loading_text(self.model, seconds, last_load),
                                    chat=self._kind is V0ChatRequest)


def v0_extras(host: Host, spec: ModelSpec, lease: Lease, facts: RunnerFacts, body: dict[str, Any]) -> Extras:
    meta = describe.facts(spec)
    return Extras(
        model_info=V0ModelInfo(
            arch=describe.architecture(meta),
            quant=describe.quantization(spec, meta),
            context_length=host.scheduler.facts(spec.name).context_length or 0,
        ),
        runtime=V0Runtime(name=spec.runtime, version=facts.build or "unknown"),
        waited=lease.queue_wait,
        max_tokens=token_limit(body),
    )

