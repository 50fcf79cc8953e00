"""The recorder: turns events into counters, histograms, per-model figures and the activity log.

:meth:`Recorder.record` runs on the event loop inside the request path (``track_event``): it only adds to plain
numbers and lists (no locks, no Prometheus objects: those are built from these numbers when scraped, see
``exposition.py``) and hands the event to bounded queues, and never blocks or awaits.
"""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import msgspec

from llama_host.types import (
    ModelFailed,
    ModelLoaded,
    ModelLoading,
    ModelUnloaded,
    RequestFinished,
    RequestStarted,
    RunnerLogDropped,
)

from .sampler import RunnerSample, SystemSample
from .settings import Settings

#: Label used for model names the host does not know (keeps clients from creating unbounded label sets).
OTHER_MODEL = "_other"


class Histogram:
    """Counts per bucket (upper bounds inclusive, the last one is +Inf), sum and count. The request path adds to
    ``counts`` and ``sum`` itself (:meth:`Recorder._request_finished`: four observations per request, without a
    call each); ``count`` is summed when read."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = sorted(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    @property
    def count(self) -> int:
        return sum(self.counts)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """(upper bound, observations at or below it), ending with (inf, count)."""
        total = 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            total += count
            yield bound, total


class RequestSeries:
    """Finished requests of one (model, surface) pair."""

    __slots__ = ("by_status", "errors", "prompt_tokens", "completion_tokens", "duration", "ttft",
                 "tokens_per_second", "queue_wait")

    def __init__(self, settings: Settings) -> None:
        self.by_status: dict[tuple[str, int], int] = {}  # (endpoint, status) -> requests
        self.errors = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.duration = Histogram(settings.duration_buckets)
        self.ttft = Histogram(settings.ttft_buckets)
        self.tokens_per_second = Histogram(settings.tokens_per_second_buckets)
        self.queue_wait = Histogram(settings.duration_buckets)


class ModelStats:
    """One model's lifecycle figures; its request figures are summed from its :class:`RequestSeries`."""

    __slots__ = ("state", "pid", "in_flight", "last_tokens_per_second", "last_request_at", "load_seconds",
                 "last_load_seconds", "loaded_at", "failed_loads", "last_error", "unloads", "log_lines_dropped")

    def __init__(self, settings: Settings) -> None:
        self.state = "unknown"
        self.pid: int | None = None
        self.in_flight = 0
        self.last_tokens_per_second: float | None = None
        self.last_request_at: float | None = None
        self.load_seconds = Histogram(settings.load_buckets)  # its count is the number of loads
        self.last_load_seconds: float | None = None
        self.loaded_at: float | None = None
        self.failed_loads = 0
        self.last_error: str | None = None
        self.unloads: dict[str, int] = {}
        self.log_lines_dropped = 0

    def to_json(self, series: list[RequestSeries]) -> dict[str, Any]:
        def avg(total: float, count: int) -> float | None:
            return total / count if count else None

        requests = sum(sum(s.by_status.values()) for s in series)
        prompt = sum(s.prompt_tokens for s in series)
        completion = sum(s.completion_tokens for s in series)
        return {
            "state": self.state,
            "pid": self.pid,
            "requests": requests,
            "errors": sum(s.errors for s in series),
            "in_flight": self.in_flight,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "avg_duration": avg(sum(s.duration.sum for s in series), requests),
            "avg_ttft": avg(sum(s.ttft.sum for s in series), sum(s.ttft.count for s in series)),
            "avg_queue_wait": avg(sum(s.queue_wait.sum for s in series), requests),
            "avg_tokens_per_second": avg(sum(s.tokens_per_second.sum for s in series),
                                         sum(s.tokens_per_second.count for s in series)),
            "last_tokens_per_second": self.last_tokens_per_second,
            "last_request_at": self.last_request_at,
            "loads": self.load_seconds.count,
            "load_seconds_total": self.load_seconds.sum,
            "last_load_seconds": self.last_load_seconds,
            "loaded_at": self.loaded_at,
            "failed_loads": self.failed_loads,
            "last_error": self.last_error,
            "unloads": dict(self.unloads),
            "log_lines_dropped": self.log_lines_dropped,
        }


def event_kind(event: Any) -> str:
    """The tag of an event Struct (``request_finished``, ...): what ``/api/v1/events`` names it."""
    tag = getattr(getattr(type(event), "__struct_config__", None), "tag", None)
    return tag if isinstance(tag, str) else type(event).__name__


def tokens_per_second(event: RequestFinished) -> float | None:
    """Generation speed: llama-server's own figure, else completion tokens over its generation time."""
    if event.tokens_per_second is not None:
        return event.tokens_per_second
    if event.completion_tokens and event.predicted_ms:
        return event.completion_tokens / event.predicted_ms * 1000.0
    return None


