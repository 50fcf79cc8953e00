"""What a change of the site file means for the running host: a pure comparison of two validated configurations.

``site_diff(old, new)`` names the models added, removed, those whose runner must restart (a field the runner is started
with changed) and those whose change applies live (aliases, ttl, pinned, priority, listing...), the plugin sections
that changed, and the core keys that only a restart can apply (a port, the bind address). The host applies it
(``Host.reload``); nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from llama_host.config import SiteConfig
from llama_host.types import ModelSpec

#: ModelSpec fields a runner is started with: a change restarts the model's runner (after its in-flight requests)
RUNNER_FIELDS = frozenset({"path", "runtime", "binary", "params", "args", "env", "mmproj", "cmd", "health_path", "url",
                           "api_key", "rpc", "rpc_failover", "upstream_model"})
#: core keys applied without a restart; every other changed core key is reported as needing one
LIVE_CORE_KEYS = frozenset({"api_keys", "allowed_origins", "allowed_hosts", "log_level", "default_model",
                            "shutdown_grace", "loading_progress", "scheduler", "models", "plugins"})


@dataclass
class SiteDiff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    restart: list[str] = field(default_factory=list)
    live: list[str] = field(default_factory=list)
    plugins: list[str] = field(default_factory=list)
    #: core keys that changed and apply live
    core_changed: list[str] = field(default_factory=list)
    #: core keys (or ``plugins.<name>``) that changed but take effect only when the host restarts
    needs_restart: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.restart or self.live or self.plugins or self.needs_restart
                    or self.core_changed)

    def summary(self) -> str:
        parts = [f"{label}: {', '.join(names)}" for label, names in (
            ("added", self.added), ("removed", self.removed), ("restarted", self.restart), ("changed", self.live),
            ("plugins", self.plugins), ("core", self.core_changed), ("needs a restart", self.needs_restart)) if names]
        return "; ".join(parts) or "nothing changed"


def runner_changed(old: ModelSpec, new: ModelSpec) -> bool:
    """Whether a runner started with ``old`` must restart to run ``new`` (a field in RUNNER_FIELDS differs)."""
    return any(getattr(old, key) != getattr(new, key) for key in RUNNER_FIELDS)


def model_diff(old: ModelSpec, new: ModelSpec) -> tuple[bool, bool]:
    """``(restart, live)``: whether a runner-affecting field changed, whether any other user field changed."""
    a, b = msgspec.structs.asdict(old), msgspec.structs.asdict(new)
    changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)} - {"metadata", "source", "missing", "name"}
    return bool(changed & RUNNER_FIELDS), bool(changed - RUNNER_FIELDS)


def site_diff(old: SiteConfig, new: SiteConfig) -> SiteDiff:
    diff = SiteDiff()
    diff.added = sorted(new.models.keys() - old.models.keys())
    diff.removed = sorted(old.models.keys() - new.models.keys())
    for name in sorted(old.models.keys() & new.models.keys()):
        restart, live = model_diff(old.models[name], new.models[name])
        if restart:
            diff.restart.append(name)
        elif live:
            diff.live.append(name)
    for name in sorted(old.plugins.keys() | new.plugins.keys()):
        if (old.plugins.get(name) or {}) != (new.plugins.get(name) or {}):
            diff.plugins.append(name)
    a, b = msgspec.structs.asdict(old), msgspec.structs.asdict(new)
    for key in sorted(a.keys() | b.keys()):
        if key in ("models", "plugins") or _builtins(a.get(key)) == _builtins(b.get(key)):
            continue
        (diff.core_changed if key in LIVE_CORE_KEYS else diff.needs_restart).append(key)
    return diff


def _builtins(value: Any) -> Any:
    return msgspec.to_builtins(value) if isinstance(value, msgspec.Struct) else value
