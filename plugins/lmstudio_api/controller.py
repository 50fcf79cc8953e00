"""LM Studio's REST API (``/api/v0`` and the native ``/api/v1``) in front of the host's scheduler and relay."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath
from litestar.response import Stream

from llama_host import Host
from llama_host.errors import BadRequest, HostError, ModelNotFound, UpstreamError
from llama_host.proxy import SSE_HEADERS, RequestMeter, Upstream
from llama_host.scheduler import Lease
from llama_host.types import ModelSpec

from . import describe, sse
from .dialect import NotSupported, stream_error
from .settings import Settings
from .store import ResponseStore
from .v0 import Extras, StreamDecorator, token_limit, upstream_body
from .v1chat import ChatFold, messages, openai_body
from .wire import (
    V0ChatRequest,
    V0CompletionRequest,
    V0EmbeddingRequest,
    V0InferenceRequest,
    V0Model,
    V0ModelInfo,
    V0ModelList,
    V0Runtime,
    V1ChatRequest,
    V1ChatResult,
    V1InstanceConfig,
    V1LoadRequest,
    V1LoadResponse,
    V1ModelList,
    V1UnloadRequest,
    V1UnloadResponse,
)

SURFACE = "lmstudio_api"
HostDep = NamedDependency[Host]
AnyRequest = Request[Any, Any, Any]
T = TypeVar("T")
_decode = msgspec.json.Decoder().decode


@dataclass
class RunnerFacts:
    """What a running llama-server says about itself (``GET /props``): its context size and build."""

    n_ctx: int | None = None
    build: str | None = None


@dataclass
class SurfaceState:
    """This surface's state for one host: settings, stored v1 chats, runner facts by (model, pid)."""

    settings: Settings
    store: ResponseStore
    facts: OrderedDict[tuple[str, int | None, str], RunnerFacts] = field(default_factory=OrderedDict)

    def known_facts(self, name: str, pid: int | None) -> RunnerFacts | None:
        for (model, fact_pid, _), facts in reversed(self.facts.items()):
            if model == name and fact_pid == pid:
                return facts
        return None


LMSDep = NamedDependency[SurfaceState]


# --- helpers ------------------------------------------------------------------------------------------------------


async def read_body(request: AnyRequest, kind: type[T]) -> tuple[dict[str, Any], T]:
    """The JSON object of the request, and its typed view (unknown keys are kept in the dict, ignored by ``kind``)."""
    raw = await request.body()
    try:
        body = _decode(raw) if raw else {}
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return body, msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None


def resolve(host: Host, requested: str | None) -> ModelSpec:
    name = requested or host.site.default_model
    if not name:
        raise BadRequest("'model' is required", param="model")
    return host.scheduler.get(name, SURFACE)


async def runner_facts(host: Host, state: SurfaceState, lease: Lease) -> RunnerFacts:
    """Ask a llama-server runner once for ``/props``; other runtimes (or a failure) give empty facts."""
    key = (lease.model.name, lease.runner.pid, lease.runner.base_url)
    if key in state.facts:
        return state.facts[key]
    facts = RunnerFacts()
    if lease.model.runtime == "llama-server":
        with contextlib.suppress(HostError, TimeoutError, msgspec.DecodeError, ValueError, TypeError):
            async with asyncio.timeout(5):
                async with await host.relay.open(lease, "GET", "/props") as up:
                    props = await up.json() if up.status == 200 else {}
            settings = props.get("default_generation_settings") or {}
            n_ctx = settings.get("n_ctx") or props.get("n_ctx")
            facts = RunnerFacts(n_ctx=int(n_ctx) if n_ctx else None, build=props.get("build_info") or None)
    state.facts[key] = facts
    while len(state.facts) > 64:
        state.facts.popitem(last=False)
    return facts


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


async def open_or_fail(host: Host, lease: Lease, meter: RequestMeter, path: str, body: dict[str, Any]) -> Upstream:
    """Send ``body``; an error status from the runner is raised (with its status) before anything is streamed."""
    up = await host.relay.open(lease, "POST", path, json=body)
    if up.status >= 400:
        try:
            raw = await up.read()
        finally:
            up.close()
        try:
            payload: Any = _decode(raw)
        except msgspec.DecodeError:
            payload = {"message": raw.decode("utf-8", "replace")[:500] or f"runner answered {up.status}"}
        error = UpstreamError(payload, up.status)
        if 400 <= error.status < 500:  # the request was at fault (e.g. a prompt longer than the context)
            error.type, error.code = "invalid_request_error", "invalid_request"
        raise error
    return up


