"""Typed values exchanged between the host and its plugins.

Everything a hook returns or receives is declared here, so a plugin author reads one module to learn the contract.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import msgspec

from llama_host.facts import ModelFacts

if TYPE_CHECKING:
    from litestar.types import ExceptionHandlersMap

    from llama_host.fastpath import FastRoute
    from llama_host.host import Host
    from llama_host.process import LogBuffer
    from llama_host.proxy import Upstream

ModelState = Literal["unloaded", "loading", "loaded", "stopping", "failed"]
UnloadReason = Literal["ttl", "evicted", "requested", "crashed", "shutdown", "reload"]


class RequestFilters(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """``models.<name>.filters``: what the host changes in every JSON request body it sends this model's runner,
    whatever the surface (after the model's ``defaults``, before ``upstream_model`` names the model)."""

    strip: list[str] = []
    """Top-level fields removed from the body (e.g. ``[top_k, logit_bias]``: parameters the runner rejects)."""
    set: dict[str, Any] = {}
    """Top-level fields set in the body, over what the client sent (e.g. ``{temperature: 0.2}``)."""


class ModelSpec(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, omit_defaults=True):
    """One model as the site file (``models.<name>``) or a discovery plugin declares it.

    The runtime decides which of the optional keys it reads: ``path``/``binary``/``params``/``args`` for
    ``llama-server``, ``cmd``/``health_path`` for ``command``, ``url``/``api_key`` for ``remote``.
    """

    name: str = ""
    path: str | None = None
    runtime: str = "llama-server"
    binary: str | None = None
    aliases: list[str] = []
    ttl: float | None = None
    pinned: bool = False
    unlisted: bool = False
    memory: int | str | None = None
    #: eviction takes lower priorities first, then the least recently used
    priority: int = 0
    #: requests in flight at this model's runner at once (usually its ``--parallel``); more wait in the queue
    max_concurrent: int | None = None
    #: streams show loading progress while this model loads (``None``: the site's ``loading_progress``)
    loading_progress: bool | None = None
    params: dict[str, Any] = {}
    args: list[str] = []
    env: dict[str, str] = {}
    cmd: list[str] = []
    health_path: str = "/health"
    url: str | None = None
    api_key: str | None = None
    #: the name the runner knows this model by, sent as the body's ``model``: for ``remote``, the name on the upstream
    #: server; for ``llama-server``, its ``--alias`` too. Default: the client's name (remote), this name (llama-server)
    upstream_model: str | None = None
    #: request filters: body fields stripped or set on every request sent to the runner (see RequestFilters)
    filters: RequestFilters | None = None
    #: ``llama-server``: RPC workers (``host:port``) the model's layers are spread over (``--rpc``)
    rpc: list[str] = []
    #: ``llama-server`` with ``rpc``: when a worker dies, restart on the workers still alive (``drop``) or fail
    rpc_failover: Literal["drop", "fail"] = "drop"
    mmproj: str | None = None
    #: A system prompt given to chat requests that bring none (Ollama ``create`` variants set it).
    system: str | None = None
    #: Request fields (OpenAI/llama-server names: temperature, top_p, stop, max_tokens, ...) used when a request
    #: does not set them.
    defaults: dict[str, Any] = {}
    # Filled by discovery plugins: GGUF facts (architecture, parameter_count, quantization, context_length, ...).
    metadata: dict[str, Any] = {}
    # Where the spec came from: "config" or the discovering plugin's name.
    source: str = "config"
    missing: bool = False


@dataclass
class Surface:
    """Routes that one plugin serves on one port (an API dialect).

    ``on_api_ports``: also mount these routes on every other port that serves a surface — the OpenAI ``/v1``
    routes are served on the Ollama and LM Studio ports as those servers do.
    ``exception_handlers`` shape every error raised under these routes (including 401s from the API-key guard)
    into the surface's dialect.
    """

    name: str
    port: int
    route_handlers: Sequence[Any]
    exception_handlers: ExceptionHandlersMap = field(default_factory=dict)
    on_api_ports: bool = False
    #: False for routes that never need an API key (e.g. static dashboard assets).
    requires_auth: bool = True
    #: ``POST`` paths also served by a lean ASGI path in front of Litestar (llama_host.fastpath), each the same as
    #: one of ``route_handlers`` (which stays: other methods, the OpenAPI document): the hottest relay routes.
    fast_routes: Mapping[str, FastRoute] = field(default_factory=dict)


@runtime_checkable
class Runner(Protocol):
    """A running (or startable) server for one model, created by a runtime factory.

    ``start`` returns once the runner answers health checks, or raises ``RunnerStartError`` with its log tail.
    ``wait`` resolves when the runner ends on its own (never for a remote server) and returns its exit code.

    ``local``: the runner is a process on this machine, whose end can be seen (``exit_status``): a refused connection
    to it is checked against its exit before being retried. Whether a model counts against ``max_loaded`` and
    ``memory_budget`` is its runtime's registration (``register(..., local=...)``), not this.

    The rest have defaults in :class:`RunnerBase`: ``exited``/``exit_status``/``kill_now`` (a runner with a process),
    ``details`` (facts shown in the model's status, e.g. its RPC workers' health), ``exit_reason`` (why it ended on
    its own, when it knows: the scheduler puts it in the model's error), ``upstream_model`` (the name its server knows
    the model by: JSON request bodies go out with it as ``model``) and ``open_upstream`` (``async (session, method,
    path, *, data, headers) -> Upstream``: the runner sends a request itself, choosing among several servers, instead
    of ``base_url + path``; ``None`` for the usual way). Optional, read when present: ``max_connections`` (the
    connections its server serves at once; the host opens no more, requests past them wait for one; ``None``: no
    bound).
    """

    model: ModelSpec
    base_url: str
    headers: Mapping[str, str]
    local: bool
    pid: int | None
    logs: LogBuffer

    async def start(self, timeout: float) -> None: ...

    async def stop(self, grace: float) -> None: ...

    async def wait(self) -> int | None: ...

    exit_reason: str | None
    upstream_model: str | None
    open_upstream: Callable[..., Awaitable[Upstream]] | None

    @property
    def details(self) -> Mapping[str, Any]: ...

    def exited(self) -> bool:
        """True once the runner has ended on its own, even before ``wait`` has noticed (never, without a process)."""
        ...

    def exit_status(self) -> int | None:
        """How it ended — exit code, or minus the signal — once it has; ``None`` while it runs or without a process."""
        ...

    def kill_now(self) -> None:
        """Synchronous last resort at interpreter exit: end the runner's process at once (nothing without one)."""
        ...


class RunnerBase:
    """Defaults of the :class:`Runner` abilities for a runner without a process of its own (a remote server, an
    in-process server): it never ends on its own and there is nothing to kill. Subclass it and write the rest."""

    local = False
    pid: int | None = None
    exit_reason: str | None = None
    upstream_model: str | None = None
    open_upstream: Callable[..., Awaitable[Upstream]] | None = None
    max_connections: int | None = None

    @property
    def details(self) -> Mapping[str, Any]:
        return {}

    def exited(self) -> bool:
        return False

    def exit_status(self) -> int | None:
        return None

    def kill_now(self) -> None:
        return None

    @functools.cached_property
    def stopped(self) -> asyncio.Event:
        """Set by :meth:`stop`; a subclass's ``start`` clears it (a runner may be started again)."""
        return asyncio.Event()

    async def stop(self, grace: float) -> None:
        self.stopped.set()

    async def wait(self) -> int | None:
        """Returns once stopped: the runner has no process whose exit could end it sooner."""
        await self.stopped.wait()
        return None


RuntimeFactory = Callable[[ModelSpec, "Host"], Runner]
RuntimeCheck = Callable[[ModelSpec], Iterable[str]]
"""``check(spec)`` → problems that keep the runtime from ever starting ``spec``, each ``"<key>: <message>"``."""
MemoryEstimate = Callable[[ModelSpec, ModelFacts], int]
"""``memory(spec, facts)`` → the bytes of local memory a runner of ``spec`` takes, given the model's facts (the
context it runs with, its files' size; ``facts.memory`` is not set yet)."""
RegisterRuntime = Callable[..., None]
"""``register(name, factory, *, description="", facts=None, check=None, embedding=None, local=True, memory=None,
**more)``: passed to ``register_runtimes``."""


@dataclass(frozen=True)
class RuntimeInfo:
    name: str
    factory: RuntimeFactory
    plugin: str
    description: str = ""
    #: ``facts(spec, host) -> llama_host.facts.RuntimeFacts``: the runtime's part of a model's facts (its effective
    #: flags, the context they give); ``None`` for a runtime that takes no flags (load parameters are dropped)
    facts: Callable[..., Any] | None = None
    check: RuntimeCheck | None = None
    #: ``embedding(spec) -> params | None``: the ``params`` that make a runner of ``spec`` serve embeddings (see
    #: ``llama_host.variants``); ``None`` for a runtime that cannot
    embedding: Callable[..., Any] | None = None
    #: whether its runners occupy this machine's memory: False (a remote server) never counts against ``max_loaded``
    #: or ``memory_budget`` and is never unloaded to make room
    local: bool = True
    #: its estimate of the memory a model takes (see ``MemoryEstimate``); ``None``: the size of the model's files
    memory: MemoryEstimate | None = None


# --- events -------------------------------------------------------------------------------------------------------


class Event(msgspec.Struct, kw_only=True, tag_field="kind"):
    """Base of everything passed to ``track_event``. ``ts`` is the wall-clock time of the event."""

    ts: float = msgspec.field(default_factory=time.time)

    @property
    def kind(self) -> str:
        """The event's tag (``request_finished``, ``model_loaded``, ...), as encoded in the ``kind`` field."""
        return self.__struct_config__.tag  # type: ignore[return-value]


class RequestStarted(Event, tag="request_started"):
    surface: str
    model: str
    endpoint: str


class RequestFinished(Event, tag="request_finished"):
    """One proxied request, emitted when its last byte has gone to the client (or it failed)."""

    surface: str
    model: str
    endpoint: str
    status: int
    duration: float
    stream: bool = False
    queue_wait: float = 0.0
    ttft: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    tokens_per_second: float | None = None
    prompt_ms: float | None = None
    predicted_ms: float | None = None
    stop_reason: str | None = None
    error: str | None = None


class ModelLoading(Event, tag="model_loading"):
    model: str


class ModelLoaded(Event, tag="model_loaded"):
    model: str
    load_seconds: float
    pid: int | None = None


class ModelUnloaded(Event, tag="model_unloaded"):
    model: str
    reason: UnloadReason


class ModelFailed(Event, tag="model_failed"):
    model: str
    error: str
    log_tail: list[str] = []


class RunnerLogDropped(Event, tag="runner_log_dropped"):
    """Lines of a runner's log that its log file could not take (the runner wrote faster than the disk), one event
    per burst; the in-memory recent lines are complete."""

    model: str
    lines: int


class ModelsChanged(Event, tag="models_changed"):
    """The set of known models changed (a rescan found new, changed or missing files)."""

    added: list[str] = []
    changed: list[str] = []
    missing: list[str] = []


class PeerChanged(Event, tag="peer_changed"):
    """A peer node (``peers:``) went up or down, or its model list changed; counters are totals since start."""

    peer: str
    url: str
    up: bool
    error: str | None = None
    models: list[str] = []
    requests: int = 0
    failures: int = 0


class ConfigReloaded(Event, tag="config_reloaded"):
    """A reload of the site file was tried (the file changed, SIGHUP, ``llama-host reload``, ``POST /api/v1/reload``),
    or a plugin read a file it owns again after an edit (discovery's ``discovered.yaml``).

    ``ok`` False: the new file was refused whole (``problems``, each with its path) and the running configuration
    kept. ``needs_restart``: changed keys that take effect only when the host restarts (a port, a plugin that cannot
    be reconfigured live)."""

    ok: bool
    trigger: str
    #: the file read again (the site file, or a file a plugin owns such as discovery's ``discovered.yaml``)
    file: str = ""
    summary: str = ""
    problems: list[str] = []
    needs_restart: list[str] = []
    added: list[str] = []
    removed: list[str] = []
    restarted: list[str] = []


AnyEvent = (RequestStarted | RequestFinished | ModelLoading | ModelLoaded | ModelUnloaded | ModelFailed | ModelsChanged
            | RunnerLogDropped | PeerChanged | ConfigReloaded)


class ModelStatus(msgspec.Struct, kw_only=True):
    """The scheduler's view of one model, as served by ``GET /api/v1/models``."""

    name: str
    state: ModelState
    runtime: str
    source: str
    aliases: list[str]
    memory: int
    in_flight: int
    pinned: bool
    unlisted: bool
    missing: bool
    ttl: float | None
    last_used: float | None
    expires_at: float | None
    loaded_at: float | None
    load_seconds: float | None
    pid: int | None
    error: str | None
    path: str | None
    metadata: dict[str, Any]
    priority: int = 0
    max_concurrent: int | None = None
    #: the ``scheduler.groups`` entry this model belongs to
    group: str | None = None

    @property
    def scheduling(self) -> dict[str, Any]:
        """The scheduling policy of the model, as every dialect's model state shows it (under ``scheduling``)."""
        return {"pinned": self.pinned, "priority": self.priority, "group": self.group,
                "max_concurrent": self.max_concurrent}
    #: what the model runs (or will run) with and can do: the one source every surface reads
    facts: ModelFacts | None = None
    #: what the runner reports about itself (a runner's optional ``details``), e.g. its RPC workers and their health
    details: dict[str, Any] = {}


LifespanFactory = Callable[["Host"], Any]
StartupHook = Callable[[], Awaitable[None]]
