"""One metrics instance per host: the recorder, the sampler task and the optional SQLite store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_host import hookimpl
from llama_host.types import ModelFailed, ModelLoaded, ModelUnloaded

from .exposition import PeerCollector, registry_for
from .recorder import Recorder
from .sampler import Sampler
from .settings import Settings
from .store import ActivityStore

if TYPE_CHECKING:
    from llama_host import Host

log = logging.getLogger(__name__)
NAME = "metrics"
#: Least seconds between two samples, even when load/unload events ask for one sooner.
MIN_SAMPLE_GAP = 0.1
#: Seconds between a load/unload event and the sample it asks for: a cold start's first reply goes first, instead of
#: sharing the CPU with the sampler's thread (bench/README.md, "The hot path, sixth pass": ~0.5 ms of the cold start).
WAKE_DELAY = 0.05
_RUNNER_EVENTS = frozenset((ModelLoaded, ModelUnloaded, ModelFailed))


def db_path(host: Host, settings: Settings) -> Path | None:
    if not settings.activity_db:
        return None
    path = Path(settings.activity_db).expanduser()
    if not path.is_absolute():
        path = (host.config_path.parent if host.config_path else Path.cwd()) / path
    return path


class MetricsPlugin:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.settings: Settings = host.settings(NAME, Settings)
        path = db_path(host, self.settings)
        self.store = ActivityStore(path, self.settings.activity_db_rows) if path else None
        self.recorder = Recorder(self.settings, known_model=self._known_model,
                                 sink=self.store.put if self.store else None)
        self.registry = registry_for(self.recorder)
        self.registry.register(PeerCollector(host))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._wake: asyncio.Event | None = None

    def _known_model(self, name: str) -> bool:
        return name in self.host.scheduler.models

    def track(self, event: Any) -> None:
        """``track_event``: record on the host's event loop (an event from another thread is handed over to it)."""
        if self._loop_thread is not None and threading.get_ident() != self._loop_thread:
            assert self._loop is not None
            self._loop.call_soon_threadsafe(self.track, event)
            return
        self.recorder.record(event)
        if self._wake is not None and type(event) in _RUNNER_EVENTS:
            self._wake.set()  # sample the new (or gone) runner now, not seconds later

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        if self.store is not None:
            try:
                await asyncio.to_thread(self.store.open)
                self.recorder.seed_activity(await asyncio.to_thread(self.store.load_recent,
                                                                    self.settings.activity_size))
            except Exception as exc:  # noqa: BLE001 - metrics never keep the host from starting
                log.error("metrics: cannot use the activity database %s (%s); keeping activity in memory only",
                          self.store.path, exc)
                self.store = self.recorder.sink = None
        sampler_task = None
        closer = asyncio.create_task(self._close_streams_on_stop(), name="metrics-stream-closer")
        if self.settings.sample_seconds > 0:
            self._wake = asyncio.Event()
            sampler_task = asyncio.create_task(self._sample_forever(), name="metrics-sampler")
        try:
            yield
        finally:
            closer.cancel()
            if sampler_task is not None:
                sampler_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sampler_task
            self._wake = None
            self._loop_thread = None  # the loop may close after this: later events are recorded where they come
            self.recorder.hub.close()
            if self.store is not None:
                await asyncio.to_thread(self.store.close)

    async def _close_streams_on_stop(self) -> None:
        """End the live event streams as soon as the host starts stopping, so they don't hold up the shutdown."""
        await self.host.stopping.wait()
        self.recorder.hub.close()

    async def _sample_forever(self) -> None:
        assert self._wake is not None
        sampler = await asyncio.to_thread(Sampler, gpu=self.settings.gpu)
        while True:
            self._wake.clear()
            try:
                system, runners = await asyncio.to_thread(sampler.sample, self.recorder.loaded_pids())
            except Exception:
                log.exception("metrics: sampling failed")
            else:
                # A runner unloaded while the thread was sampling must not come back.
                live = self.recorder.loaded_pids()
                self.recorder.update_samples(system, [r for r in runners if live.get(r.model) == r.pid])
            await asyncio.sleep(MIN_SAMPLE_GAP)
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, self.settings.sample_seconds - MIN_SAMPLE_GAP))
            except TimeoutError:
                continue
            await asyncio.sleep(WAKE_DELAY)


# The plugin module is registered in every host's plugin manager (tests run several hosts): state is kept per host.
_instances: weakref.WeakKeyDictionary[Host, MetricsPlugin] = weakref.WeakKeyDictionary()


#: the last host asked for and its instance: every event of a request asks (a WeakKeyDictionary lookup makes a weak
#: reference each time)
_last: tuple[weakref.ref[Host], MetricsPlugin] | None = None


def plugin_for(host: Host) -> MetricsPlugin:
    """The metrics instance of ``host`` (created on first use)."""
    global _last
    last = _last
    if last is not None and last[0]() is host:
        return last[1]
    plugin = _instances.get(host)
    if plugin is None:
        plugin = _instances[host] = MetricsPlugin(host)
    _last = (weakref.ref(host), plugin)
    return plugin


@hookimpl(specname="track_event")
def track(host: Host, event: Any) -> None:
    """The ``track_event`` implementation (the package exports it under that name): :meth:`MetricsPlugin.track` of
    ``host``'s instance, the last host's taken here without a call to :func:`plugin_for` (two events per request)."""
    last = _last
    (last[1] if last is not None and last[0]() is host else plugin_for(host)).track(event)
