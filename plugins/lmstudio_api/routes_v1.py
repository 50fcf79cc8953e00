"""LM Studio's native REST API v1: models with their loaded instances, load, unload, and ``/api/v1/chat``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.response import Stream

from llama_host import Host
from llama_host.errors import BadRequest, HostError
from llama_host.host import HostDep
from llama_host.proxy import SSE_HEADERS
from llama_host.scheduler import Lease
from llama_host.types import ModelSpec

from . import describe, sse
from .dialect import NotLoaded, NotSupported, stream_error
from .exchange import SURFACE, AnyRequest, open_or_fail, read_body, resolve
from .state import LMSDep, SurfaceState, runner_facts
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
        async with await open_or_fail(self.host, self.lease, "/v1/chat/completions", body) as up:
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
        except BaseException:
            self.meter.finish(499, "client disconnected")
            raise
        finally:
            self._release()
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
            self._release()  # the runner is done: free the model before the closing events
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


def model_size(spec: ModelSpec) -> int | None:
    if spec.metadata.get("size") or not spec.path:
        return None
    try:
        return os.stat(os.path.expanduser(spec.path)).st_size
    except OSError:
        return None
