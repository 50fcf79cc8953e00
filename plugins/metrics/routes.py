"""HTTP routes on the main port: Prometheus text, the JSON summary, the activity log and the live event stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get
from litestar.params import FromQuery, QueryParameter
from litestar.response import Stream
from prometheus_client.exposition import choose_encoder

from llama_host import HostDep
from llama_host.proxy import SSE_HEADERS

from .plugin import MetricsPlugin, plugin_for

_encode = msgspec.json.Encoder().encode


def sse(kind: str, payload: Any) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode(payload) + b"\n\n"


@get("/metrics", sync_to_thread=False)
def prometheus_metrics(host: HostDep, request: Request) -> Response[bytes]:
    """Prometheus exposition (text format; OpenMetrics when the scraper asks for it)."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    return Response(encoder(plugin_for(host).registry), media_type=content_type)


class MetricsController(Controller):
    path = "/api/v1"
    tags = ["metrics"]

    @get("/metrics", sync_to_thread=False)
    def summary(self, host: HostDep) -> dict[str, Any]:
        """Per model, per runner and machine figures (see plugins/metrics/README.md)."""
        return plugin_for(host).recorder.summary()

    @get("/activity")
    async def activity(
        self,
        host: HostDep,
        limit: Annotated[int, QueryParameter(ge=1, le=1000)] = 100,
        model: FromQuery[str | None] = None,
        before: Annotated[int | None, QueryParameter(ge=1)] = None,
    ) -> dict[str, Any]:
        """The newest finished requests first; ``before`` (an id) pages back, into SQLite when it is configured."""
        plugin = plugin_for(host)
        rec = plugin.recorder
        rows = rec.recent(limit, model=model, before=before)
        if plugin.store is not None and len(rows) < limit:
            # Older than what memory holds: only SQLite has them.
            floor = rec.activity[0][0] if rec.activity else (before or rec.seq + 1)
            cutoff = min(floor, before) if before is not None else floor
            rows += await asyncio.to_thread(plugin.store.query, limit - len(rows), model=model, before=cutoff)
        return {"activity": rows}

    @get("/events", sync_to_thread=False)
    def events(self, host: HostDep) -> Stream:
        """Live events (SSE): a ``snapshot`` first, then every host event and the periodic samples."""
        plugin = plugin_for(host)
        return Stream(_event_stream(plugin), media_type="text/event-stream", headers=SSE_HEADERS)


async def _event_stream(plugin: MetricsPlugin) -> AsyncIterator[bytes]:
    rec = plugin.recorder
    hub = rec.hub
    queue = hub.subscribe()
    ping = plugin.settings.stream_ping_seconds
    gather = plugin.settings.stream_gather_seconds
    try:
        yield sse("snapshot", {"kind": "snapshot", **rec.summary()})
        while True:
            try:
                async with asyncio.timeout(ping):
                    item = await queue.get()
            except TimeoutError:
                yield b": ping\n\n"
                continue
            if gather and item is not hub.CLOSED:
                # One write per gathering window, however busy the host: a write costs far more than an event.
                await asyncio.sleep(gather)
            parts = []
            while item is not hub.CLOSED:
                parts.append(sse(*item))
                if queue.empty():
                    break
                item = queue.get_nowait()
            if parts:
                yield b"".join(parts)
            if item is hub.CLOSED:
                return
    finally:
        hub.unsubscribe(queue)


ROUTES = [prometheus_metrics, MetricsController]
