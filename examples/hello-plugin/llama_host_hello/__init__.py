"""llama-host-hello: a sample third-party plugin for llama-host.

It shows the three things most plugins do:

* ``config_schema``      — its section of the site file (``plugins.hello``), validated before anything starts;
* ``register_surfaces``  — a route on the main port (``GET /hello``, path configurable) and a dialect of its own,
  ``POST /hello/say``, written on the host's request primitive (``dialect.py``);
* ``register_runtimes``  — a runtime, ``echo``: models with ``runtime: echo`` answer chat requests with the prompt.

The host finds it through the entry point ``hello = "llama_host_hello"`` (group ``llama_host``) in pyproject.toml.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import get

from llama_host import Host, HostDep, Surface, hookimpl
from llama_host.openai_errors import OPENAI_EXCEPTION_HANDLERS

from llama_host_hello.dialect import say_handler
from llama_host_hello.echo import EchoRunner
from llama_host_hello.settings import NAME, Settings

__version__ = "0.1.0"


@hookimpl
def config_schema() -> dict[str, Any]:
    return msgspec.json.schema(Settings)


@hookimpl
def register_surfaces(host: Host) -> list[Surface]:
    settings: Settings = host.settings(NAME, Settings)

    # The path comes from the settings, so the handler is made here rather than at import time.
    # A handler parameter annotated `HostDep` receives the running host.
    @get(settings.path, sync_to_thread=False)
    def hello(host: HostDep) -> dict[str, Any]:
        echo_models = sorted(name for name, spec in host.scheduler.models.items() if spec.runtime == "echo")
        return {"greeting": settings.greeting, "plugin": NAME, "version": __version__, "echo_models": echo_models}

    say = say_handler(settings.path.rstrip("/") + "/say")
    return [Surface(name=NAME, port=host.site.port, route_handlers=[hello, say],
                    exception_handlers=OPENAI_EXCEPTION_HANDLERS)]


@hookimpl
def register_runtimes(register) -> None:
    register("echo", EchoRunner, description="answers every chat request with its prompt (llama-host-hello)",
             local=False)  # in-process, no model file: never counted against max_loaded or memory_budget
