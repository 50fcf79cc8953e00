"""The hook specifications of llama-host: the whole contract between the host and its plugins.

A plugin is a module (or object) registered through the ``llama_host`` entry-point group. It implements any of the
hooks below with ``@hookimpl`` (``from llama_host import hookimpl``); pluggy lets an implementation take only the
arguments it needs. Every spec documents its arguments, its return contract and a short example, and
``tests/test_hookspecs.py`` fails when one does not.

The host calls every hook through the plugin manager (``pm.hook.<name>(...)``, or ``pm.subset_hook_caller`` per
plugin where it must know which plugin returned what), so ``tryfirst``/``trylast`` and wrappers (``wrapper=True``)
work as pluggy documents them. ``LLAMA_HOST_TRACE_HOOKS=1`` logs every hook call (logger ``llama_host.hooks``).
"""

from __future__ import annotations

from collections.abc import Awaitable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from llama_host.host import Host
    from llama_host.types import Event, ModelSpec, RegisterRuntime, Surface

PROJECT = "llama_host"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def config_schema() -> dict[str, Any] | None:
    """Return the JSON Schema of this plugin's section of the site file (``plugins.<name>``).

    :returns: a JSON Schema object, usually ``msgspec.json.schema(Settings)`` of a ``forbid_unknown_fields`` Struct;
        ``None`` when the plugin takes no settings (then only ``enabled`` is accepted). The host adds the ``enabled``
        key itself and matches the schema to the plugin by the plugin's registered name.

    Example::

        class Settings(msgspec.Struct, forbid_unknown_fields=True):
            port: int = 11434

        @hookimpl
        def config_schema():
            return msgspec.json.schema(Settings)
    """


@hookspec
def lifespan(host: Host) -> AbstractAsyncContextManager[None] | None:
    """Return an async context manager for startup and teardown work, or ``None``.

    :param host: the running host (site config, scheduler, relay, ``emit``).
    :returns: entered after the scheduler is ready and before listeners bind, exited after listeners stop and
        before runners are stopped. Background tasks started here must end when it exits.

    Example::

        @hookimpl
        def lifespan(host):
            @contextlib.asynccontextmanager
            async def run():
                task = asyncio.create_task(sample_forever(host))
                yield
                task.cancel()
            return run()
    """


@hookspec
def register_surfaces(host: Host) -> list[Surface] | None:
    """Return the surfaces (route handlers plus the port they belong on) this plugin serves.

    :param host: the host being built; read settings with ``host.settings(name, Settings)``.
    :returns: a list of :class:`llama_host.types.Surface`. The host builds one Litestar app per port; two surfaces
        whose routes collide on one port are a startup error naming both.

    Example::

        @hookimpl
        def register_surfaces(host):
            s = host.settings("ollama_api", Settings)
            return [Surface(name="ollama_api", port=s.port, route_handlers=[OllamaController])]
    """


@hookspec
def register_runtimes(register: RegisterRuntime) -> None:
    """Register runtimes: ways to run a model (``llama-server``, ``command``, ``remote``, third-party ones).

    :param register: call ``register(name, factory, description="...", facts=..., check=..., local=...,
        memory=...)`` once per runtime; ``factory(spec, host)`` returns a :class:`llama_host.types.Runner`.
        ``facts(spec, host)`` (optional) returns the runtime's part of the model facts,
        :class:`llama_host.facts.RuntimeFacts` (the flags the runner runs with, the context they give, embeddings); a
        runtime without it takes no load parameters. ``check(spec)`` (optional) returns the problems that keep the
        runtime from ever starting ``spec`` (``"path: ..."``): the host reports them for configured models as
        configuration errors (``models.<name>.path: ...``) and skips discovered models that have any.
        ``local`` (default ``True``): its runners occupy this machine's memory; ``False`` (a server elsewhere) never
        counts against ``scheduler.max_loaded`` or ``memory_budget`` and is never unloaded to make room.
        ``memory(spec, facts)`` (optional, :data:`llama_host.types.MemoryEstimate`) returns the bytes a runner of
        ``spec`` takes, given its :class:`llama_host.facts.ModelFacts` (the context it runs with, its files' size);
        without it a local model is estimated at its files' size. A model's ``memory:`` in the site file wins over
        either. Unknown keywords are accepted (later versions may add some). A name registered twice is an error
        naming both plugins.
    :returns: nothing.

    Example::

        @hookimpl
        def register_runtimes(register):
            register("echo", lambda spec, host: EchoRunner(spec), description="answers with the prompt",
                     check=lambda spec: [] if spec.params.get("voice") else ["params.voice: required by 'echo'"],
                     local=False)   # in-process, no model in memory: never evicts a model, never evicted
            register("my-gpu-server", MyRunner, local=True,
                     memory=lambda spec, facts: (facts.file_size or 0) + 512 * 2**20)   # weights + a fixed cache
    """


