"""Changing the site while it runs: read the site file again, validate it whole, apply the difference.

Triggers: a change of the site file (watched), SIGHUP (``llama_host.serve``), ``llama-host reload`` and
``POST /api/v1/reload``. Reloads run one at a time, each reading the file as it is then, so that a burst of edits
ends in the state of the last valid one.

A file with any problem is refused whole: the running configuration stays, and every problem (with its path) goes
to the log, to ``/api/v1/status`` (``reload``), to a ``config_reloaded`` event and so to the dashboard. A valid file
is applied as a difference (:func:`llama_host.reload.site_diff`): models added, removed, restarted (only those whose
runner depends on what changed, after their in-flight requests) or changed live; scheduler limits, API keys and the
browser policy at once; a changed plugin section through the plugin's ``reconfigure`` hook. What only a restart can
apply (a port, the bind address, a plugin that cannot be reconfigured) keeps its running value and is reported as
``needs_restart``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from llama_host.config import SiteConfig, expand_env, load_site, read_yaml
from llama_host.errors import ConfigError, PluginError
from llama_host.plugins import enabled_flags, plugin_schemas
from llama_host.reload import SiteDiff, site_diff
from llama_host.types import ConfigReloaded

if TYPE_CHECKING:
    from llama_host.host import Host

log = logging.getLogger("llama_host.reload")


class ReloadReport(msgspec.Struct, kw_only=True):
    """The last reload tried, as ``/api/v1/status`` (``reload``) and ``POST /api/v1/reload`` show it."""

    ok: bool
    trigger: str
    at: float
    #: the file read again: the site file, or a file a plugin owns (discovery's discovered.yaml)
    file: str = ""
    duration: float = 0.0
    problems: list[str] = []
    summary: str = ""
    added: list[str] = []
    removed: list[str] = []
    restarted: list[str] = []
    changed: list[str] = []
    #: plugin sections applied live by the plugin's ``reconfigure`` hook
    reconfigured: list[str] = []
    #: changed keys still running with their old value until the host restarts
    needs_restart: list[str] = []


class Reloader:
    """One host's reloads: serialised by a lock, the last report kept."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.last: ReloadReport | None = None
        #: the last report of each file (the site file's and those plugins report through :meth:`report_file`)
        self.files: dict[str, ReloadReport] = {}
        self._lock = asyncio.Lock()
        self._schemas: dict[str, dict[str, Any] | None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # --- triggers -----------------------------------------------------------------------------------------------

    def request(self, trigger: str) -> None:
        """Reload in the background (a signal handler's way); the outcome is reported like any reload's."""
        task = asyncio.get_running_loop().create_task(self.reload(trigger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[None]:
        """Reload whenever the site file changes, for the life of the block (nothing without a site file)."""
        path = self.host.config_path
        if path is None or not self.host.site.watch_config:
            yield
            return
        from llama_host.watch import watch_files

        async def changed(paths: set[Path]) -> None:
            await self.reload("file changed")

        stop = asyncio.Event()
        task = asyncio.create_task(watch_files([path], changed, stop=stop), name="watch site file")
        try:
            yield
        finally:
            stop.set()
            task.cancel()
            for t in [task, *self._tasks]:
                t.cancel()
            await asyncio.gather(task, *self._tasks, return_exceptions=True)

    # --- the reload ---------------------------------------------------------------------------------------------

    async def reload(self, trigger: str = "api") -> ReloadReport:
        """Read the site file again and apply it (see the module docstring); returns the report (``ok`` False: the
        file was refused and nothing changed)."""
        async with self._lock:
            started = time.monotonic()
            at = time.time()
            file = str(self.host.config_path or "")
            if self._schemas is None:
                self._schemas = plugin_schemas(self.host.pm, self.host.plugins)
            try:
                new, flags = await asyncio.to_thread(self._read, self._schemas)
            except (ConfigError, PluginError) as exc:
                problems = list(exc.problems) if isinstance(exc, ConfigError) else [str(exc)]
                report = ReloadReport(ok=False, trigger=trigger, at=at, file=file, problems=problems,
                                      summary="refused: the running configuration is kept",
                                      duration=round(time.monotonic() - started, 4))
                self._report(report)
                return report
            report = await self._apply(new, flags, trigger, at)
            report.file = file
            report.duration = round(time.monotonic() - started, 4)
            self._report(report)
            return report

    def _read(self, schemas: dict[str, dict[str, Any] | None]) -> tuple[SiteConfig, dict[str, bool]]:
        """The new site, validated as at startup (schema, meaning checks, each model's runtime check). Blocking:
        runs in a worker thread."""
        path = self.host.config_path
        if path is None:
            raise ConfigError(["this host was built without a site file: there is nothing to reload"])
        raw = read_yaml(path)
        if not raw:
            # An editor saving in place truncates first: an empty file is taken as half-written, never as "no models"
            raise ConfigError([f"{path}: the file is empty (a reload keeps the running configuration)"], str(path))
        flags = enabled_flags(expand_env(raw, os.environ, []).get("plugins"))
        site = load_site(path, schemas, data=raw)
        self.host.check_models(site.models.values(), "models")
        return site, flags

    async def _apply(self, new: SiteConfig, flags: dict[str, bool], trigger: str, at: float) -> ReloadReport:
        host = self.host
        old = host.site
        diff = site_diff(old, new)
        needs_restart = list(diff.needs_restart)
        if "api_keys" in diff.core_changed and new.api_keys and not old.api_keys and host.key_check_installed is False:
            # a host started without keys has no key check on its routes (none costs nothing per request)
            diff.core_changed.remove("api_keys")
            needs_restart.append("api_keys")
        keep: dict[str, Any] = {key: getattr(old, key) for key in needs_restart}  # running until a restart
        running_flags = enabled_flags(old.plugins)
        plugins = dict(new.plugins)
        switched = [name for name in diff.plugins if flags.get(name, True) != running_flags.get(name, True)]
        for name in switched:
            needs_restart.append(f"plugins.{name}.enabled")
            _keep_section(plugins, old.plugins, name)
        host.replace_site(msgspec.structs.replace(new, plugins=plugins, **keep))
        reconfigured = []
        for name in [n for n in diff.plugins if n not in switched]:
            if self._reconfigure(name, old.plugins.get(name) or {}, new.plugins.get(name) or {}):
                reconfigured.append(name)
            else:
                needs_restart.append(f"plugins.{name}")
                _keep_section(plugins, old.plugins, name)
        if len(reconfigured) != len(diff.plugins):
            host.replace_site(msgspec.structs.replace(host.site, plugins=plugins))
        host.apply_live(old, diff)
        if diff.added or diff.removed or diff.restart or diff.live:
            await host.refresh_models()
        return ReloadReport(ok=True, trigger=trigger, at=at, summary=_summary(diff, reconfigured, needs_restart),
                            added=diff.added, removed=diff.removed, restarted=diff.restart, changed=diff.live,
                            reconfigured=reconfigured, needs_restart=needs_restart)

    def _reconfigure(self, name: str, old: dict[str, Any], new: dict[str, Any]) -> bool:
        """Ask plugin ``name`` to apply its new section live (its ``reconfigure`` hook); False: it cannot."""
        for plugin, call in self.host.per_plugin("reconfigure"):
            if plugin != name:
                continue
            strip = {"enabled"}
            try:
                results = call(host=self.host, name=name, old={k: v for k, v in old.items() if k not in strip},
                               new={k: v for k, v in new.items() if k not in strip})
            except Exception:
                log.exception("plugin %s failed to apply its new settings: it keeps the old ones", name)
                return False
            return any(r is True for r in results)
        return False

    def report_file(self, file: str, trigger: str, problems: list[str], summary: str = "") -> ReloadReport:
        """A plugin read a file it owns again after an edit (discovery's ``discovered.yaml``): its outcome is reported
        as a reload's (``problems`` empty: applied; else refused, each problem with its path, and what was running is
        kept by the plugin)."""
        report = ReloadReport(ok=not problems, trigger=trigger, at=time.time(), file=file, problems=list(problems),
                              summary=summary if not problems else "refused: the running configuration is kept")
        self._report(report)
        return report

    def _report(self, report: ReloadReport) -> None:
        self.last = report
        self.files[report.file] = report
        if not report.ok:
            log.error("reload of %s (%s) refused, the running configuration is kept:\n%s", report.file or "the site",
                      report.trigger, "\n".join(f"  - {p}" for p in report.problems))
        elif report.needs_restart:
            log.warning("reload (%s): %s", report.trigger, report.summary)
        else:
            log.info("reload (%s): %s", report.trigger, report.summary)
        self.host.emit(ConfigReloaded(ok=report.ok, trigger=report.trigger, file=report.file, summary=report.summary,
                                      problems=list(report.problems), needs_restart=list(report.needs_restart),
                                      added=list(report.added), removed=list(report.removed),
                                      restarted=list(report.restarted), ts=report.at))

    def status(self) -> dict[str, Any] | None:
        """``/api/v1/status``'s ``reload``: the last reload tried (``None`` before the first) — or, while a file's last
        edit stands refused, the latest such refusal (a later good edit of another file does not hide it)."""
        refused = [r for r in self.files.values() if not r.ok]
        shown = max(refused, key=lambda r: r.at) if refused else self.last
        return msgspec.to_builtins(shown) if shown is not None else None


def _keep_section(plugins: dict[str, dict[str, Any]], old: dict[str, dict[str, Any]], name: str) -> None:
    if name in old:
        plugins[name] = old[name]
    else:
        plugins.pop(name, None)


def _summary(diff: SiteDiff, reconfigured: list[str], needs_restart: list[str]) -> str:
    parts = [f"{label}: {', '.join(names)}" for label, names in (
        ("added", diff.added), ("removed", diff.removed), ("restarted", diff.restart), ("changed", diff.live),
        ("reconfigured", reconfigured), ("applied", diff.core_changed), ("needs a restart", needs_restart))
        if names]
    return "; ".join(parts) or "nothing changed"
