"""The Ollama REST API (``/api/*``) served from llama-server runners through the host's scheduler and relay."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post, route
from litestar.response import Stream

from llama_host import Host, HostDep, ModelSpec
from llama_host.bodies import decode_json
from llama_host.errors import BadRequest, HostError, UpstreamError
from llama_host.proxy import end_request

from . import catalog
from . import translate as tr
from .settings import SURFACE, Settings
from .sse import sse_batches
from .wire import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, ShowRequest

if TYPE_CHECKING:
    from llama_host.proxy import RequestMeter, Upstream
    from llama_host.scheduler import Lease

log = logging.getLogger("llama_host.ollama_api")

NDJSON = "application/x-ndjson"
_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=_encode(obj), status_code=status, media_type="application/json")


async def _decode(request: Request, kind: type[T]) -> T:
    """The body as ``kind``, with Ollama's messages for a missing body, bad JSON and a missing model."""
    body = await request.body()
    if not body.strip():
        raise BadRequest("missing request body")
    return decode_json(body, kind)


def _model_of(host: Host, requested: str) -> ModelSpec:
    if not requested:
        raise BadRequest("model is required")
    return host.scheduler.get(requested, SURFACE)


def _ttl(keep_alive: float | str | None) -> float | None:
    try:
        return tr.keep_alive_ttl(keep_alive)
    except tr.BadKeepAlive as exc:
        raise BadRequest(str(exc)) from None


def _file_facts(spec: ModelSpec) -> tuple[int, float]:
    """(size, mtime) of the model file: from discovery metadata, else ``stat`` (call in a thread)."""
    meta = spec.metadata or {}
    size, mtime = meta.get("size") or meta.get("file_size"), meta.get("mtime")
    if isinstance(size, int) and isinstance(mtime, (int, float)):
        return size, float(mtime)
    try:
        st = os.stat(os.path.expanduser(spec.path)) if spec.path else None
    except OSError:
        st = None
    return (st.st_size, st.st_mtime) if st else (int(size or 0), float(mtime or 0.0))


async def _files_facts(specs: list[ModelSpec]) -> list[tuple[int, float]]:
    return await asyncio.to_thread(lambda: [_file_facts(s) for s in specs])