def openai_error_event(exc: HostError) -> bytes:
    return sse.data_event({"error": {"message": exc.detail(), "type": exc.type, "param": exc.param, "code": exc.code}})


def model_size(spec: ModelSpec) -> int | None:
    if spec.metadata.get("size") or not spec.path:
        return None
    try:
        return os.stat(os.path.expanduser(spec.path)).st_size
    except OSError:
        return None


# --- v0 -----------------------------------------------------------------------------------------------------------


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
        return describe.v0_model(spec, host.scheduler.status(spec.name), default_publisher=lms.settings.default_publisher)

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
        try:
            lease = await host.scheduler.acquire(spec.name, ttl=req.ttl)
        except HostError as exc:
            meter.finish(exc.status, exc.message)
            raise
        meter.queue_wait = lease.queue_wait
        try:
            facts = await runner_facts(host, lms, lease)
            up = await open_or_fail(host, lease, meter, path, upstream_body(body, spec.name))
        except HostError as exc:
            lease.release()
            meter.finish(exc.status, exc.message)
            raise
        extras = v0_extras(spec, lease, facts, body)
        if stream and up.is_sse:
            return Stream(_v0_events(up, lease, meter, extras), headers=SSE_HEADERS, media_type="text/event-stream")
        try:
            reply = await up.json()
        except HostError as exc:
            meter.finish(exc.status, exc.message)
            raise
        finally:
            up.close()
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
        yield sse.DONE
    except HostError as exc:
        status, error = exc.status, exc.message
        yield openai_error_event(exc)
    except BaseException:  # the client went away: closing the upstream below stops generation
        status, error = 499, "client disconnected"
        raise
    finally:
        up.close()
        lease.release()
        meter.finish(status, error)


# --- v1 -----------------------------------------------------------------------------------------------------------


class LMStudioV1Controller(Controller):
    path = "/api/v1"
    tags = ["lmstudio"]

    @get("/models")
    async def models(self, host: HostDep, lms: LMSDep) -> V1ModelList:
        statuses = [s for s in host.scheduler.statuses() if not s.unlisted and not s.missing]
        specs = [host.scheduler.models[s.name] for s in statuses]
        sizes = await asyncio.to_thread(lambda: [model_size(spec) for spec in specs])
        out = []
        for spec, status, size in zip(specs, statuses, sizes, strict=True):
            facts = lms.known_facts(spec.name, status.pid)
            out.append(describe.v1_model(spec, status, default_publisher=lms.settings.default_publisher,
                                         size_bytes=size, runner_n_ctx=facts.n_ctx if facts else None))
        return V1ModelList(models=out)

    @post("/models/load", status_code=200)
    async def load(self, request: AnyRequest, host: HostDep, lms: LMSDep) -> V1LoadResponse:
        _, req = await read_body(request, V1LoadRequest)
        spec = resolve(host, req.model)
        context = req.context_length or (req.config.context_length if req.config else None)
        load_params = {"ctx_size": context} if context else None
        lease = await host.scheduler.acquire(spec.name, ttl=req.ttl, load_params=load_params)
        try:
            facts = await runner_facts(host, lms, lease)
        finally:
            lease.release()
        reply = V1LoadResponse(type=describe.v1_type(spec), instance_id=spec.name,
                               load_time_seconds=lease.load_seconds)
        if req.echo_load_config:
            reply.load_config = V1InstanceConfig(
                context_length=describe.loaded_context(spec, describe.facts(spec), facts.n_ctx or context))
        return reply

    @post("/models/unload", status_code=200)
    async def unload(self, request: AnyRequest, host: HostDep) -> V1UnloadResponse:
        _, req = await read_body(request, V1UnloadRequest)
        spec = host.scheduler.get(req.instance_id, SURFACE)
        if not await host.scheduler.unload(spec.name):
            raise ModelNotFound(req.instance_id)
        return V1UnloadResponse(instance_id=req.instance_id)

    @post("/chat", status_code=200)
    async def chat(self, request: AnyRequest, host: HostDep, lms: LMSDep) -> Response[Any]:
        _, req = await read_body(request, V1ChatRequest)
        if req.integrations or req.mcp_servers:
            raise NotSupported("MCP integrations are not supported by this server", param="integrations")
        spec = resolve(host, req.model)
        history = None
        if req.previous_response_id:
            history = lms.store.get(req.previous_response_id)
            if history is None:
                raise BadRequest(f"unknown previous_response_id '{req.previous_response_id}'",
                                 param="previous_response_id")
        chat = V1Chat(host, lms, spec, req, messages(req, history))
        if req.stream:
            return Stream(chat.events(), headers=SSE_HEADERS, media_type="text/event-stream")
        return Response(await chat.run(), status_code=200, media_type="application/json")


