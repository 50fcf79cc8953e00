"""Speech to text through whisper.cpp's ``whisper-server``.

- the ``whisper-server`` runtime: ``runtime: whisper-server`` models (``path`` = a whisper ggml ``.bin``) start on
  demand, are health-checked, unloaded and evicted like any other model; ``params``/``args`` become flags;
- ``POST /v1/audio/transcriptions`` and ``/v1/audio/translations`` (OpenAI's audio API) on the main port and every
  other port serving ``/v1``, uploads streamed through to the runner.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any

import msgspec

from llama_host import Host, Surface, hookimpl
from llama_host.config import parse_size
from llama_host.openai_errors import OPENAI_EXCEPTION_HANDLERS

from llama_host_whisper_server.runtime import RUNTIME, WhisperServerRunner
from llama_host_whisper_server.settings import Settings
from llama_host_whisper_server.surface import NAME, AudioService, controller_for

_services: weakref.WeakKeyDictionary[Host, AudioService] = weakref.WeakKeyDictionary()


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


@hookimpl
def register_runtimes(register) -> None:
    register(RUNTIME, WhisperServerRunner, description="whisper.cpp whisper-server: speech to text, one per model")


@hookimpl
def register_surfaces(host: Host) -> list[Surface]:
    settings: Settings = host.settings(NAME, Settings)
    service = _services[host] = AudioService(parse_size(settings.max_upload_size))
    return [Surface(name=NAME, port=host.site.port, route_handlers=[controller_for(service)],
                    exception_handlers=OPENAI_EXCEPTION_HANDLERS, on_api_ports=True)]


@hookimpl
def lifespan(host: Host):
    @contextlib.asynccontextmanager
    async def run():
        try:
            yield
        finally:
            service = _services.get(host)
            if service is not None:
                await service.close()

    return run()
