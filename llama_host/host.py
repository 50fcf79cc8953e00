"""The host: site config + plugin manager + scheduler + relay, and one Litestar app per listening port."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pluggy
from litestar import Litestar, Router
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotAuthorizedException
from litestar.handlers import BaseRouteHandler
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import ScalarRenderPlugin

from llama_host import __version__, reaper
from llama_host.config import SiteConfig, load_site, plugin_settings, redact
from llama_host.errors import ConfigError, PluginError
from llama_host.fastpath import FastPath
from llama_host.hookspecs import hookimpl
from llama_host.plugins import (
    PluginInfo,
    enabled_flags,
    live_hookimpls,
    make_plugin_manager,
    per_plugin,
    plugin_schemas,
)
from llama_host.proxy import Relay, RequestMeter
from llama_host.scheduler import CORE_RESOLVER, Scheduler
from llama_host.security import BrowserPolicy, browser_guard
from llama_host.types import Event, ModelSpec, RuntimeInfo, Surface

if TYPE_CHECKING:
    from llama_host.reload import SiteDiff
    from llama_host.reloader import ReloadReport
    from llama_host.facts import RuntimeFactsFunction
    from llama_host.types import MemoryEstimate, RuntimeCheck, RuntimeFactory

log = logging.getLogger(__name__)
hook_log = logging.getLogger("llama_host.hooks")
TRACE_ENV = "LLAMA_HOST_TRACE_HOOKS"


def trace_hooks(pm: pluggy.PluginManager) -> None:
    """Log every hook call (its arguments, each implementation called, its result) through pluggy's call monitoring:
    ``LLAMA_HOST_TRACE_HOOKS=1`` turns it on, logger ``llama_host.hooks`` at INFO."""

    def before(hook_name: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
        hook_log.info("hook %s(%s) → %s", hook_name, ", ".join(sorted(kwargs)),
                      ", ".join(i.plugin_name for i in impls) or "no implementation")

    def after(outcome: pluggy.Result[Any], hook_name: str, impls: Sequence[pluggy.HookImpl],
              kwargs: Mapping[str, Any]) -> None:
        exc = outcome.exception
        if exc is not None:
            hook_log.info("hook %s raised %s: %s", hook_name, type(exc).__name__, exc)
        else:
            hook_log.info("hook %s returned %s", hook_name, _short(outcome.get_result()))

    pm.add_hookcall_monitoring(before, after)


Observer = Callable[["Host", Event], object]


def _observers(impls: Sequence[pluggy.HookImpl], traced: bool) -> list[tuple[str, Observer]] | None:
    """The ``track_event`` implementations as plain calls in pluggy's order (the last registered first), each
    given the arguments it names; ``None`` where only a pluggy call will do (a wrapper, or hooks traced)."""
    if traced or any(i.wrapper or i.hookwrapper for i in impls):
        return None

    def call(impl: pluggy.HookImpl) -> Observer:
        f, names = impl.function, tuple(impl.argnames)
        if names == ("host", "event"):
            return f
        return lambda host, event: f(**{n: host if n == "host" else event for n in names})

    return [(i.plugin_name, call(i)) for i in reversed(impls)]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


class _CoreResolver:
    """The core's default model resolution, consulted after every plugin's ``resolve_model``."""

    @hookimpl(trylast=True)
    def resolve_model(self, host: Host, requested: str) -> ModelSpec | None:
        return host.scheduler.default_resolve(requested)


class Host:
    def __init__(self, site: SiteConfig, pm: pluggy.PluginManager, plugins: list[PluginInfo],
                 config_path: Path | None = None, raw_config: dict[str, Any] | None = None) -> None:
        self.site = site
        self.pm = pm
        self.plugins = plugins
        self.config_path = config_path
        self._raw_config = raw_config
        self.started_at = time.time()
        #: set when the host begins to stop: long-lived streams (logs, events) should end then
        self.stopping = asyncio.Event()
        self._settings: dict[tuple[str, type], Any] = {}
        pm.register(_CoreResolver(), name=CORE_RESOLVER)
        from llama_host.peers import PeerPool  # imports this module

        #: other llama-host nodes (``peers:``): their models join the catalogue through the normal hooks
        self.peers = PeerPool(self, site.peers)
        if site.peers:
            pm.register(self.peers, name="llama_host.peers")
        #: every hook call is logged (``LLAMA_HOST_TRACE_HOOKS``): the core then never answers in a hook's place
        self.hooks_traced = os.environ.get(TRACE_ENV, "") not in ("", "0")
        if self.hooks_traced:
            trace_hooks(pm)
        self._track_event = pm.hook.track_event
        self._track_impls = live_hookimpls(self._track_event)
        self._observed: list[pluggy.HookImpl] | None = None  # the implementations ``_observers`` was made from
        self._observers: list[tuple[str, Observer]] | None = None
        self.runtimes = self._collect_runtimes()
        self.scheduler = Scheduler(self, site.scheduler, self.runtimes)
        self.scheduler.set_models(site.models, [])
        self.check_models(site.models.values(), "models")
        self.relay = Relay(self)
        from llama_host.managed import ManagedModels

        #: pulled models, uploaded blobs and variants (create/copy/delete), in the managed folder ``site.models_dir``
        self.managed = ManagedModels(self)
        self.surfaces = self._collect_surfaces()
        self._listeners = _listeners_of(self.surfaces)  # once, after the surfaces: route collisions fail here
        #: what the API-key guard and the browser check read: replaced in place by a reload
        self._keys = ApiKeys(site.api_keys)
        self._policies: list[BrowserPolicy] = []
        #: whether the apps built check API keys (only when the site had keys then); ``None``: no app built yet
        self.key_check_installed: bool | None = None
        from llama_host.reloader import Reloader

        #: reloads of the site file (``reload``), one at a time; ``reloader.last`` is the last one's report
        self.reloader = Reloader(self)

    # --- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, path: Path | None = None, *, data: dict[str, Any] | None = None,
                    only: Iterable[str] | None = None, extra: Iterable[tuple[str, object]] = (),
                    env: dict[str, str] | None = None) -> Host:
        """Read the site file (or ``data``), load the plugins it enables and validate everything.

        Raises ConfigError (every problem with its path) or PluginError (the plugins that failed, by name).
        """
        from llama_host.config import expand_env, read_yaml

        raw = read_yaml(path) if data is None else data
        flags = enabled_flags(expand_env(raw, os.environ if env is None else env, []).get("plugins")
                              if isinstance(raw, dict) else None)
        pm, infos = make_plugin_manager(flags, only=only, extra=extra)
        site = load_site(path, plugin_schemas(pm, infos), env=env, data=raw)
        return cls(site, pm, infos, config_path=path.resolve() if path else None, raw_config=raw)

    def per_plugin(self, hook: str) -> list[tuple[str, Any]]:
        """``(plugin name, caller)`` for each plugin implementing ``hook`` (see
        :func:`llama_host.plugins.per_plugin`)."""
        return per_plugin(self.pm, hook)

    def _collect_runtimes(self) -> dict[str, RuntimeInfo]:
        runtimes: dict[str, RuntimeInfo] = {}
        problems: list[str] = []
        for plugin, call in self.per_plugin("register_runtimes"):
            def register(name: str, factory: RuntimeFactory, *, description: str = "",
                         facts: RuntimeFactsFunction | None = None, check: RuntimeCheck | None = None,
                         embedding: Callable[..., Any] | None = None, local: bool = True,
                         memory: MemoryEstimate | None = None, _plugin: str = plugin, **more: Any) -> None:
                if name in runtimes:
                    problems.append(f"runtime '{name}' is registered by both '{runtimes[name].plugin}' and '{_plugin}'")
                    return
                runtimes[name] = RuntimeInfo(name, factory, _plugin, description, facts=facts, check=check,
                                             embedding=embedding, local=local, memory=memory)

            call(register=register)
        if problems:
            raise PluginError("; ".join(problems))
        return runtimes

    def check_models(self, specs: Iterable[ModelSpec], where: str) -> None:
        """Raise ConfigError listing every model whose runtime is unknown or whose runtime's check fails."""
        problems = []
        for s in specs:
            if s.runtime not in self.runtimes:
                problems.append(f"{where}.{s.name}.runtime: unknown runtime '{s.runtime}' (installed: "
                                f"{', '.join(sorted(self.runtimes)) or 'none'})")
            else:
                problems += [f"{where}.{s.name}.{p}" for p in self._runtime_problems(s)]
        if problems:
            raise ConfigError(problems, str(self.config_path) if self.config_path else None)

    def _runtime_problems(self, spec: ModelSpec) -> list[str]:
        """What keeps ``spec``'s runtime from ever starting it (the runtime's ``check``); a failing check is a
        problem."""
        check = self.runtimes[spec.runtime].check
        if check is None:
            return []
        try:
            return [str(p) for p in check(spec) or ()]
        except Exception as exc:  # noqa: BLE001 - a plugin's bug must not hide the model's name
            return [f"runtime: the check of runtime '{spec.runtime}' failed: {type(exc).__name__}: {exc}"]

    def _collect_surfaces(self) -> list[Surface]:
        from llama_host.api import core_surface

        surfaces = [core_surface(self)]
        for group in self.pm.hook.register_surfaces(host=self):
            surfaces.extend(group or ())
        return surfaces

    # --- what plugins use ---------------------------------------------------------------------------------------

    def settings(self, name: str, kind: type[msgspec.Struct]) -> Any:
        """The typed settings of plugin ``name`` (its ``plugins.<name>`` section, validated by its schema)."""
        key = (name, kind)
        if key not in self._settings:
            self._settings[key] = plugin_settings(self.site, name, kind)
        return self._settings[key]

    def emit(self, event: Event) -> None:
        """Pass an event to every ``track_event`` hook; a failing observer is logged, never raised.

        Two events per request: the implementations are called directly, in pluggy's order, without a pluggy call
        (~13k instructions each, bench/README.md "The hot path, fourth pass"), and each failing observer is logged
        on its own while the others still get the event. With a wrapper among them, or hooks traced, it is one
        pluggy call, which ends at the first exception."""
        impls = self._track_impls if self._track_impls is not None else self._track_event.get_hookimpls()
        if impls != self._observed:  # a plugin came or went: take the implementations again
            self._observed = list(impls)
            self._observers = _observers(impls, traced=self.hooks_traced)
        if self._observers is None:
            try:
                self._track_event(host=self, event=event)
            except Exception:
                log.exception("a plugin failed in track_event (%s)", event.kind)
            return
        for name, observe in self._observers:
            try:
                observe(self, event)
            except Exception:
                log.exception("plugin '%s' failed in track_event (%s)", name, event.kind)

    def meter(self, surface: str, endpoint: str, model: str, stream: bool = False) -> RequestMeter:
        return RequestMeter(self, surface, endpoint, model, stream)

    async def refresh_models(self) -> None:
        """Ask every ``discover_models`` hook again and merge under the configured models."""
        discovered: list[ModelSpec] = []
        for plugin, call in self.per_plugin("discover_models"):
            try:
                for specs in call(host=self):
                    for spec in specs or ():
                        discovered.append(spec if spec.source != "config" else
                                          msgspec.structs.replace(spec, source=plugin))
            except Exception:
                log.exception("plugin %s failed in discover_models", plugin)
        known = []
        for s in discovered:
            if s.runtime not in self.runtimes:
                log.warning("discovered model %s needs unknown runtime %s: skipped", s.name, s.runtime)
            elif problems := self._runtime_problems(s):
                log.warning("discovered model %s (from %s) cannot be started: %s; skipped", s.name, s.source,
                            "; ".join(problems))
            else:
                known.append(s)
        configured, known = await self.managed.apply(self.site.models, known)
        self.scheduler.set_models(configured, known)

    async def rescan_models(self) -> None:
        """Files changed in the managed folder: every ``rescan_models`` hook rescans, then the models refresh."""
        waits = [r for r in self.pm.hook.rescan_models(host=self) if r is not None]
        for result in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("rescan after a change in the managed folder failed: %s", result)
        await self.refresh_models()

    # --- reloads (llama_host.reloader) -----------------------------------------------------------------------------

    async def reload(self, trigger: str = "api") -> ReloadReport:
        """Read the site file again and apply the difference; returns the ``ReloadReport`` (see
        :mod:`llama_host.reloader`). Reloads run one at a time."""
        return await self.reloader.reload(trigger)

    def replace_site(self, site: SiteConfig) -> None:
        """Make ``site`` the running configuration (plugin settings are read again from it)."""
        self.site = site
        self._settings.clear()

    def apply_live(self, old: SiteConfig, diff: SiteDiff) -> None:
        """Apply the core keys a reload changed that need no restart: scheduler limits, API keys, the browser
        policy and the log level (``diff`` is a :class:`llama_host.reload.SiteDiff`)."""
        site = self.site
        changed = set(diff.core_changed)
        if "scheduler" in changed:
            self.scheduler.update_settings(site.scheduler)
        if "api_keys" in changed:
            self._keys.replace(site.api_keys)
        if changed & {"allowed_hosts", "allowed_origins"}:
            for policy in self._policies:
                policy.update(site.allowed_hosts, site.allowed_origins)
        if "log_level" in changed:
            logging.getLogger().setLevel(site.log_level.upper())

    def plugin_states(self) -> list[dict[str, Any]]:
        return [p.as_dict() for p in self.plugins]

    def effective_config(self) -> dict[str, Any]:
        config: dict[str, Any] = redact(msgspec.to_builtins(self.site))
        return config

    # --- listeners ----------------------------------------------------------------------------------------------

    def listeners(self) -> dict[int, list[Surface]]:
        """Surfaces by port (``on_api_ports`` surfaces join every port), computed once when the host was built."""
        return self._listeners

    def build_apps(self) -> dict[int, Litestar]:
        apps = {}
        # Every app: the browser check first (before routing's handlers and guards), then the API key on every
        # route that is not public, the OpenAPI document's routes included.
        policy = BrowserPolicy(self.site.host, self.site.allowed_hosts, self.site.allowed_origins)
        self._policies.append(policy)
        browser = browser_guard(policy)
        guards = [api_key_guard(self._keys)] if self.site.api_keys else None
        self.key_check_installed = bool(guards) or bool(self.key_check_installed)
        for port, group in self.listeners().items():
            primary = next((s for s in group if s.port == port and not s.on_api_ports), group[0])
            routers = [Router(path="/", route_handlers=list(s.route_handlers), exception_handlers=s.exception_handlers,
                              opt=None if s.requires_auth else {"public": True}, signature_namespace={"Host": Host})
                       for s in group]
            main = port == self.site.port
            apps[port] = Litestar(
                route_handlers=routers, dependencies={"host": Provide(self._provide, sync_to_thread=False)},
                signature_namespace={"Host": Host}, middleware=[browser], guards=guards,
                exception_handlers=primary.exception_handlers, logging_config=None,
                openapi_config=OpenAPIConfig(title="llama-host", version=__version__, path="/api/docs",
                                             render_plugins=[ScalarRenderPlugin()]) if main else None,
                debug=False)
            fast = {path: (route, s.exception_handlers or primary.exception_handlers, not s.requires_auth)
                    for s in group for path, route in s.fast_routes.items()}
            if fast:  # the hottest routes skip Litestar's routing and response machinery (llama_host.fastpath)
                apps[port].asgi_handler = FastPath(apps[port].asgi_handler, self, fast, browser,
                                                   self._keys if self.site.api_keys else None)
        return apps

    def _provide(self) -> Host:
        return self

    # --- lifecycle ----------------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Host]:
        """Shared resources for the host's life: the relay, discovery, plugin lifespans; runners stop at the end."""
        reaper.start()  # before the first runner, whose start would otherwise wait for it
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.relay)
            stack.push_async_callback(self.scheduler.shutdown)
            stack.push_async_callback(self.managed.close)
            await self.refresh_models()
            for plugin, call in self.per_plugin("lifespan"):
                for cm in call(host=self):
                    if cm is None:
                        continue
                    try:
                        await stack.enter_async_context(cm)
                    except Exception as exc:
                        raise PluginError(f"plugin '{plugin}' failed to start: {exc}") from exc
            await stack.enter_async_context(self.reloader.watching())
            if self.site.scheduler.preload:  # in the background: listeners bind at once, loads show as events
                preload = asyncio.create_task(self.scheduler.preload(list(self.site.scheduler.preload)), name="preload")
                stack.callback(preload.cancel)
            yield self