def activity_entry(seq: int, event: RequestFinished) -> dict[str, Any]:
    """One row of ``GET /api/v1/activity``: the ``RequestFinished`` fields plus a sequence ``id``."""
    entry = msgspec.structs.asdict(event)
    entry["id"] = seq
    return entry


class EventHub:
    """Fan-out of events to ``/api/v1/events`` clients, each through its own bounded queue.

    ``publish`` never blocks: a client whose queue is full loses that event (counted in ``dropped``).
    """

    CLOSED = ("closed", None)

    def __init__(self, buffer: int) -> None:
        self.buffer = buffer
        self.dropped = 0
        self._queues: set[asyncio.Queue[tuple[str, Any]]] = set()
        #: subscribed clients: an attribute, not a property (read for every event, two per request)
        self.clients = 0

    def subscribe(self) -> asyncio.Queue[tuple[str, Any]]:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(self.buffer)
        self._queues.add(queue)
        self.clients = len(self._queues)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        self._queues.discard(queue)
        self.clients = len(self._queues)

    def publish(self, kind: str, payload: Any) -> None:
        for queue in self._queues:
            try:
                queue.put_nowait((kind, payload))
            except asyncio.QueueFull:
                self.dropped += 1

    def close(self) -> None:
        """End every stream (the host is stopping)."""
        for queue in self._queues:
            while queue.full():
                queue.get_nowait()
            queue.put_nowait(self.CLOSED)
        self._queues.clear()
        self.clients = 0


