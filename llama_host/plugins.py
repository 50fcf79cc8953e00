"""A fresh plugin manager per host: entry points of the ``llama_host`` group, blocked before import when disabled."""

from __future__ import annotations

import importlib.metadata as md
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from llama_host import hookspecs
from llama_host.errors import PluginError

GROUP = "llama_host"


@dataclass
class PluginInfo:
    name: str
    distribution: str
    version: str
    enabled: bool
    loaded: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def installed_plugins() -> list[md.EntryPoint]:
    seen: dict[str, md.EntryPoint] = {}
    for ep in md.entry_points(group=GROUP):
        seen.setdefault(ep.name, ep)
    return sorted(seen.values(), key=lambda ep: ep.name)


def enabled_flags(plugins_section: Any) -> dict[str, bool]:
    """``plugins.<name>.enabled`` from the raw site data (read before any plugin is imported)."""
    flags: dict[str, bool] = {}
    if isinstance(plugins_section, Mapping):
        for name, section in plugins_section.items():
            if isinstance(section, Mapping) and section.get("enabled") is False:
                flags[str(name)] = False
    return flags


def make_plugin_manager(enabled: Mapping[str, bool] | None = None, *, only: Iterable[str] | None = None,
                        extra: Iterable[tuple[str, object]] = ()) -> tuple[pluggy.PluginManager, list[PluginInfo]]:
    """Load every installed plugin that is not disabled into a new manager.

    ``only`` restricts loading to those entry-point names (tests); ``extra`` registers in-process plugin objects.
    Raises PluginError listing every plugin that failed to import or register, by name.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    enabled = dict(enabled or {})
    keep = set(only) if only is not None else None
    infos: list[PluginInfo] = []
    failures: list[str] = []
    for ep in installed_plugins():
        dist = ep.dist
        on = enabled.get(ep.name, True) and (keep is None or ep.name in keep)
        info = PluginInfo(ep.name, dist.name if dist else "?", dist.version if dist else "?", on)
        infos.append(info)
        if not on:
            pm.set_blocked(ep.name)
            continue
        try:
            pm.register(ep.load(), name=ep.name)
            info.loaded = True
        except Exception as exc:  # noqa: BLE001 - any import or registration failure is reported by plugin name
            info.error = f"{type(exc).__name__}: {exc}"
            failures.append(f"plugin '{ep.name}' ({info.distribution}) failed to load: {info.error}")
    for name, obj in extra:
        pm.register(obj, name=name)
        infos.append(PluginInfo(name, "(in-process)", "", True, True))
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        failures.append(f"plugin '{exc.plugin_name if hasattr(exc, 'plugin_name') else exc.plugin}': {exc}")
    if failures:
        raise PluginError("\n".join(failures))
    return pm, infos


def plugin_schemas(pm: pluggy.PluginManager, infos: list[PluginInfo]) -> dict[str, dict[str, Any] | None]:
    """Each plugin's config section schema, matched to the plugin by its registered name; disabled plugins accept
    any section (they were never imported, so their schema is unknown)."""
    schemas: dict[str, dict[str, Any] | None] = {i.name: None for i in infos if i.loaded}
    for name, call in per_plugin(pm, "config_schema"):
        for schema in call():
            schemas[name] = schema
    for info in infos:
        if not info.enabled:
            schemas[info.name] = {"type": "object", "additionalProperties": True}
    return schemas


def live_hookimpls(caller: pluggy.HookCaller) -> Sequence[pluggy.HookImpl] | None:
    """The list of ``caller``'s implementations that pluggy itself keeps up to date as plugins come and go (read it,
    never change it), or ``None`` where this pluggy has none to share: then call ``get_hookimpls()``, which copies it
    each time. For the hooks the host consults on every request (~1k instructions per copy and call)."""
    impls = getattr(caller, "_hookimpls", None)
    return impls if isinstance(impls, list) else None


def per_plugin(pm: pluggy.PluginManager, hook: str) -> list[tuple[str, pluggy.HookCaller]]:
    """``(plugin name, caller)`` for each plugin implementing ``hook``, in pluggy's call order (``tryfirst`` first,
    then the last registered). Each caller is ``pm.subset_hook_caller`` without the other contributing plugins:
    it runs that plugin's implementation through pluggy (its own subset of the arguments, every plugin's wrappers
    around it), so the host learns which plugin returned what without calling ``impl.function`` itself."""
    impls = getattr(pm.hook, hook).get_hookimpls()
    contributors = [i for i in impls if not (i.hookwrapper or i.wrapper)]
    plugins = {id(i.plugin): i.plugin for i in contributors}
    out = []
    for impl in reversed(contributors):
        others = [p for p in plugins.values() if p is not impl.plugin]
        out.append((impl.plugin_name, pm.subset_hook_caller(hook, remove_plugins=others)))
    return out
