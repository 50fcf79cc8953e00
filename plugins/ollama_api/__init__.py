"""Ollama-compatible API surface for llama-host (``/api/*`` on port 11434 by default).

Every Ollama client (the official libraries, Open WebUI, editor plugins) talks to llama-host as if it were Ollama; the
requests are translated to llama-server's OpenAI-compatible API (see ``translate`` for the mapping).
"""

from __future__ import annotations

from typing import Any

import msgspec

from llama_host import Host, Surface, hookimpl

from .settings import SURFACE, Settings

__all__ = ["Settings", "config_schema", "register_surfaces"]


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


@hookimpl
def register_surfaces(host: Host) -> list[Surface]:
    from .controller import OllamaController
    from .errors import EXCEPTION_HANDLERS
    from .models_admin import OllamaModelsController

    settings = host.settings(SURFACE, Settings)
    return [Surface(name=SURFACE, port=settings.port, route_handlers=[OllamaController, OllamaModelsController],
                    exception_handlers=dict(EXCEPTION_HANDLERS))]
