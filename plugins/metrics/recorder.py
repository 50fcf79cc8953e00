"""The recorder: turns events into counters, histograms, per-model figures and the activity log.

:meth:`Recorder.record` runs on the event loop inside the request path (``track_event``): it only updates in-memory
structures and hands copies to bounded queues, in microseconds, and never blocks or awaits.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from llama_host.types import (
    ModelFailed,
    ModelLoaded,
    ModelLoading,
    ModelUnloaded,
    RequestFinished,
    RequestStarted,
)

from .sampler import RunnerSample, SystemSample
from .settings import Settings

PREFIX = "llama_host"
#: Label used for model names the host does not know (keeps clients from creating unbounded label sets).
OTHER_MODEL = "_other"


@dataclass(slots=True)
class ModelStats:
    """Running totals for one model, as served in ``GET /api/v1/metrics``."""

    state: str = "unknown"
    pid: int | None = None
    requests: int = 0
    errors: int = 0
    in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    duration_sum: float = 0.0
    ttft_sum: float = 0.0
    ttft_count: int = 0
    tokens_per_second_sum: float = 0.0
    tokens_per_second_count: int = 0
    last_tokens_per_second: float | None = None
    queue_wait_sum: float = 0.0
    last_request_at: float | None = None
    loads: int = 0
    load_seconds_sum: float = 0.0
    last_load_seconds: float | None = None
    loaded_at: float | None = None
    failed_loads: int = 0
    last_error: str | None = None
    unloads: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        def avg(total: float, count: int) -> float | None:
            return total / count if count else None

        return {
            "state": self.state,
            "pid": self.pid,
            "requests": self.requests,
            "errors": self.errors,
            "in_flight": self.in_flight,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "avg_duration": avg(self.duration_sum, self.requests),
            "avg_ttft": avg(self.ttft_sum, self.ttft_count),
            "avg_queue_wait": avg(self.queue_wait_sum, self.requests),
            "avg_tokens_per_second": avg(self.tokens_per_second_sum, self.tokens_per_second_count),
            "last_tokens_per_second": self.last_tokens_per_second,
            "last_request_at": self.last_request_at,
            "loads": self.loads,
            "load_seconds_total": self.load_seconds_sum,
            "last_load_seconds": self.last_load_seconds,
            "loaded_at": self.loaded_at,
            "failed_loads": self.failed_loads,
            "last_error": self.last_error,
            "unloads": dict(self.unloads),
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

    @property
    def clients(self) -> int:
        return len(self._queues)

    def subscribe(self) -> asyncio.Queue[tuple[str, Any]]:
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(self.buffer)
        self._queues.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, Any]]) -> None:
        self._queues.discard(queue)

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


class _RequestInstruments:
    """The Prometheus children of one (model, surface) pair, resolved once: ``labels()`` costs a lock and a lookup."""

    __slots__ = ("duration", "ttft", "tokens_per_second", "queue_wait", "prompt_tokens", "completion_tokens", "errors")

    def __init__(self, rec: Recorder, model: str, surface: str) -> None:
        self.duration = rec.duration.labels(model, surface)
        self.ttft = rec.ttft.labels(model, surface)
        self.tokens_per_second = rec.tokens_per_second.labels(model, surface)
        self.queue_wait = rec.queue_wait.labels(model, surface)
        self.prompt_tokens = rec.prompt_tokens.labels(model, surface)
        self.completion_tokens = rec.completion_tokens.labels(model, surface)
        self.errors = rec.errors.labels(model, surface)


class Recorder:
    """Every figure the plugin serves, fed by :meth:`record` (events) and :meth:`update_samples` (the sampler)."""

    def __init__(self, settings: Settings | None = None, *, known_model: Callable[[str], bool] | None = None,
                 sink: Callable[[int, RequestFinished], None] | None = None) -> None:
        settings = settings or Settings()
        self.started_at = time.time()
        self.known_model = known_model
        #: Receives each finished request with its activity id (the SQLite writer's queue).
        self.sink = sink
        self.models: dict[str, ModelStats] = {}
        self.activity: deque[tuple[int, RequestFinished]] = deque(maxlen=settings.activity_size)
        self.seq = 0
        self.system: SystemSample | None = None
        self.runners: dict[str, RunnerSample] = {}
        self.hub = EventHub(settings.stream_buffer)

        reg = self.registry = CollectorRegistry()
        pair = ["model", "surface"]
        self.requests = Counter(f"{PREFIX}_requests", "Finished requests.", ["model", "surface", "endpoint", "status"],
                                registry=reg)
        self.errors = Counter(f"{PREFIX}_request_errors", "Finished requests that failed (status >= 400 or an error).",
                              pair, registry=reg)
        self.prompt_tokens = Counter(f"{PREFIX}_prompt_tokens", "Prompt tokens processed.", pair, registry=reg)
        self.completion_tokens = Counter(f"{PREFIX}_completion_tokens", "Completion tokens generated.", pair,
                                         registry=reg)
        self.duration = Histogram(f"{PREFIX}_request_duration_seconds", "Request duration, first to last byte.", pair,
                                  buckets=settings.duration_buckets, registry=reg)
        self.ttft = Histogram(f"{PREFIX}_time_to_first_token_seconds", "Time from the request to its first token.",
                              pair, buckets=settings.ttft_buckets, registry=reg)
        self.tokens_per_second = Histogram(f"{PREFIX}_generation_tokens_per_second",
                                           "Generation speed of a request (llama-server timings).", pair,
                                           buckets=settings.tokens_per_second_buckets, registry=reg)
        self.queue_wait = Histogram(f"{PREFIX}_queue_wait_seconds",
                                    "Time a request waited for its model to load or for room.", pair,
                                    buckets=settings.duration_buckets, registry=reg)
        self.loads = Counter(f"{PREFIX}_model_loads", "Model loads that succeeded.", ["model"], registry=reg)
        self.load_seconds = Histogram(f"{PREFIX}_model_load_seconds", "Time to start a model until it is healthy.",
                                      ["model"], buckets=settings.load_buckets, registry=reg)
        self.failed_loads = Counter(f"{PREFIX}_model_load_failures", "Model loads that failed.", ["model"],
                                    registry=reg)
        self.unloads = Counter(f"{PREFIX}_model_unloads", "Model unloads by reason.", ["model", "reason"], registry=reg)
        reg.register(_StateCollector(self))
        self._instruments: dict[tuple[str, str], _RequestInstruments] = {}
        self._status_counters: dict[tuple[str, str, str, int], Any] = {}
        self._handlers: dict[type, Callable[[Any], None]] = {
            RequestStarted: self._request_started,
            RequestFinished: self._request_finished,
            ModelLoading: self._model_loading,
            ModelLoaded: self._model_loaded,
            ModelUnloaded: self._model_unloaded,
            ModelFailed: self._model_failed,
        }

    # --- recording (event loop, hot path) ---------------------------------------------------------------------

    def record(self, event: Any) -> None:
        """Take one event from ``track_event``."""
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)
        if self.hub.clients and type(event) is not RequestFinished:
            self.hub.publish(event_kind(event), event)

    def _model(self, name: str) -> str:
        known = self.known_model
        if known is None or name in self.models or known(name):
            return name
        return OTHER_MODEL

    def _stats(self, name: str) -> ModelStats:
        stats = self.models.get(name)
        if stats is None:
            stats = self.models[name] = ModelStats()
        return stats

    def _request_started(self, event: RequestStarted) -> None:
        self._stats(self._model(event.model)).in_flight += 1

    def _request_finished(self, event: RequestFinished) -> None:
        model = self._model(event.model)
        stats = self._stats(model)
        if stats.in_flight > 0:
            stats.in_flight -= 1
        stats.requests += 1
        stats.duration_sum += event.duration
        stats.queue_wait_sum += event.queue_wait
        stats.last_request_at = event.ts
        failed = event.status >= 400 or event.error is not None

        key = (model, event.surface)
        inst = self._instruments.get(key)
        if inst is None:
            inst = self._instruments[key] = _RequestInstruments(self, model, event.surface)
        status_key = (model, event.surface, event.endpoint, event.status)
        counter = self._status_counters.get(status_key)
        if counter is None:
            counter = self._status_counters[status_key] = self.requests.labels(
                model, event.surface, event.endpoint, str(event.status))
        counter.inc()
        inst.duration.observe(event.duration)
        inst.queue_wait.observe(event.queue_wait)
        if failed:
            stats.errors += 1
            inst.errors.inc()
        if event.ttft is not None:
            stats.ttft_sum += event.ttft
            stats.ttft_count += 1
            inst.ttft.observe(event.ttft)
        if event.prompt_tokens:
            stats.prompt_tokens += event.prompt_tokens
            inst.prompt_tokens.inc(event.prompt_tokens)
        if event.completion_tokens:
            stats.completion_tokens += event.completion_tokens
            inst.completion_tokens.inc(event.completion_tokens)
        tps = tokens_per_second(event)
        if tps is not None:
            stats.tokens_per_second_sum += tps
            stats.tokens_per_second_count += 1
            stats.last_tokens_per_second = tps
            inst.tokens_per_second.observe(tps)

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
        stats.loads += 1
        stats.load_seconds_sum += event.load_seconds
        stats.last_load_seconds = event.load_seconds
        stats.loaded_at = event.ts
        self.loads.labels(event.model).inc()
        self.load_seconds.labels(event.model).observe(event.load_seconds)

    def _model_unloaded(self, event: ModelUnloaded) -> None:
        stats = self._stats(event.model)
        stats.state = "unloaded"
        stats.pid = None
        stats.loaded_at = None
        stats.unloads[event.reason] = stats.unloads.get(event.reason, 0) + 1
        self.unloads.labels(event.model, event.reason).inc()
        self.runners.pop(event.model, None)

    def _model_failed(self, event: ModelFailed) -> None:
        stats = self._stats(event.model)
        # A runner that crashes after loading is announced as unloaded ("crashed") and then failed: not a failed load.
        if stats.state != "unloaded":
            stats.failed_loads += 1
            self.failed_loads.labels(event.model).inc()
        stats.state = "failed"
        stats.pid = None
        stats.loaded_at = None
        stats.last_error = event.error
        self.runners.pop(event.model, None)

    # --- samples ----------------------------------------------------------------------------------------------

    def update_samples(self, system: SystemSample | None, runners: Iterable[RunnerSample]) -> None:
        """Keep the latest sample of the machine and of each runner, and stream them (event loop)."""
        self.system = system
        self.runners = {r.model: r for r in runners}
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

    def summary(self) -> dict[str, Any]:
        """The body of ``GET /api/v1/metrics``."""
        models = {name: stats.to_json() for name, stats in sorted(self.models.items())}
        totals = {key: sum(m[key] for m in models.values())
                  for key in ("requests", "errors", "in_flight", "prompt_tokens", "completion_tokens", "total_tokens")}
        return {
            "ts": time.time(),
            "started_at": self.started_at,
            "totals": totals,
            "models": models,
            "runners": sorted(self.runners.values(), key=lambda r: r.model),
            "system": self.system,
            "stream": {"clients": self.hub.clients, "dropped": self.hub.dropped},
        }


class _StateCollector(Collector):
    """Gauges read from the recorder when scraped: in-flight requests, model state, runner and machine samples.

    Reading at scrape time (rather than setting gauges) makes a runner's series vanish with the runner.
    """

    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def describe(self) -> Iterator[Any]:
        return iter(())  # series come and go with models and runners

    def collect(self) -> Iterator[Any]:
        rec = self.rec
        in_flight = GaugeMetricFamily(f"{PREFIX}_requests_in_flight", "Requests being served.", labels=["model"])
        loaded = GaugeMetricFamily(f"{PREFIX}_model_loaded", "1 when the model's runner is up.", labels=["model"])
        for name, stats in list(rec.models.items()):
            in_flight.add_metric([name], stats.in_flight)
            loaded.add_metric([name], 1 if stats.state == "loaded" else 0)
        yield in_flight
        yield loaded
        yield from _runner_families(list(rec.runners.values()))
        if rec.system is not None:
            yield from _system_families(rec.system)
        yield CounterMetricFamily(f"{PREFIX}_metrics_stream_dropped", "Events dropped for slow /api/v1/events clients.",
                                  value=rec.hub.dropped)


def _runner_families(runners: list[RunnerSample]) -> Iterator[Any]:
    labels = ["model", "pid"]
    fams = {
        "cpu_percent": GaugeMetricFamily(f"{PREFIX}_runner_cpu_percent", "CPU use of the runner process (100 = one core).",
                                         labels=labels),
        "rss": GaugeMetricFamily(f"{PREFIX}_runner_resident_memory_bytes", "Resident memory of the runner process.",
                                 labels=labels),
        "vms": GaugeMetricFamily(f"{PREFIX}_runner_virtual_memory_bytes", "Virtual memory of the runner process.",
                                 labels=labels),
        "threads": GaugeMetricFamily(f"{PREFIX}_runner_threads", "Threads of the runner process.", labels=labels),
        "open_files": GaugeMetricFamily(f"{PREFIX}_runner_open_files", "Regular files the runner process holds open.",
                                        labels=labels),
        "fds": GaugeMetricFamily(f"{PREFIX}_runner_open_fds", "File descriptors of the runner process.", labels=labels),
        "gpu_memory": GaugeMetricFamily(f"{PREFIX}_runner_gpu_memory_bytes", "GPU memory used by the runner process.",
                                        labels=labels),
    }
    for runner in runners:
        values = [runner.model, str(runner.pid)]
        for attr, fam in fams.items():
            value = getattr(runner, attr)
            if value is not None:
                fam.add_metric(values, value)
    yield from fams.values()


def _system_families(system: SystemSample) -> Iterator[Any]:
    def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
        return GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)

    yield gauge("system_cpu_percent", "CPU use of the machine (100 = all cores).", system.cpu_percent)
    yield gauge("system_cpu_count", "Logical CPUs of the machine.", system.cpu_count)
    yield gauge("system_memory_total_bytes", "Memory of the machine.", system.memory_total)
    yield gauge("system_memory_available_bytes", "Memory available to new processes.", system.memory_available)
    yield gauge("system_memory_used_bytes", "Memory in use (total - available).", system.memory_used)
    yield gauge("system_swap_used_bytes", "Swap in use.", system.swap_used)
    load = GaugeMetricFamily(f"{PREFIX}_system_load_average", "Load average of the machine.", labels=["period"])
    for period, value in zip(("1m", "5m", "15m"), system.load_average, strict=False):
        load.add_metric([period], value)
    yield load
    yield gauge("host_cpu_percent", "CPU use of the llama-host process (100 = one core).", system.process.cpu_percent)
    yield gauge("host_resident_memory_bytes", "Resident memory of the llama-host process.", system.process.rss)
    if system.gpus is not None:
        labels = ["gpu", "name"]
        used = GaugeMetricFamily(f"{PREFIX}_gpu_memory_used_bytes", "GPU memory in use.", labels=labels)
        total = GaugeMetricFamily(f"{PREFIX}_gpu_memory_total_bytes", "GPU memory.", labels=labels)
        util = GaugeMetricFamily(f"{PREFIX}_gpu_utilization_percent", "GPU utilisation.", labels=labels)
        for gpu in system.gpus:
            values = [str(gpu.index), gpu.name]
            for fam, value in ((used, gpu.memory_used), (total, gpu.memory_total), (util, gpu.utilization)):
                if value is not None:
                    fam.add_metric(values, value)
        yield from (used, total, util)
