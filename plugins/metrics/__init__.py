"""Metrics for llama-host: per request, per model, per runner process and for the machine.

Fed only by ``track_event``; served on the main port as Prometheus text (``/metrics``), a JSON summary
(``/api/v1/metrics``), the recent activity (``/api/v1/activity``) and a live event stream (``/api/v1/events``).
See README.md in this folder for the JSON shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from llama_host import Surface, hookimpl

from .plugin import NAME, MetricsPlugin, plugin_for
from .plugin import track as track_event  # the hook implementation itself: one call less per event
from .settings import Settings

if TYPE_CHECKING:
    from contextlib import AbstractAsyncContextManager

    from llama_host import Host

__all__ = ["MetricsPlugin", "Settings", "plugin_for", "track_event"]


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


@hookimpl
def register_surfaces(host: Host) -> list[Surface]:
    from .routes import ROUTES

    plugin_for(host)
    return [Surface(name=NAME, port=host.site.port, route_handlers=ROUTES)]


@hookimpl
def lifespan(host: Host) -> AbstractAsyncContextManager[None]:
    return plugin_for(host).running()

