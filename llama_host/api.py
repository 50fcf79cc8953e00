"""The management API on the main port: health, status, config, models (load, unload, logs)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from llama_host import __version__
from llama_host.host import HostDep
from llama_host.openai_errors import OPENAI_EXCEPTION_HANDLERS
from llama_host.proxy import SSE_HEADERS
from llama_host.types import ModelStatus, Surface


class ManagementController(Controller):
    path = "/api/v1"
    tags = ["management"]

    @get("/health", opt={"public": True}, sync_to_thread=False)
    def health(self, host: HostDep) -> dict[str, Any]:
        return {"status": "ok", "version": __version__, "uptime": round(time.time() - host.started_at, 3)}

    @get("/status", sync_to_thread=False)
    def status(self, host: HostDep) -> dict[str, Any]:
        return {
            "version": __version__,
            "uptime": round(time.time() - host.started_at, 3),
            "plugins": host.plugin_states(),
            "listeners": [{"host": host.site.host, "port": port, "surfaces": [s.name for s in group]}
                          for port, group in host.listeners().items()],
            "models": [{"name": s.name, "state": s.state} for s in host.scheduler.statuses()],
            "reload": host.reloader.status(),
        }

    @post("/reload", status_code=200)
    async def reload(self, host: HostDep) -> Response[dict[str, Any]]:
        """Read the site file again and apply what changed (the same as SIGHUP or ``llama-host reload``): 200 with
        the report, or 422 with every problem of a file that was refused (the running configuration is kept)."""
        report = await host.reload("api")
        return Response(msgspec.to_builtins(report), status_code=200 if report.ok else 422)

    @get("/config", sync_to_thread=False)
    def config(self, host: HostDep) -> dict[str, Any]:
        return host.effective_config()

    @get("/models", sync_to_thread=False)
    def models(self, host: HostDep) -> dict[str, list[ModelStatus]]:
        return {"models": host.scheduler.statuses()}

    @get("/models/{name:str}", sync_to_thread=False)
    def model(self, host: HostDep, name: FromPath[str]) -> ModelStatus:
        return host.scheduler.status(host.scheduler.get(name, "core").name)

    @post("/models/{name:str}/load", status_code=200)
    async def load(self, host: HostDep, name: FromPath[str]) -> dict[str, Any]:
        spec = host.scheduler.get(name, "core")
        seconds = await host.scheduler.load(spec.name)
        return {"model": spec.name, "state": host.scheduler.status(spec.name).state, "load_seconds": seconds}

    @post("/models/{name:str}/unload", status_code=200)
    async def unload(self, host: HostDep, name: FromPath[str]) -> dict[str, Any]:
        spec = host.scheduler.get(name, "core")
        return {"model": spec.name, "unloaded": await host.scheduler.unload(spec.name)}

    @get("/models/{name:str}/logs", sync_to_thread=False)
    def logs(self, host: HostDep, name: FromPath[str], lines: FromQuery[int] = 200) -> dict[str, Any]:
        spec = host.scheduler.get(name, "core")
        return {"model": spec.name, "lines": host.scheduler.logs(spec.name).tail(lines)}

    @get("/models/{name:str}/logs/stream", sync_to_thread=False)
    def log_stream(self, host: HostDep, name: FromPath[str], lines: FromQuery[int] = 200) -> Stream:
        spec = host.scheduler.get(name, "core")
        return Stream(_log_events(host, spec.name, lines), media_type="text/event-stream", headers=SSE_HEADERS)


async def _log_events(host: HostDep, name: str, history: int) -> AsyncIterator[bytes]:
    """History first, then live lines; follows the model across restarts (each start has a new buffer)."""
    encode = msgspec.json.encode
    buffer = host.scheduler.logs(name)
    for line in buffer.tail(history):
        yield b"data: " + encode(line) + b"\n\n"
    stopping = asyncio.ensure_future(host.stopping.wait())
    getter: asyncio.Future[Any] | None = None
    try:
        while not stopping.done():
            with buffer.subscribe() as queue:
                while host.scheduler.logs(name) is buffer:
                    getter = getter or asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait({getter, stopping}, timeout=15.0,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if stopping in done:
                        return
                    if getter in done:
                        line, getter = getter.result(), None
                        yield b"data: " + encode(line) + b"\n\n"
                    else:
                        yield b": ping\n\n"
            if getter is not None:
                getter.cancel()
                getter = None
            buffer = host.scheduler.logs(name)
    finally:
        for future in (getter, stopping):
            if future is not None:
                future.cancel()


def core_surface(host: HostDep) -> Surface:
    from llama_host.api_downloads import DownloadsController

    return Surface(name="core", port=host.site.port, route_handlers=[ManagementController, DownloadsController],
                   exception_handlers=OPENAI_EXCEPTION_HANDLERS)