class Recorder:
    """Every figure the plugin serves, fed by :meth:`record` (events) and :meth:`update_samples` (the sampler)."""

    def __init__(self, settings: Settings | None = None, *, known_model: Callable[[str], bool] | None = None,
                 sink: Callable[[int, RequestFinished], None] | None = None) -> None:
        self.settings = settings = settings or Settings()
        self.started_at = time.time()
        self.known_model = known_model
        #: Receives each finished request with its activity id (the SQLite writer's queue).
        self.sink = sink
        self.models: dict[str, ModelStats] = {}
        self.series: dict[tuple[str, str], RequestSeries] = {}  # by (model, surface)
        self.activity: deque[tuple[int, RequestFinished]] = deque(maxlen=settings.activity_size)
        self.seq = 0
        self.system: SystemSample | None = None
        self.runners: dict[str, RunnerSample] = {}
        #: The last samples (machine, runners), so a chart opened now starts with some past.
        self.history: deque[tuple[SystemSample | None, list[RunnerSample]]] = deque(maxlen=settings.history_samples)
        self.hub = EventHub(settings.stream_buffer)
        self._handlers: dict[type, Callable[[Any], None]] = {
            ModelLoading: self._model_loading,
            ModelLoaded: self._model_loaded,
            ModelUnloaded: self._model_unloaded,
            ModelFailed: self._model_failed,
            RunnerLogDropped: self._runner_log_dropped,
        }

    # --- recording (event loop, hot path) ---------------------------------------------------------------------

    def record(self, event: Any) -> None:
        """Take one event from ``track_event``."""
        kind = type(event)
        if kind is RequestFinished:  # publishes its own entry
            self._request_finished(event)
            return
        if kind is RequestStarted:
            stats = self.models.get(event.model)
            if stats is None:
                stats = self._stats(self._model(event.model))
            stats.in_flight += 1
        else:
            handler = self._handlers.get(kind)
            if handler is not None:
                handler(event)
        if self.hub.clients:
            self.hub.publish(event_kind(event), event)

    def _model(self, name: str) -> str:
        known = self.known_model
        if known is None or name in self.models or known(name):
            return name
        return OTHER_MODEL

    def _stats(self, name: str) -> ModelStats:
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = ModelStats(self.settings)
        return stats

    def _request_finished(self, event: RequestFinished) -> None:
        # on every request's path: the lookups and the histograms' observations written out (a call each cost ~1%
        # of the host's instructions per relayed request)
        model = event.model
        stats = self.models.get(model)
        if stats is None:
            model = self._model(model)
            stats = self._stats(model)
        if stats.in_flight > 0:
            stats.in_flight -= 1
        stats.last_request_at = event.ts
        key = (model, event.surface)
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = RequestSeries(self.settings)
        status_key = (event.endpoint, event.status)
        series.by_status[status_key] = series.by_status.get(status_key, 0) + 1
        if event.status >= 400 or event.error is not None:
            series.errors += 1
        value = event.duration
        hist = series.duration
        hist.counts[bisect_left(hist.bounds, value)] += 1
        hist.sum += value
        value = event.queue_wait
        hist = series.queue_wait
        hist.counts[bisect_left(hist.bounds, value)] += 1
        hist.sum += value
        ttft = event.ttft
        if ttft is not None:
            hist = series.ttft
            hist.counts[bisect_left(hist.bounds, ttft)] += 1
            hist.sum += ttft
        if event.prompt_tokens:
            series.prompt_tokens += event.prompt_tokens
        if event.completion_tokens:
            series.completion_tokens += event.completion_tokens
        tps = event.tokens_per_second  # llama-server's own figure; else worked out from the counts
        if tps is None:
            tps = tokens_per_second(event)
        if tps is not None:
            hist = series.tokens_per_second
            hist.counts[bisect_left(hist.bounds, tps)] += 1
            hist.sum += tps
            stats.last_tokens_per_second = tps

        self.seq += 1
        self.activity.append((self.seq, event))
        if self.sink is not None:
            self.sink(self.seq, event)
        if self.hub.clients:
            entry = activity_entry(self.seq, event)
            entry["kind"] = "request_finished"
            self.hub.publish("request_finished", entry)

    def _model_loading(self, event: ModelLoading) -> None:
        self._stats(event.model).state = "loading"

    def _model_loaded(self, event: ModelLoaded) -> None:
        stats = self._stats(event.model)
        stats.state = "loaded"
        stats.pid = event.pid
        stats.load_seconds.observe(event.load_seconds)
        stats.last_load_seconds = event.load_seconds
        stats.loaded_at = event.ts

    def _model_unloaded(self, event: ModelUnloaded) -> None:
        stats = self._stats(event.model)
        stats.state = "unloaded"
        stats.pid = None
        stats.loaded_at = None
        stats.unloads[event.reason] = stats.unloads.get(event.reason, 0) + 1
        self.runners.pop(event.model, None)

    def _model_failed(self, event: ModelFailed) -> None:
        stats = self._stats(event.model)
        # A runner that crashes after loading is announced as unloaded ("crashed") and then failed: not a failed load.
        if stats.state != "unloaded":
            stats.failed_loads += 1
        stats.state = "failed"
        stats.pid = None
        stats.loaded_at = None
        stats.last_error = event.error
        self.runners.pop(event.model, None)

    def _runner_log_dropped(self, event: RunnerLogDropped) -> None:
        self._stats(self._model(event.model)).log_lines_dropped += event.lines

    # --- samples ----------------------------------------------------------------------------------------------

    def update_samples(self, system: SystemSample | None, runners: Iterable[RunnerSample]) -> None:
        """Keep the latest sample of the machine and of each runner, and stream them (event loop)."""
        self.system = system
        self.runners = {r.model: r for r in runners}
        self.history.append((system, list(self.runners.values())))
        if self.hub.clients:
            if system is not None:
                self.hub.publish("system", system)
            for runner in self.runners.values():
                self.hub.publish("runner", runner)

    def loaded_pids(self) -> dict[str, int]:
        """Model -> pid of every runner the events say is loaded."""
        return {name: s.pid for name, s in self.models.items() if s.state == "loaded" and s.pid}

    # --- reading ----------------------------------------------------------------------------------------------

    def seed_activity(self, rows: Iterable[tuple[int, RequestFinished]]) -> None:
        """Put persisted rows (oldest first) in front of the log, and continue their numbering."""
        for seq, event in rows:
            self.activity.append((seq, event))
            self.seq = max(self.seq, seq)

    def recent(self, limit: int, *, model: str | None = None, before: int | None = None) -> list[dict[str, Any]]:
        """The newest finished requests first, at most ``limit``, optionally of one model and older than an id."""
        out = []
        for seq, event in reversed(self.activity):
            if before is not None and seq >= before:
                continue
            if model is not None and event.model != model:
                continue
            out.append(activity_entry(seq, event))
            if len(out) >= limit:
                break
        return out

    def model_series(self, model: str) -> list[RequestSeries]:
        return [s for (m, _), s in self.series.items() if m == model]

    def summary(self) -> dict[str, Any]:
        """The body of ``GET /api/v1/metrics``."""
        models = {name: stats.to_json(self.model_series(name)) for name, stats in sorted(self.models.items())}
        totals = {key: sum(m[key] for m in models.values())
                  for key in ("requests", "errors", "in_flight", "prompt_tokens", "completion_tokens", "total_tokens")}
        return {
            "ts": time.time(),
            "started_at": self.started_at,
            "totals": totals,
            "models": models,
            "runners": sorted(self.runners.values(), key=lambda r: r.model),
            "system": self.system,
            "history": {"system": [s for s, _ in self.history if s is not None],
                        "runners": [r for _, rs in self.history for r in rs]},
            "stream": {"clients": self.hub.clients, "dropped": self.hub.dropped},
        }
