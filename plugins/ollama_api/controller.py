"""The Ollama REST API (``/api/*``) served from llama-server runners through the host's scheduler and relay."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import msgspec
from litestar import Controller, Request, Response, get, post, route

from llama_host import Host, HostDep, ModelSpec
from llama_host.bodies import decode_json
from llama_host.errors import BadRequest, HostError, UpstreamError
from llama_host.progress import loading_text
from llama_host.request import Exchange, run
from llama_host.variants import for_embeddings

from . import catalog
from . import translate as tr
from .settings import SURFACE, Settings
from .wire import ChatRequest, EmbeddingsRequest, EmbedRequest, GenerateRequest, ShowRequest

if TYPE_CHECKING:
    from llama_host.proxy import Upstream
    from llama_host.scheduler import Lease

log = logging.getLogger("llama_host.ollama_api")

NDJSON = "application/x-ndjson"
_encode = msgspec.json.Encoder().encode
T = TypeVar("T")


def _json(obj: Any, status: int = 200) -> Response:
    return Response(content=_encode(obj), status_code=status, media_type="application/json")


#: options that are counts, with their least values (num_predict -1 and -2, repeat_last_n -1, num_keep -1 mean
#: something, so those are not checked here)
COUNT_OPTIONS = {"options.num_ctx": 0, "options.num_batch": 0, "options.num_thread": 0}


async def _decode(request: Request, kind: type[T]) -> T:
    """The body as ``kind``, with Ollama's messages for a missing body, bad JSON and a missing model."""
    body = await request.body()
    if not body.strip():
        raise BadRequest("missing request body")
    return decode_json(body, kind, minimums=COUNT_OPTIONS)


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
        return _json({"models": [catalog.tag_entry(s, host.scheduler.facts(s.name), size, mtime)
                                      for s, (size, mtime) in zip(specs, facts, strict=True)]})

    @post("/api/show", status_code=200)
    async def api_show(self, request: Request, host: HostDep) -> Response:
        req = await _decode(request, ShowRequest)
        spec = _model_of(host, req.requested)
        ((size, mtime),) = await _files_facts([spec])
        return _json(catalog.show(spec, host.scheduler.facts(spec.name), size=size, mtime=mtime,
                                  verbose=req.verbose))

    @get("/api/ps")
    async def api_ps(self, host: HostDep) -> Response:
        models = host.scheduler.models
        loaded = [st for st in host.scheduler.statuses() if st.state == "loaded" and st.name in models]
        specs = [models[st.name] for st in loaded]
        facts = await _files_facts(specs)
        now = time.time()
        out = []
        for st, spec, (size, mtime) in zip(loaded, specs, facts, strict=True):
            expires = st.expires_at
            if expires is None and st.ttl is not None:  # busy now: it expires ttl after the last request ends
                expires = now + st.ttl
            out.append(catalog.ps_entry(spec, host.scheduler.facts(spec.name), memory=st.memory, expires_at=expires,
                                        size=size, mtime=mtime, scheduling=st.scheduling))
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
        _can_generate(host, spec, req.model, "generate")
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
        _can_generate(host, spec, req.model, "chat")
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

        def shape(reply: dict[str, Any], load_ns: int) -> dict[str, Any]:
            usage = reply.get("usage") or {}
            return {"model": req.model, "embeddings": tr.embeddings_from(reply, req.dimensions),
                    "total_duration": time.monotonic_ns() - started, "load_duration": load_ns,
                    "prompt_eval_count": int(usage.get("prompt_tokens") or 0)}

        return await _embeddings(host, spec, "embed", inputs, ttl, load_params, shape)

    @post("/api/embeddings", status_code=200)
    async def api_embeddings(self, request: Request, host: HostDep) -> Response:
        req = await _decode(request, EmbeddingsRequest)
        spec = _model_of(host, req.model)
        ttl = _ttl(req.keep_alive)
        _, load_params = tr.split_options(req.options)
        def shape(reply: dict[str, Any], load_ns: int) -> dict[str, Any]:
            vectors = tr.embeddings_from(reply)
            return {"embedding": vectors[0] if vectors else []}

        return await _embeddings(host, spec, "embeddings", [req.prompt] if req.prompt else [], ttl, load_params,
                                 shape)

    # pull, push, create, copy, delete and blobs: models_admin.py


def _can_generate(host: Host, spec: ModelSpec, requested: str, what: str) -> None:
    if host.scheduler.facts(spec.name).embedding:
        raise BadRequest(f'"{requested}" does not support {what}: it is an embedding model')


async def _load_or_unload(host: Host, spec: ModelSpec, echo: str, ttl: float | None, load_params: dict[str, Any],
                          *, chat: bool) -> Response:
    """Ollama's empty request: load the model (``keep_alive`` applies), or unload it with ``keep_alive: 0``."""
    if ttl == 0:
        await host.scheduler.unload(spec.name)
        return _json(tr.load_reply(echo, chat=chat, unloaded=True))
    async with host.scheduler.lease(spec.name, ttl=ttl, load_params=load_params):
        pass
    return _json(tr.load_reply(echo, chat=chat, unloaded=False))


