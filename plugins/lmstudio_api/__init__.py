"""LM Studio-compatible surface: LM Studio's REST API (``/api/v0``, native ``/api/v1``) on its port (1234).

The OpenAI ``/v1`` routes on the same port come from the OpenAI surface, which the host mounts on every API port.
Modules: ``routes_v0`` / ``routes_v1`` (the controllers), ``wire`` (the Structs), ``describe`` (model views),
``stats`` and ``v0`` (stats and the v0 reply extras), ``v1chat`` (``/api/v1/chat`` mapping and events);
``sdk_*``: the protocol of LM Studio's own SDKs (``/lmstudio-greeting`` and WebSockets, see ``sdk_ws``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller
from litestar.di import Provide

from llama_host import Host, Surface, hookimpl
from llama_host.openai_errors import OPENAI_EXCEPTION_HANDLERS

from .exchange import SURFACE
from .routes_v0 import LMStudioV0Controller
from .routes_v1 import LMStudioV1Controller
from .sdk_routes import LMStudioSDKController
from .settings import Settings
from .state import SurfaceState
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


def controllers(state: SurfaceState) -> list[type[Controller]]:
    """The controllers bound to one host's surface state (handlers receive it as ``lms``)."""

    def provide() -> SurfaceState:
        return state

    from .downloads import LMStudioDownloadsController

    deps = {"lms": Provide(provide, sync_to_thread=False)}
    return [
        LMStudioDownloadsController,
        type("LMStudioV0Controller", (LMStudioV0Controller,), {"dependencies": deps}),
        type("LMStudioV1Controller", (LMStudioV1Controller,), {"dependencies": deps}),
        type("LMStudioSDKController", (LMStudioSDKController,), {"dependencies": deps}),
    ]