class OllamaController(Controller):
    path = "/"
    tags = ["ollama"]

    # --- meta ----------------------------------------------------------------------------------------------------

    # The liveness answers stay public under API keys: clients and proxies probe them before sending a key.
    @route("/", http_method=["GET", "HEAD"], media_type="text/plain", sync_to_thread=False, opt={"public": True})
    def api_root(self) -> str:
        return "Ollama is running"

    @route("/api/version", http_method=["GET", "HEAD"], sync_to_thread=False, opt={"public": True})
    def api_version(self, host: HostDep) -> Response:
        return _json({"version": host.settings(SURFACE, Settings).version})

    @route("/api/tags", http_method=["GET", "HEAD"])
    async def api_tags(self, host: HostDep) -> Response:
        specs = [s for s in host.scheduler.models.values() if not s.unlisted and not s.missing]
        specs.sort(key=lambda s: s.name)
        facts = await _files_facts(specs)
        return _json({"models": [catalog.tag_entry(s, size, mtime) for s, (size, mtime) in zip(specs, facts)]})

    @post("/api/show", status_code=200)
    async def api_show(self, request: Request, host: HostDep) -> Response:
        req = await _decode(request, ShowRequest)
        spec = _model_of(host, req.requested)
        ((size, mtime),) = await _files_facts([spec])
        return _json(catalog.show(spec, size=size, mtime=mtime, verbose=req.verbose))

    @get("/api/ps")
    async def api_ps(self, host: HostDep) -> Response:
        models = host.scheduler.models
        loaded = [st for st in host.scheduler.statuses() if st.state == "loaded" and st.name in models]
        specs = [models[st.name] for st in loaded]
        facts = await _files_facts(specs)
        now = time.time()
        out = []
        for st, spec, (size, mtime) in zip(loaded, specs, facts):
            expires = st.expires_at
            if expires is None and st.ttl is not None:  # busy now: it expires ttl after the last request ends
                expires = now + st.ttl
            out.append(catalog.ps_entry(spec, memory=st.memory, expires_at=expires, size=size, mtime=mtime))
        return _json({"models": out})

    # --- generation ----------------------------------------------------------------------------------------------

    @post("/api/generate", status_code=200)
    async def api_generate(self, request: Request, host: HostDep) -> Response:
        started = time.monotonic_ns()
        req = await _decode(request, GenerateRequest)
        spec = _model_of(host, req.model)
        ttl = _ttl(req.keep_alive)
        sampling, load_params = tr.split_options(req.options)
        if not req.prompt and not req.system and not req.images and not req.suffix:
            return await _load_or_unload(host, spec, req.model, ttl, load_params, chat=False)
        _can_generate(spec, req.model, "generate")
        try:
            path, body = tr.generate_request(req, spec.name, sampling, stream=req.stream is not False)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return await _complete(host, spec, req.model, "generate", path, body, ttl, load_params, started,
                               stream_type=tr.GenerateStream, reply=tr.generate_reply)

    @post("/api/chat", status_code=200)
    async def api_chat(self, request: Request, host: HostDep) -> Response:
        started = time.monotonic_ns()
        req = await _decode(request, ChatRequest)
        spec = _model_of(host, req.model)
        ttl = _ttl(req.keep_alive)
        sampling, load_params = tr.split_options(req.options)
        if not req.messages:
            return await _load_or_unload(host, spec, req.model, ttl, load_params, chat=True)
        _can_generate(spec, req.model, "chat")
        try:
            body = tr.chat_body(req, spec.name, sampling, stream=req.stream is not False)
        except ValueError as exc:
            raise BadRequest(str(exc)) from None
        return await _complete(host, spec, req.model, "chat", "/v1/chat/completions", body, ttl, load_params,
                               started, stream_type=tr.ChatStream, reply=tr.chat_reply)

    # --- embeddings ----------------------------------------------------------------------------------------------

    @post("/api/embed", status_code=200)
    async def api_embed(self, request: Request, host: HostDep) -> Response:
        started = time.monotonic_ns()
        req = await _decode(request, EmbedRequest)
        spec = _model_of(host, req.model)
        ttl = _ttl(req.keep_alive)
        _, load_params = tr.split_options(req.options)
        inputs = tr.embed_inputs(req.input)
        reply, load_ns = await _embeddings(host, spec, "embed", inputs, ttl, load_params)
        usage = reply.get("usage") or {}
        return _json({
            "model": req.model, "embeddings": tr.embeddings_from(reply, req.dimensions),
            "total_duration": time.monotonic_ns() - started, "load_duration": load_ns,
            "prompt_eval_count": int(usage.get("prompt_tokens") or 0),
        })

    @post("/api/embeddings", status_code=200)
    async def api_embeddings(self, request: Request, host: HostDep) -> Response:
        req = await _decode(request, EmbeddingsRequest)
        spec = _model_of(host, req.model)
        ttl = _ttl(req.keep_alive)
        _, load_params = tr.split_options(req.options)
        reply, _ = await _embeddings(host, spec, "embeddings", [req.prompt] if req.prompt else [], ttl, load_params)
        vectors = tr.embeddings_from(reply)
        return _json({"embedding": vectors[0] if vectors else []})

    # pull, push, create, copy, delete and blobs: models_admin.py


def _runner_params(spec: ModelSpec, load_params: dict[str, Any]) -> dict[str, Any] | None:
    """Load-time options are llama-server flags: other runtimes (a remote server, a command) are left alone."""
    return load_params if load_params and spec.runtime == "llama-server" else None


def _can_generate(spec: ModelSpec, requested: str, what: str) -> None:
    if catalog.is_embedding(spec):
        raise BadRequest(f'"{requested}" does not support {what}: it is an embedding model')


async def _load_or_unload(host: Host, spec: ModelSpec, echo: str, ttl: float | None, load_params: dict[str, Any],
                          *, chat: bool) -> Response:
    """Ollama's empty request: load the model (``keep_alive`` applies), or unload it with ``keep_alive: 0``."""
    if ttl == 0:
        await host.scheduler.unload(spec.name)
        return _json(tr.load_reply(echo, chat=chat, unloaded=True))
    async with host.scheduler.lease(spec.name, ttl=ttl, load_params=_runner_params(spec, load_params)):
        pass
    return _json(tr.load_reply(echo, chat=chat, unloaded=False))


