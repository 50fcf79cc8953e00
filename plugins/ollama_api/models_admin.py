"""Ollama's model management: ``pull`` (from the Hugging Face Hub), ``create``, ``copy``, ``delete``, blobs; ``push``
stays a clear 501. The work is the core's (``host.managed``); this module speaks Ollama's dialect.

``pull`` streams Ollama's progress lines: ``pulling manifest``, ``pulling <digest12>`` with ``digest``/``total``/
``completed`` per file, ``verifying sha256 digest``, ``writing manifest``, ``success`` (or an ``{"error"}`` line).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, Response, head, post, route
from litestar.params import FromPath
from litestar.response import Stream

from llama_host import HostDep
from llama_host.bodies import decode_json
from llama_host.downloads import Job
from llama_host.errors import BadRequest, HostError
from llama_host.hub import parse_ref

from .settings import SURFACE

NDJSON = "application/x-ndjson"
_encode = msgspec.json.Encoder().encode


class NotSupported(HostError):
    status, code, type = 501, "not_supported", "invalid_request_error"


class PullRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    name: str = ""  # deprecated alias of model
    stream: bool | None = None
    insecure: bool = False


class CreateRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    name: str = ""
    from_: str | None = msgspec.field(default=None, name="from")
    files: dict[str, str] | None = None
    adapters: dict[str, str] | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] | None = None
    messages: list[Any] | None = None
    quantize: str | None = None
    license: str | list[str] | None = None
    modelfile: str | None = None
    stream: bool | None = None


class CopyRequest(msgspec.Struct, kw_only=True):
    source: str = ""
    destination: str = ""


class DeleteRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    name: str = ""


def _line(obj: dict[str, Any]) -> bytes:
    return _encode(obj) + b"\n"


async def pull_lines(job: Job) -> AsyncIterator[bytes]:
    """The job's snapshots as Ollama's pull progress lines (a line per file whose byte count moved)."""
    yield _line({"status": "pulling manifest"})
    sent: dict[str, int] = {}
    verifying = writing = False
    async for snap in job.follow():
        for f in snap["files"]:
            if sent.get(f["digest"]) != f["completed"] or f["digest"] not in sent:
                sent[f["digest"]] = f["completed"]
                digest = f["digest"]
                yield _line({"status": f"pulling {digest.split(':', 1)[1][:12]}", "digest": digest,
                             "total": f["total"], "completed": f["completed"]})
        status = snap["status"]
        if status in ("verifying", "installing", "success") and not verifying:
            verifying = True
            yield _line({"status": "verifying sha256 digest"})
        if status in ("installing", "success") and not writing:
            writing = True
            yield _line({"status": "writing manifest"})
        if status == "success":
            yield _line({"status": "success"})
        elif snap["status"] in ("error", "cancelled"):
            yield _line({"error": snap["error"] or snap["status"]})


async def _body(request: Request[Any, Any, Any], kind: type[Any]) -> Any:
    return decode_json(await request.body(), kind)


class OllamaModelsController(Controller):
    path = "/"
    tags = ["ollama"]

    @post("/api/pull", status_code=200)
    async def api_pull(self, request: Request[Any, Any, Any], host: HostDep) -> Response[Any]:
        req = await _body(request, PullRequest)
        name = req.model or req.name
        if not name:
            raise BadRequest("model is required")
        stream = req.stream is not False
        present = host.scheduler.resolve(name, SURFACE)
        if present is not None and not present.missing:  # already here (configured, discovered or pulled)
            done = _line({"status": "success"})
            return Response(done, media_type=NDJSON) if stream else Response({"status": "success"})
        parse_ref(name)  # a bad name is a 400 before anything starts
        job = host.managed.pull(name)
        if stream:
            return Stream(pull_lines(job), media_type=NDJSON, headers={"Cache-Control": "no-cache",
                                                                        "X-Accel-Buffering": "no"})
        await job.wait()
        if job.error is not None:
            raise job.error
        return Response({"status": "success"})

    @post("/api/push", status_code=200)
    async def api_push(self, host: HostDep) -> Response[Any]:
        raise NotSupported("llama-host does not push models (pull them from Hugging Face: hf.co/{user}/{repo}:{quant})")

    @head("/api/blobs/{digest:str}", status_code=200)
    async def api_blob_exists(self, host: HostDep, digest: FromPath[str]) -> Response[None]:
        return Response(None, status_code=200 if await host.managed.has_blob(digest) else 404)

    @post("/api/blobs/{digest:str}", status_code=201, request_max_body_size=None)
    async def api_blob_upload(self, request: Request[Any, Any, Any], host: HostDep,
                              digest: FromPath[str]) -> Response[Any]:
        """Store an upload (streamed to disk as it arrives) under its sha256, checked against ``digest``."""
        if await host.managed.has_blob(digest):
            return Response(b"", status_code=200)
        await host.managed.store_blob(digest, request.stream())
        return Response(b"", status_code=201)

    @post("/api/create", status_code=200)
    async def api_create(self, request: Request[Any, Any, Any], host: HostDep) -> Response[Any]:
        req = await _body(request, CreateRequest)
        name = req.model or req.name
        if not name:
            raise BadRequest("model is required")
        if req.modelfile:
            raise BadRequest("the 'modelfile' field is no longer supported: send from, files, system, template and "
                             "parameters (as ollama >= 0.5 does)")
        if req.quantize or req.adapters or req.messages:
            what = "quantize" if req.quantize else "adapters" if req.adapters else "messages"
            raise NotSupported(f"llama-host does not support '{what}' in create")
        blob = None
        if req.files:
            ggufs = [d for f, d in req.files.items() if f.lower().endswith(".gguf")] or list(req.files.values())
            if len(ggufs) != 1:
                raise BadRequest("create takes one GGUF file (split models: pull them from Hugging Face)")
            blob = ggufs[0]
        parameters = dict(req.parameters or {})
        spec = await host.managed.create(name, source=req.from_, blob=blob, system=req.system,
                                         template=req.template, parameters=parameters)
        lines = [{"status": "using existing layer" if blob else f"using model {req.from_}"},
                 {"status": "writing manifest"}, {"status": "success"}]
        if req.stream is False:
            return Response({"status": "success", "model": spec.name})
        return Response(b"".join(_line(x) for x in lines), media_type=NDJSON)

    @post("/api/copy", status_code=200)
    async def api_copy(self, request: Request[Any, Any, Any], host: HostDep) -> Response[Any]:
        req = await _body(request, CopyRequest)
        if not req.source or not req.destination:
            raise BadRequest("source and destination are required")
        await host.managed.copy(req.source, req.destination)
        return Response(b"", status_code=200)

    @route("/api/delete", http_method=["DELETE", "POST"], status_code=200)
    async def api_delete(self, request: Request[Any, Any, Any], host: HostDep) -> Response[Any]:
        req = await _body(request, DeleteRequest)
        name = req.model or req.name
        if not name:
            raise BadRequest("model is required")
        await host.managed.delete(name)
        return Response(b"", status_code=200)