async def _embeddings(host: Host, spec: ModelSpec, endpoint: str, inputs: list[str], ttl: float | None,
                      load_params: dict[str, Any], shape: Callable[[dict[str, Any], int], dict[str, Any]]) -> Response:
    """The runner's ``/v1/embeddings`` reply for ``inputs`` shaped by ``shape(reply, load_ns)``; no inputs: just load
    the model. A chat model embeds through its embedding runner (``<name>@embed``), as Ollama embeds with any model."""
    spec = for_embeddings(host.scheduler, spec)
    if not inputs:
        meter = host.meter(SURFACE, endpoint, spec.name)
        try:
            async with host.scheduler.lease(spec.name, ttl=ttl, load_params=load_params) as lease:
                meter.queue_wait = lease.queue_wait
        except HostError as exc:
            meter.finish(exc.status, exc.message)
            raise
        meter.finish(200)
        return _json(shape({"data": []}, int(lease.queue_wait * 1e9)))
    return await run(host, Embeddings(spec.name, endpoint, inputs, ttl, load_params, shape))


class Embeddings(Exchange):
    surface = SURFACE
    path = "/v1/embeddings"

    def __init__(self, model: str, endpoint: str, inputs: list[str], ttl: float | None, load_params: dict[str, Any],
                 shape: Callable[[dict[str, Any], int], dict[str, Any]]) -> None:
        self.model, self.endpoint, self.ttl, self.load_params = model, endpoint, ttl, load_params
        self._inputs, self._shape, self._load_ns = inputs, shape, 0

    def body(self) -> dict[str, Any]:
        return {"model": self.model, "input": self._inputs, "encoding_format": "float"}

    def upstream_error(self, status: int, payload: Any) -> HostError:
        if status == 501:  # llama-server answers embeddings only when started for them
            return BadRequest(f"model '{self.model}' is not served for embeddings: give it 'params: {{embeddings: "
                              f"true, pooling: mean}}' in the site file ({UpstreamError(payload).message})")
        return UpstreamError(payload, status)

    def begin(self, lease: Lease) -> bytes:
        self._load_ns = int(lease.queue_wait * 1e9)
        return b""

    def reply(self, reply: Any, up: Upstream) -> bytes:
        return _encode(self._shape(reply if isinstance(reply, dict) else {}, self._load_ns))


class Generation(Exchange):
    """A chat or generate request: OpenAI chunks from the runner become Ollama NDJSON lines as they arrive."""

    surface = SURFACE
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def __init__(self, model: str, echo: str, endpoint: str, path: str, body: dict[str, Any], ttl: float | None,
                 load_params: dict[str, Any], started: int, *,
                 stream_type: type[tr.ChatStream] | type[tr.GenerateStream],
                 reply: Callable[..., dict[str, Any]]) -> None:
        self.model, self.endpoint, self.path, self._body = model, endpoint, path, body
        self.ttl, self.load_params, self.stream = ttl, load_params, bool(body.get("stream"))
        self.media_type = NDJSON if self.stream else "application/json"
        self._echo, self._started, self._reply = echo, started, reply
        self._translator = stream_type(echo, started, 0)
        self._feed = self._translator.feed

    def events(self, events: list[Any]) -> bytes:
        stamp = tr.created_at()  # one reading for the events that arrived together
        feed = self._feed
        return b"".join([feed(event, stamp) for event in events])

    def body(self) -> dict[str, Any]:
        return self._body

    def begin(self, lease: Lease) -> bytes:
        self._translator.load_ns = int(lease.queue_wait * 1e9)
        return b""

    def end(self) -> bytes:
        return self._translator.finish()

    def reply(self, reply: Any, up: Upstream) -> bytes:
        out = self._reply(reply, self._echo, started_ns=self._started, load_ns=self._translator.load_ns)
        return tr.ndjson(out) if self.stream else _encode(out)  # a streaming client still gets NDJSON

    def error(self, exc: HostError) -> bytes:
        return tr.error_line(exc.detail())

    def loading(self, seconds: float, last_load: float | None) -> bytes:
        """While the model loads: a line with empty content and ``done: false`` (clients append nothing; no
        ``status`` key, which ollama clients read as a pull progress); the text is in its ``loading`` key."""
        line: dict[str, Any] = {"model": self._echo, "created_at": tr.created_at()}
        line.update({"message": {"role": "assistant", "content": ""}} if self.endpoint == "chat" else {"response": ""})
        line.update(done=False, loading=loading_text(self.model, seconds, last_load))
        return tr.ndjson(line)


async def _complete(host: Host, spec: ModelSpec, echo: str, endpoint: str, path: str, body: dict[str, Any],
                    ttl: float | None, load_params: dict[str, Any], started: int, *,
                    stream_type: type[tr.ChatStream] | type[tr.GenerateStream],
                    reply: Callable[..., dict[str, Any]]) -> Response:
    """Run one generation on the model's runner; a streamed reply is translated chunk by chunk as it arrives."""
    return await run(host, Generation(spec.name, echo, endpoint, path, body, ttl, load_params, started,
                                      stream_type=stream_type, reply=reply))