async def _embeddings(host: Host, spec: ModelSpec, endpoint: str, inputs: list[str], ttl: float | None,
                      load_params: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """The runner's ``/v1/embeddings`` reply for ``inputs`` (none: just load the model) and the load wait in ns."""
    meter = host.meter(SURFACE, endpoint, spec.name)
    try:
        async with host.scheduler.lease(spec.name, ttl=ttl, load_params=_runner_params(spec, load_params)) as lease:
            meter.queue_wait = lease.queue_wait
            load_ns = int(lease.queue_wait * 1e9)
            if not inputs:
                meter.finish(200)
                return {"data": []}, load_ns
            async with await host.relay.open(lease, "POST", "/v1/embeddings",
                                             json={"model": spec.name, "input": inputs,
                                                   "encoding_format": "float"}) as up:
                reply = await up.json()
                if up.status == 501:  # llama-server answers embeddings only when started for them
                    raise BadRequest(
                        f"model '{spec.name}' is not served for embeddings: give it 'params: {{embeddings: true, "
                        f"pooling: mean}}' in the site file ({UpstreamError(reply).message})")
                if up.status >= 400:
                    raise UpstreamError(reply, up.status)
    except HostError as exc:
        meter.finish(exc.status, exc.message)
        raise
    meter.first_token()
    meter.observe(reply)
    meter.finish(200)
    return reply, load_ns


async def _complete(host: Host, spec: ModelSpec, echo: str, endpoint: str, path: str, body: dict[str, Any],
                    ttl: float | None, load_params: dict[str, Any], started: int, *,
                    stream_type: type[tr.ChatStream] | type[tr.GenerateStream],
                    reply: Callable[..., dict[str, Any]]) -> Response:
    """Run one generation on the model's runner; a streamed reply is translated chunk by chunk as it arrives."""
    stream = bool(body.get("stream"))
    meter = host.meter(SURFACE, endpoint, spec.name, stream)
    try:
        lease = await host.scheduler.acquire(spec.name, ttl=ttl, load_params=_runner_params(spec, load_params))
    except HostError as exc:
        meter.finish(exc.status, exc.message)
        raise
    meter.queue_wait = lease.queue_wait
    load_ns = int(lease.queue_wait * 1e9)
    try:
        up = await host.relay.open(lease, "POST", path, json=body)
    except HostError as exc:
        lease.release()
        meter.finish(exc.status, exc.message)
        raise
    if not stream or up.status >= 400 or not up.is_sse:
        try:
            data = await up.json()
            if up.status >= 400:
                raise UpstreamError(data, up.status)
        except HostError as exc:
            meter.finish(exc.status, exc.message)
            raise
        finally:
            up.close()
            lease.release()
        meter.first_token()
        meter.observe(data)
        meter.finish(200)
        out = reply(data, echo, started_ns=started, load_ns=load_ns)
        if stream:  # the runner answered in one piece: still one NDJSON line for a streaming client
            return Response(content=tr.ndjson(out), media_type=NDJSON)
        return _json(out)
    return Stream(_relay(up, lease, meter, stream_type(echo, started, load_ns)), media_type=NDJSON,
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _relay(up: Upstream, lease: Lease, meter: RequestMeter,
                 translator: tr.ChatStream | tr.GenerateStream) -> AsyncIterator[bytes]:
    """Translate the runner's stream as it arrives; the lease and the upstream end with the stream (or the client)."""
    status, error = 200, None
    try:
        feed = translator.feed
        async for events in sse_batches(up):
            stamp = tr.created_at()
            out = b"".join([feed(event, stamp) for event in events])
            if out:
                if meter.ttft is None:
                    meter.first_token()
                yield out
        meter.observe({"usage": translator.usage, "timings": translator.timings,
                       "choices": [{"finish_reason": translator.finish_reason}]})
        yield translator.finish()
    except HostError as exc:
        status, error = exc.status, exc.message
        yield tr.error_line(exc.detail())
    except msgspec.DecodeError as exc:
        status, error = 502, f"bad reply from the runner: {exc}"
        yield tr.error_line(error)
    except BaseException:  # the client went away: closing the upstream below stops generation
        status, error = 499, "client disconnected"
        raise
    finally:
        end_request(up, lease, meter, status, error)
