"""One host's discovery: settings, scanner, catalogue, the cached model specs, and rescans off the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from llama_host.types import ModelsChanged, ModelSpec
from llama_host.watch import watch_files

from .catalogue import Catalogue, StateFileError
from .scan import Scanner, ScanResult, resolve_dirs

if TYPE_CHECKING:
    from llama_host.host import Host

log = logging.getLogger("llama_host.discovery_gguf")

PLUGIN = "discovery_gguf"
STATE_FILE = "discovered.yaml"


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """``plugins.discovery_gguf`` in the site file."""

    #: Folders scanned recursively for ``*.gguf`` (``~`` and ``${VAR}`` expanded; relative to the site file).
    dirs: list[str] = []
    #: How many folder levels below each of ``dirs`` are visited.
    max_depth: int = msgspec.field(default=6)
    #: Seconds between automatic rescans; 0 = only at startup and on ``POST /api/v1/discovery/rescan``.
    rescan_seconds: float = 0.0
    #: The catalogue file; default ``discovered.yaml`` next to the site file (in memory only without a site file).
    state_file: str | None = None
    #: ``params`` given to newly found models (e.g. ``{ctx_size: 8192, n_gpu_layers: 99}``).
    params: dict[str, Any] = {}
    #: Previous versions of the catalogue kept as timestamped backups.
    backups: int = 5
    follow_symlinks: bool = True
    #: Skip files and folders whose name starts with a dot.
    skip_hidden: bool = True
    #: Seconds the host waits at startup for the first scan before serving anyway (it then finishes in the background).
    startup_wait: float = 30.0


class RescanReport(msgspec.Struct, kw_only=True):
    """What ``POST /api/v1/discovery/rescan`` returns."""

    added: list[str] = []
    changed: list[str] = []
    missing: list[str] = []
    #: Files, folders or the state file that could not be used: ``{"path", "message"}``.
    errors: list[dict[str, str]] = []
    #: Files that are not models llama-server can run: ``{"path", "message"}``.
    skipped: list[dict[str, str]] = []
    models: int = 0
    files: int = 0
    read: int = 0
    duration: float = 0.0
    finished_at: float = 0.0


class Discovery:
    """The discovery state of one host. Scans are serialised; the sync part runs in a worker thread."""

    def __init__(self, host: Host, settings: Settings) -> None:
        self.host = host
        self.settings = settings
        base = host.config_path.parent if host.config_path else None
        self.dirs = resolve_dirs(settings.dirs, base)
        self.scanner = Scanner(max_depth=settings.max_depth, follow_symlinks=settings.follow_symlinks,
                               skip_hidden=settings.skip_hidden)
        self.catalogue = Catalogue(self.state_path(host, settings), backups=settings.backups,
                                   default_params=settings.params)
        self.specs: list[ModelSpec] | None = None  # None until the first scan
        self.last: RescanReport | None = None
        self._thread_lock = threading.Lock()
        self._async_lock: asyncio.Lock | None = None
        self._periodic: asyncio.Task[None] | None = None
        self._rescans: set[asyncio.Task[Any]] = set()

    @staticmethod
    def state_path(host: Host, settings: Settings) -> Path | None:
        base = host.config_path.parent if host.config_path else None
        if settings.state_file:
            p = Path(os.path.expandvars(os.path.expanduser(settings.state_file)))
            if not p.is_absolute():
                p = (base or Path.cwd()) / p
            return p
        return base / STATE_FILE if base else None

    # --- the scan (worker thread) -----------------------------------------------------------------------------

    def scan_sync(self) -> RescanReport:
        """Scan, merge into the catalogue, persist it, rebuild the specs. Blocking: call it from a thread."""
        with self._thread_lock:
            started = time.perf_counter()
            errors: list[dict[str, str]] = []
            try:
                self.catalogue.load()
            except StateFileError as exc:
                log.error("discovery: %s (not overwritten until it is fixed)", exc)
                errors.append({"path": str(self.catalogue.path), "message": str(exc)})
            result: ScanResult = self.scanner.scan(self.dirs + self._managed())
            errors.extend({"path": e["path"], "message": e["error"]} for e in result.errors)
            configured = self._configured()
            found = [m for m in result.models if m.key not in configured["paths"]]
            scan_errors = {e["path"]: e["error"] for e in result.errors}
            changes = self.catalogue.merge(found, reserved=configured["names"], errors=scan_errors)

            def merge_again() -> None:  # into a user's edit saved while this scan ran
                nonlocal changes
                changes = self.catalogue.merge(found, reserved=configured["names"], errors=scan_errors)

            try:
                self.catalogue.save(merge_again)
            except OSError as exc:
                log.error("discovery: cannot write %s: %s", self.catalogue.path, exc)
                errors.append({"path": str(self.catalogue.path), "message": f"cannot write: {exc}"})
            metadata = {m.path: m.metadata for m in found}
            specs = []
            previous = {s.name: s for s in self.specs or ()}
            for d in self.catalogue.spec_dicts(metadata, PLUGIN):
                try:
                    specs.append(msgspec.convert(d, ModelSpec))
                except msgspec.ValidationError as exc:
                    errors.append({"path": str(self.catalogue.path), "message": f"models.{d['name']}: {exc}"})
                    if d["name"] in previous:  # an invalid edit of an entry keeps the model as it was
                        specs.append(previous[d["name"]])
            self.specs = specs
            report = RescanReport(
                added=changes.added, changed=changes.changed, missing=changes.missing, errors=errors,
                skipped=[{"path": s["path"], "message": s["reason"]} for s in result.skipped],
                models=sum(not s.missing for s in specs), files=result.files, read=len(result.read),
                duration=round(time.perf_counter() - started, 4), finished_at=time.time())
            self.last = report
            if changes:
                log.info("discovery: %d added, %d changed, %d missing (%d files, %.0f ms)", len(changes.added),
                         len(changes.changed), len(changes.missing), result.files, report.duration * 1000)
            return report

    def _managed(self) -> list[str]:
        """The host's managed folder (pulled models), when it exists and no configured folder holds it already."""
        folder = getattr(self.host.site, "models_dir", None)
        if not folder or not os.path.isdir(folder):
            return []
        real = os.path.realpath(folder)
        for d in self.dirs:
            root = os.path.realpath(d)
            if real == root or real.startswith(root.rstrip(os.sep) + os.sep):
                return []
        return [folder]

    def _configured(self) -> dict[str, set[str]]:
        """Names and real paths of the site file's models: a discovered file that is configured is not listed."""
        names: set[str] = set()
        paths: set[str] = set()
        base = self.host.config_path.parent if self.host.config_path else Path.cwd()
        for name, spec in (getattr(self.host.site, "models", None) or {}).items():
            names.add(name)
            names.update(getattr(spec, "aliases", []) or [])
            path = getattr(spec, "path", None)
            if path:
                p = Path(os.path.expanduser(path))
                paths.add(os.path.realpath(p if p.is_absolute() else base / p))
        return {"names": names, "paths": paths}

    # --- async side -------------------------------------------------------------------------------------------

    async def rescan(self) -> RescanReport:
        """Scan in a worker thread, then refresh the host's models and emit ``ModelsChanged`` when they changed."""
        if self._async_lock is None:
            self._async_lock = asyncio.Lock()
        async with self._async_lock:
            before = self._fingerprint()
            report = await asyncio.to_thread(self.scan_sync)
            if self._fingerprint() != before:
                await self.host.refresh_models()
            if report.added or report.changed or report.missing:
                self.host.emit(ModelsChanged(added=list(report.added), changed=list(report.changed),
                                             missing=list(report.missing)))
            return report

    def _fingerprint(self) -> bytes | None:
        return None if self.specs is None else msgspec.json.encode(self.specs)

    async def periodic(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self.rescan()
            except Exception:
                log.exception("discovery: periodic rescan failed")

    async def state_file_changed(self, paths: set[Path]) -> None:
        """The state file was edited (or written by a scan): rescan now, so that an edit applies at once (a scan
        reads the edit and writes nothing over it; a file that does not parse is reported and left alone)."""
        if not await asyncio.to_thread(self.catalogue.changed_on_disk):
            return  # a scan's own write
        report = await self.rescan()
        path = str(self.catalogue.path)
        problems = [e["message"] for e in report.errors if e["path"] == path]
        changes = [f"{label}: {', '.join(names)}" for label, names in (
            ("added", report.added), ("changed", report.changed), ("missing", report.missing)) if names]
        # reported as a reload of the site is: the log, /api/v1/status, a config_reloaded event, the dashboard
        self.host.reloader.report_file(path, "file changed", problems, "; ".join(changes) or "rescanned")

    @contextlib.asynccontextmanager
    async def running(self):
        """Startup scan (waited for up to ``startup_wait`` seconds), then periodic rescans until the host stops;
        an edit of the state file is applied at once (the file is watched)."""
        first = asyncio.ensure_future(self.rescan())
        try:
            await asyncio.wait_for(asyncio.shield(first), timeout=self.settings.startup_wait)
        except TimeoutError:
            log.warning("discovery: the first scan takes more than %.0f s; serving while it finishes",
                        self.settings.startup_wait)
        except Exception:
            log.exception("discovery: the first scan failed")
        self._start_periodic()
        watcher = (asyncio.create_task(watch_files([self.catalogue.path], self.state_file_changed))
                   if self.catalogue.path is not None else None)
        try:
            yield self
        finally:
            for task in (watcher, self._periodic, first, *self._rescans):
                if task is not None and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task

    def _start_periodic(self) -> None:
        if self._periodic is not None:
            self._periodic.cancel()
        every = self.settings.rescan_seconds
        self._periodic = asyncio.create_task(self.periodic(every)) if every > 0 else None

    def reconfigure(self, settings: Settings) -> bool:
        """New settings from a reload of the site file: folders, depth, rescan period, default params and the scan
        options apply at once (a rescan follows); another state file or backup count needs a restart (False)."""
        if (settings.state_file, settings.backups) != (self.settings.state_file, self.settings.backups):
            return False
        self.settings = settings
        base = self.host.config_path.parent if self.host.config_path else None
        self.dirs = resolve_dirs(settings.dirs, base)
        self.scanner = Scanner(max_depth=settings.max_depth, follow_symlinks=settings.follow_symlinks,
                               skip_hidden=settings.skip_hidden)
        self.catalogue.default_params = dict(settings.params)
        self._start_periodic()
        task = asyncio.create_task(self.rescan())
        self._rescans.add(task)
        task.add_done_callback(self._rescans.discard)
        return True

    def status(self) -> dict[str, Any]:
        return {
            "dirs": self.dirs,
            "state_file": str(self.catalogue.path) if self.catalogue.path else None,
            "state_file_error": self.catalogue.error,
            "rescan_seconds": self.settings.rescan_seconds,
            "last_scan": msgspec.to_builtins(self.last) if self.last else None,
            "models": [{"name": s.name, "path": s.path, "missing": s.missing, "mmproj": s.mmproj,
                        "architecture": s.metadata.get("architecture"),
                        "parameter_count": s.metadata.get("parameter_count"),
                        "quantization": s.metadata.get("quantization"),
                        "context_length": s.metadata.get("context_length"), "size": s.metadata.get("size")}
                       for s in self.specs or []],
        }
