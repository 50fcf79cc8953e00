"""LM Studio's native REST API v1: models with their loaded instances, load, unload, and ``/api/v1/chat``."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import msgspec
from litestar import Controller, Response, get, post

from llama_host import Host
from llama_host.errors import BadRequest, HostError
from llama_host.host import HostDep
from llama_host.request import Exchange, run
from llama_host.scheduler import Lease
from llama_host.types import ModelSpec

from . import describe, sse
from .dialect import NotLoaded, NotSupported, stream_error
from .exchange import SURFACE, AnyRequest, read_body, resolve
from .state import LMSDep, SurfaceState
from .v1chat import ChatFold, messages, openai_body
from .wire import (
    V1ChatRequest,
    V1ChatResult,
    V1InstanceConfig,
    V1LoadRequest,
    V1LoadResponse,
    V1ModelList,
    V1UnloadRequest,
    V1UnloadResponse,
)


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
            out.append(describe.v1_model(spec, status, host.scheduler.facts(spec.name),
                                         default_publisher=lms.settings.default_publisher, size_bytes=size))
        return V1ModelList(models=out)

    @post("/models/load", status_code=200)
    async def load(self, request: AnyRequest, host: HostDep, lms: LMSDep) -> V1LoadResponse:
        _, req = await read_body(request, V1LoadRequest)
        spec = resolve(host, req.model)
        context = req.context_length or (req.config.context_length if req.config else None)
        load_params = {"ctx_size": context} if context else None
        lease = await host.scheduler.acquire(spec.name, ttl=req.ttl, load_params=load_params)
        lease.release()
        running = host.scheduler.facts(spec.name)
        reply = V1LoadResponse(type=describe.v1_type(running), instance_id=spec.name,
                               load_time_seconds=lease.load_seconds)
        if req.echo_load_config:
            reply.load_config = V1InstanceConfig(context_length=describe.loaded_context(running))
        return reply

    @post("/models/unload", status_code=200)
    async def unload(self, request: AnyRequest, host: HostDep) -> V1UnloadResponse:
        _, req = await read_body(request, V1UnloadRequest)
        spec = host.scheduler.get(req.instance_id, SURFACE)
        if not await host.scheduler.unload(spec.name):
            raise NotLoaded(req.instance_id)
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
        return await run(host, V1Chat(host, lms, spec, req, messages(req, history)))


class V1Chat(Exchange):
    """One ``/api/v1/chat`` request: the runner is always streamed from; its chunks are folded into LM Studio's
    events (a streaming client) or into the result (a non-streaming one)."""

    surface = SURFACE
    endpoint = "/api/v1/chat"

    def __init__(self, host: Host, lms: SurfaceState, spec: ModelSpec, req: V1ChatRequest,
                 conversation: list[dict[str, Any]]) -> None:
        self.host, self.lms, self.spec, self.req, self.conversation = host, lms, spec, req, conversation
        self.model, self.stream, self.ttl = spec.name, bool(req.stream), req.ttl
        self.media_type = "text/event-stream" if self.stream else "application/json"
        self.load_params = {"ctx_size": req.context_length} if req.context_length else None
        self.fold = ChatFold(model_instance_id=spec.name)
        self.instance = {"model_instance_id": spec.name}
        self.lease: Lease | None = None
        self.loading = False

    def body(self) -> dict[str, Any]:
        return openai_body(self.req, self.conversation, self.spec.name)

    def opening(self) -> bytes:
        out = sse.named_event("chat.start", self.instance)
        self.loading = self.host.scheduler.status(self.spec.name).state != "loaded"
        if self.loading:
            out += sse.named_event("model_load.start", self.instance)
            out += sse.named_event("model_load.progress", {**self.instance, "progress": 0.0})
        return out

    def begin(self, lease: Lease) -> bytes:
        self.lease = lease
        if not self.stream:
            return b""
        out = b""
        if self.loading or lease.load_seconds > 0:
            if not self.loading:
                out += sse.named_event("model_load.start", self.instance)
            out += sse.named_event("model_load.progress", {**self.instance, "progress": 1.0})
            out += sse.named_event("model_load.end", {**self.instance, "load_time_seconds": lease.load_seconds})
        return out + _named(self.fold.start())

    def event(self, chunk: Any) -> bytes:
        events = self.fold.feed(chunk)
        return _named(events) if self.stream else b""

    def end(self) -> bytes:
        closing = self.fold.close()
        result = self._result()
        if not self.stream:
            return _encode(result)
        return _named(closing) + sse.named_event("chat.end", {"result": msgspec.to_builtins(result)})

    def error(self, exc: HostError) -> bytes:
        """LM Studio reports it as an event, then still ends with the partial result."""
        return sse.named_event("error", {"error": stream_error(exc)}) + self.end()

    def _result(self) -> V1ChatResult:
        lease = self.lease
        response_id = None
        if self.req.store:
            response_id = self.lms.store.put([*self.conversation, self.fold.assistant_turn()])
        return self.fold.result(waited=lease.queue_wait if lease else 0.0,
                                load_seconds=lease.load_seconds if lease else 0.0, response_id=response_id)


def _named(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join([sse.named_event(name, data) for name, data in events])


_encode = msgspec.json.Encoder().encode


def model_size(spec: ModelSpec) -> int | None:
    if spec.metadata.get("size") or not spec.path:
        return None
    try:
        return os.stat(os.path.expanduser(spec.path)).st_size
    except OSError:
        return None
