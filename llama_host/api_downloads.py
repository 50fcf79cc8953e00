"""Main-port routes for the managed folder: downloads with progress as server-sent events, and model deletion.

``POST /api/v1/models/download`` ``{"model": "hf.co/user/repo:Q4_K_M", "stream": true, "detached": false}`` answers
with ``text/event-stream``: one ``data:`` event per progress snapshot (``status``, ``total``, ``completed``, ``files``
with bytes per file), the last one ``success`` / ``error`` / ``cancelled``. Closing the stream cancels the download
unless another client follows it or it was started ``detached``. ``stream: false`` waits and answers the final
snapshot. ``GET /api/v1/downloads`` lists this run's jobs, ``GET /api/v1/downloads/{id}`` is one,
``GET /api/v1/downloads/{id}/events`` follows one, ``DELETE /api/v1/downloads/{id}`` cancels it.
``POST /api/v1/models/delete`` ``{"model": name}`` removes a variant or a model file of the managed folder.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Request, Response, delete, get, post
from litestar.params import FromPath
from litestar.response import Stream

from llama_host.bodies import decode_json
from llama_host.downloads import Job
from llama_host.errors import BadRequest, HostError
from llama_host.host import HostDep
from llama_host.proxy import SSE_HEADERS

_encode = msgspec.json.Encoder().encode


class DownloadRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    stream: bool = True
    detached: bool = False


class JobNotFound(HostError):
    status, code, type = 404, "download_not_found", "invalid_request_error"


async def sse(job: Job) -> AsyncIterator[bytes]:
    async for snap in job.follow():
        yield b"data: " + _encode(snap) + b"\n\n"


def _job(host: HostDep, job_id: str) -> Job:
    job = host.managed.downloads.get(job_id)
    if job is None:
        raise JobNotFound(f"no download '{job_id}'")
    return job


class DownloadsController(Controller):
    path = "/api/v1"
    tags = ["downloads"]

    @post("/models/download", status_code=200)
    async def download(self, request: Request[Any, Any, Any], host: HostDep) -> Response[Any]:
        """Pull a GGUF model from the Hugging Face Hub (HF_ENDPOINT, HF_TOKEN) into the managed folder."""
        req = decode_json(await request.body(), DownloadRequest)
        if not req.model:
            raise BadRequest("'model' is required (hf.co/{user}/{repo}:{quant})", param="model")
        job = host.managed.pull(req.model, detached=req.detached)
        if req.stream:
            return Stream(sse(job), media_type="text/event-stream", headers=SSE_HEADERS)
        if req.detached:
            return Response(job.snapshot(), status_code=202)
        final = await job.wait()
        if job.error is not None:
            raise job.error
        return Response(final, status_code=200)

    @get("/downloads", sync_to_thread=False)
    def downloads(self, host: HostDep) -> dict[str, Any]:
        return {"downloads": [j.snapshot() for j in host.managed.downloads.jobs.values()]}

    @get("/downloads/{job_id:str}", sync_to_thread=False)
    def download_status(self, host: HostDep, job_id: FromPath[str]) -> dict[str, Any]:
        return _job(host, job_id).snapshot()

    @get("/downloads/{job_id:str}/events", sync_to_thread=False)
    def download_events(self, host: HostDep, job_id: FromPath[str]) -> Stream:
        return Stream(sse(_job(host, job_id)), media_type="text/event-stream", headers=SSE_HEADERS)

    @delete("/downloads/{job_id:str}", status_code=200, sync_to_thread=False)
    def cancel_download(self, host: HostDep, job_id: FromPath[str]) -> dict[str, Any]:
        job = _job(host, job_id)
        job.cancel("cancelled by a client")
        return job.snapshot()

    @post("/models/delete", status_code=200)
    async def delete_model(self, request: Request[Any, Any, Any], host: HostDep) -> dict[str, Any]:
        """Remove a variant, or a model whose files are in the managed folder (only there): ``{"model": name}``."""
        req = decode_json(await request.body(), DownloadRequest)
        if not req.model:
            raise BadRequest("'model' is required", param="model")
        removed = await host.managed.delete(req.model)
        return {"model": req.model, "deleted": True, "files": removed}
