"""LM Studio's REST API v0: models, and OpenAI-style inference with ``stats``, ``model_info`` and ``runtime``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import FromPath
from litestar.response import Stream

from llama_host import Host
from llama_host.errors import HostError
from llama_host.host import HostDep
from llama_host.proxy import SSE_HEADERS, RequestMeter, Upstream, end_request
from llama_host.scheduler import Lease
from llama_host.types import ModelSpec

from . import describe, sse
from .exchange import SURFACE, AnyRequest, open_or_fail, read_body, resolve
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


class LMStudioV0Controller(Controller):
    path = "/api/v0"
    tags = ["lmstudio"]

    @get("/models", sync_to_thread=False)
    def models(self, host: HostDep, lms: LMSDep) -> V0ModelList:
        data = [
            describe.v0_model(host.scheduler.models[s.name], s, default_publisher=lms.settings.default_publisher)
            for s in host.scheduler.statuses()
            if not s.unlisted and not s.missing and s.name in host.scheduler.models
        ]
        return V0ModelList(data=data)

    @get("/models/{model:path}", sync_to_thread=False)
    def model(self, host: HostDep, lms: LMSDep, model: FromPath[str]) -> V0Model:
        spec = host.scheduler.get(model.lstrip("/"), SURFACE)
        status = host.scheduler.status(spec.name)
        return describe.v0_model(spec, status, default_publisher=lms.settings.default_publisher)

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
        stream = bool(req.stream) and kind is not V0EmbeddingRequest
        meter = host.meter(SURFACE, f"/api/v0/{endpoint}", spec.name, stream)
        lease: Lease | None = None
        up: Upstream | None = None
        try:
            lease = await host.scheduler.acquire(spec.name, ttl=req.ttl)
            meter.queue_wait = lease.queue_wait
            facts = await runner_facts(host, lms, lease)
            up = await open_or_fail(host, lease, path, upstream_body(body, spec.name))
            extras = v0_extras(spec, lease, facts, body)
            if stream and up.is_sse:
                events = _v0_events(up, lease, meter, extras)
                up = lease = None  # the stream owns them from here
                return Stream(events, headers=SSE_HEADERS, media_type="text/event-stream")
            reply = await up.json()
        except HostError as exc:
            meter.finish(exc.status, exc.message)
            raise
        except BaseException:
            meter.finish(499, "client disconnected")
            raise
        finally:
            if up is not None:
                up.close()
            if lease is not None:
                lease.release()
        meter.first_token()
        meter.observe(reply)
        meter.finish(200)
        if isinstance(reply, dict) and kind is not V0EmbeddingRequest:
            extras.apply(reply)
        return Response(reply, status_code=200, media_type="application/json")


async def _v0_events(up: Upstream, lease: Lease, meter: RequestMeter, extras: Extras) -> AsyncIterator[bytes]:
    decorator = StreamDecorator(extras)
    status, error = 200, None
    try:
        async for chunk in up.iter_sse():
            meter.first_token()
            meter.observe(chunk)
            yield sse.data_event(decorator.chunk(chunk))
        trailer = decorator.trailer()
        if trailer is not None:
            yield sse.data_event(trailer)
        # the runner is done: free the model and record the request before the client sees the end
        end_request(up, lease, meter, status, error)
        yield sse.DONE
    except HostError as exc:
        status, error = exc.status, exc.message
        end_request(up, lease, meter, status, error)
        yield openai_error_event(exc)
    except BaseException:  # the client went away: closing the upstream below stops generation
        status, error = 499, "client disconnected"
        raise
    finally:
        end_request(up, lease, meter, status, error)


def v0_extras(spec: ModelSpec, lease: Lease, facts: RunnerFacts, body: dict[str, Any]) -> Extras:
    meta = describe.facts(spec)
    return Extras(
        model_info=V0ModelInfo(
            arch=describe.architecture(meta),
            quant=describe.quantization(spec, meta),
            context_length=describe.loaded_context(spec, meta, facts.n_ctx),
        ),
        runtime=V0Runtime(name=spec.runtime, version=facts.build or "unknown"),
        waited=lease.queue_wait,
        max_tokens=token_limit(body),
    )


def openai_error_event(exc: HostError) -> bytes:
    return sse.data_event({"error": {"message": exc.detail(), "type": exc.type, "param": exc.param, "code": exc.code}})
