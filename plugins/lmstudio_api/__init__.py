"""LM Studio-compatible surface: LM Studio's REST API (``/api/v0``, native ``/api/v1``) on its port (1234).

The OpenAI ``/v1`` routes on the same port come from the OpenAI surface, which the host mounts on every API port.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llama_host import Host, Surface, hookimpl
from llama_host.openai_errors import OPENAI_EXCEPTION_HANDLERS

from .controller import SURFACE, SurfaceState, controllers
from .settings import Settings
from .store import ResponseStore

__all__ = ["Settings", "config_schema", "register_surfaces"]


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


@hookimpl
def register_surfaces(host: Host) -> list[Surface]:
    settings: Settings = host.settings(SURFACE, Settings)
    state = SurfaceState(settings=settings, store=ResponseStore(settings.stored_responses))
    return [Surface(name=SURFACE, port=settings.port, route_handlers=controllers(state),
                    exception_handlers=OPENAI_EXCEPTION_HANDLERS)]