@hookspec
def discover_models(host: Host) -> list[ModelSpec] | None:
    """Return models found by a scanner (``source`` set to the plugin's name).

    :param host: the host; ``host.config_path`` locates files kept next to the site file.
    :returns: model specs; the host merges them under the configured ``models:`` (a configured name wins). Called at
        startup and again by ``host.refresh_models()``; must not block (return a cached catalogue, scan in a thread).

    Example::

        @hookimpl
        def discover_models(host):
            return [ModelSpec(name="tiny", path="/models/tiny.gguf", source="my_scanner")]
    """


@hookspec
def rescan_models(host: Host) -> Awaitable[Any] | None:
    """Files arrived in (or left) the managed folder (``host.site.models_dir``): rescan now.

    :param host: the host; called by ``host.rescan_models()`` after a pull finishes or a model is deleted.
    :returns: an awaitable the host waits for before it refreshes its models (``host.refresh_models()``), or
        ``None``. The scan itself must not block the event loop (run it in a thread).

    Example::

        @hookimpl
        def rescan_models(host):
            return my_scanner(host).rescan()   # a coroutine scanning in a worker thread
    """


@hookspec(firstresult=True)
def resolve_model(host: Host, requested: str, surface: str) -> ModelSpec | None:
    """Map the model name a client sent to a known model; the first non-``None`` answer wins.

    :param host: the host; ``host.scheduler.models`` holds every known spec by name.
    :param requested: the name as the client sent it (``qwen:latest``, an alias, an LM Studio id).
    :param surface: the surface asking (``openai_api``, ``ollama_api``, ...).
    :returns: the spec, or ``None`` to let the next implementation (finally the core's case-insensitive,
        alias- and ``:latest``-aware default) decide. While no plugin implements this hook, the core answers
        without a pluggy call (it is on every request's path); a plugin registered later is asked from then on.

    Example::

        @hookimpl
        def resolve_model(host, requested, surface):
            if requested == "gpt-4o":
                return host.scheduler.models.get("qwen2.5-7b-instruct")
    """


@hookspec
def track_event(host: Host, event: Event) -> None:
    """Observe an event: request started/finished, model loading/loaded/unloaded/failed, models changed.

    :param host: the host.
    :param event: one of the Structs of :mod:`llama_host.types` (``event.kind`` names it).
    :returns: nothing. Called on the event loop in the request path (twice per request): it must only record
        (microseconds), never block or await. The implementations are called in pluggy's order; an exception is
        logged with the plugin's name and swallowed, and the other observers still get the event (with a
        ``wrapper`` implementation, or hooks traced, it is one pluggy call, which ends at the first exception).

    Example::

        @hookimpl
        def track_event(event):
            if event.kind == "request_finished":
                counts[event.model] += 1
    """


@hookspec
def reconfigure(host: Host, name: str, old: dict[str, Any], new: dict[str, Any]) -> bool | None:
    """Apply a changed ``plugins.<name>`` section live: a reload of the site file changed this plugin's settings.

    :param host: the host; ``host.settings(name, Settings)`` already returns the new settings.
    :param name: the plugin's name (its section of the site file); only the plugin of that name is asked.
    :param old: the section the plugin ran with (without ``enabled``), as written in the site file.
    :param new: the new section (without ``enabled``), already validated by the plugin's schema.
    :returns: ``True`` when the new settings are applied (or will be, by a task the plugin started); ``None`` or
        ``False`` when only a restart can apply them: the host then keeps the old section for this plugin and reports
        ``plugins.<name>`` as needing a restart, like a changed port. Called on the event loop: must not block.

    Example::

        @hookimpl
        def reconfigure(host, old, new):
            if old.get("port") != new.get("port"):
                return False            # a listener's port: only a restart can change it
            state_of(host).settings = host.settings("my_plugin", Settings)
            return True
    """