class V1Chat:
    """One ``/api/v1/chat`` request: the runner is always streamed from; the events or the fold go to the client."""

    def __init__(self, host: Host, lms: SurfaceState, spec: ModelSpec, req: V1ChatRequest,
                 conversation: list[dict[str, Any]]) -> None:
        self.host, self.lms, self.spec, self.req, self.conversation = host, lms, spec, req, conversation
        self.fold = ChatFold(model_instance_id=spec.name)
        self.meter = host.meter(SURFACE, "/api/v1/chat", spec.name, req.stream)
        self.load_params = {"ctx_size": req.context_length} if req.context_length else None
        self.lease: Lease | None = None

    async def _acquire(self) -> Lease:
        self.lease = await self.host.scheduler.acquire(self.spec.name, ttl=self.req.ttl, load_params=self.load_params)
        self.meter.queue_wait = self.lease.queue_wait
        return self.lease

    async def _chunks(self) -> AsyncIterator[dict[str, Any]]:
        assert self.lease is not None
        body = openai_body(self.req, self.conversation, self.spec.name)
        async with await open_or_fail(self.host, self.lease, self.meter, "/v1/chat/completions", body) as up:
            async for chunk in up.iter_sse():
                if chunk.get("choices"):
                    self.meter.first_token()
                self.meter.observe(chunk)
                yield chunk

    def _result(self) -> V1ChatResult:
        lease = self.lease
        response_id = None
        if self.req.store:
            response_id = self.lms.store.put([*self.conversation, self.fold.assistant_turn()])
        return self.fold.result(waited=lease.queue_wait if lease else 0.0,
                                load_seconds=lease.load_seconds if lease else 0.0, response_id=response_id)

    async def run(self) -> V1ChatResult:
        try:
            await self._acquire()
            async for chunk in self._chunks():
                self.fold.feed(chunk)
            self.fold.close()
        except HostError as exc:
            self.meter.finish(exc.status, exc.message)
            raise
        finally:
            if self.lease is not None:
                self.lease.release()
        self.meter.finish(200)
        return self._result()

    async def events(self) -> AsyncIterator[bytes]:
        status, error = 200, None
        instance = {"model_instance_id": self.spec.name}
        try:
            try:
                yield sse.named_event("chat.start", instance)
                loading = self.host.scheduler.status(self.spec.name).state != "loaded"
                if loading:
                    yield sse.named_event("model_load.start", instance)
                    yield sse.named_event("model_load.progress", {**instance, "progress": 0.0})
                lease = await self._acquire()
                if loading or lease.load_seconds > 0:
                    if not loading:
                        yield sse.named_event("model_load.start", instance)
                    yield sse.named_event("model_load.progress", {**instance, "progress": 1.0})
                    yield sse.named_event("model_load.end", {**instance, "load_time_seconds": lease.load_seconds})
                for name, data in self.fold.start():
                    yield sse.named_event(name, data)
                async for chunk in self._chunks():
                    for name, data in self.fold.feed(chunk):
                        yield sse.named_event(name, data)
            except HostError as exc:  # LM Studio reports it as an event, then still ends with the partial result
                status, error = exc.status, exc.message
                yield sse.named_event("error", {"error": stream_error(exc)})
            self._release()
            for name, data in self.fold.close():
                yield sse.named_event(name, data)
            result = msgspec.to_builtins(self._result())
            self.meter.finish(status, error)
            yield sse.named_event("chat.end", {"result": result})
        except BaseException:  # the client went away: leaving `async with` closed the upstream (stops generation)
            status, error = 499, "client disconnected"
            raise
        finally:
            self._release()
            self.meter.finish(status, error)

    def _release(self) -> None:
        if self.lease is not None:
            self.lease.release()


def controllers(state: SurfaceState) -> list[type[Controller]]:
    """The controllers bound to one host's surface state (injected into handlers as ``lms``)."""

    def provide() -> SurfaceState:
        return state

    deps = {"lms": Provide(provide, sync_to_thread=False)}
    return [
        type("LMStudioV0Controller", (LMStudioV0Controller,), {"dependencies": deps}),
        type("LMStudioV1Controller", (LMStudioV1Controller,), {"dependencies": deps}),
    ]