HostDep = NamedDependency[Host]
"""Annotate a handler parameter ``host: HostDep`` to receive the running host."""


class ApiKeys:
    """The API keys a guard accepts, replaced in place when a reload changes ``api_keys``."""

    __slots__ = ("encoded",)

    def __init__(self, keys: Iterable[str]) -> None:
        self.encoded: list[bytes] = []
        self.replace(keys)

    def replace(self, keys: Iterable[str]) -> None:
        self.encoded = [k.encode() for k in keys]


def api_key_guard(keys: list[str] | ApiKeys) -> Callable[[ASGIConnection[Any, Any, Any, Any], BaseRouteHandler], None]:
    """A Litestar guard accepting ``Authorization: Bearer <key>`` (or ``x-api-key``); handlers with
    ``opt={"public": True}`` (or under a ``Surface`` with ``requires_auth=False``) are exempt: the README's Security
    section lists them. A plain function (not a bound method): Litestar deep-copies routers. Given an
    :class:`ApiKeys`, it reads the keys it holds at each request (an empty set lets every request in)."""
    ring = keys if isinstance(keys, ApiKeys) else ApiKeys(keys)

    def guard(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
        encoded = ring.encoded
        if handler.opt.get("public") or not encoded:
            return
        auth = connection.headers.get("authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else connection.headers.get("x-api-key", "")
        if not any(hmac.compare_digest(token.encode(), k) for k in encoded):
            raise NotAuthorizedException("invalid or missing API key (send 'Authorization: Bearer <key>')")

    return guard


_PARAM = re.compile(r"\{[^}]*\}")


def _listeners_of(surfaces: list[Surface]) -> dict[int, list[Surface]]:
    """Surfaces by port; ``on_api_ports`` surfaces join every port. Raises PluginError on route collisions."""
    by_port: dict[int, list[Surface]] = defaultdict(list)
    for s in surfaces:
        by_port[s.port].append(s)
    for s in surfaces:
        if s.on_api_ports:
            for group in by_port.values():
                if s not in group:
                    group.append(s)
    problems = []
    for port, group in by_port.items():
        seen: dict[tuple[str, str], str] = {}
        for s in group:
            for path, method in _routes_of(s):
                owner = seen.setdefault((path, method), s.name)
                if owner != s.name:
                    problems.append(f"port {port}: {method} {path} is served by both '{owner}' and '{s.name}'")
    if problems:
        raise PluginError("route collision: " + "; ".join(problems))
    return dict(sorted(by_port.items()))


def _routes_of(surface: Surface) -> list[tuple[str, str]]:
    router = Router(path="/", route_handlers=list(surface.route_handlers))
    out = []
    for route in router.routes:
        methods = getattr(route, "methods", None) or {"WS"}
        for method in methods:
            if method not in ("HEAD", "OPTIONS"):
                out.append((_PARAM.sub("{}", route.path), method))
    return out

