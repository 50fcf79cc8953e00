"""LM Studio's v1 download endpoints, backed by the core's download manager (``host.managed``).

``POST /api/v1/models/download`` ``{model, quantization?}`` (``model``: ``user/repo``, ``hf.co/user/repo`` or a
``https://huggingface.co/user/repo`` link) starts a detached download and answers ``{job_id, status, total_size_bytes,
started_at}`` (or ``{"status": "already_downloaded"}``); ``GET /api/v1/models/download/status/{job_id}`` answers
``{job_id, status: downloading|completed|failed, total_size_bytes, downloaded_bytes, started_at, completed_at?,
bytes_per_second?, estimated_completion?}``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import msgspec
from litestar import Controller, get, post
from litestar.params import FromPath

from llama_host.downloads import Job
from llama_host.errors import BadRequest, HostError
from llama_host.host import HostDep
from llama_host.hub import parse_ref

from .exchange import SURFACE, AnyRequest, read_body


class DownloadRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    quantization: str | None = None


class JobNotFound(HostError):
    status, code, type = 404, "not_found", "invalid_request_error"


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_status(job: Job) -> dict[str, Any]:
    snap = job.snapshot()
    status = {"success": "completed", "error": "failed", "cancelled": "failed"}.get(snap["status"], "downloading")
    out: dict[str, Any] = {"job_id": job.id, "status": status, "total_size_bytes": snap["total"],
                           "downloaded_bytes": snap["completed"], "started_at": _iso(snap["started_at"])}
    if status == "downloading":
        rate = snap["bytes_per_second"]
        out["bytes_per_second"] = rate
        if rate > 0 and snap["total"]:
            out["estimated_completion"] = _iso(dt.datetime.now(dt.UTC).timestamp()
                                               + (snap["total"] - snap["completed"]) / rate)
    elif status == "completed":
        out["completed_at"] = _iso(snap["finished_at"])
    else:
        out["error"] = snap["error"]
    return out


class LMStudioDownloadsController(Controller):
    path = "/api/v1/models/download"
    tags = ["lmstudio"]

    @post("/", status_code=200)
    async def download(self, request: AnyRequest, host: HostDep) -> dict[str, Any]:
        _, req = await read_body(request, DownloadRequest)
        if not req.model:
            raise BadRequest("'model' is required", param="model")
        name = req.model
        if req.quantization:
            if ":" in name.rsplit("/", 1)[-1]:
                raise BadRequest("give the quantization either in 'model' or in 'quantization'", param="quantization")
            name = f"{name}:{req.quantization}"
        ref = parse_ref(name)
        present = host.scheduler.resolve(ref.name, SURFACE)
        if present is not None and not present.missing:
            return {"status": "already_downloaded"}
        job = host.managed.pull(ref, detached=True)  # clients poll the status: no listener keeps it alive
        async with asyncio.timeout(60):
            async for snap in job.follow():  # until the files are known (or the hub said no)
                if snap["status"] != "resolving":
                    break
        if job.status in ("error", "cancelled") and job.error is not None and job.error.status < 500:
            raise job.error
        out = job_status(job)
        out.pop("downloaded_bytes", None)
        return out

    @get("/status/{job_id:str}", sync_to_thread=False)
    def status(self, host: HostDep, job_id: FromPath[str]) -> dict[str, Any]:
        job = host.managed.downloads.get(job_id)
        if job is None:
            raise JobNotFound(f"no download job '{job_id}'")
        return job_status(job)
