"""Prometheus exposition: metric families built from the recorder's numbers at scrape time.

Nothing here runs on the request path. Building families when scraped (rather than updating Prometheus objects per
event) keeps recording to plain additions, and makes a runner's series vanish with the runner.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .recorder import Histogram, Recorder
from .sampler import RunnerSample, SystemSample

PREFIX = "llama_host"


def registry_for(rec: Recorder) -> CollectorRegistry:
    """A registry of its own (never the global one: a process may run several hosts)."""
    registry = CollectorRegistry()
    registry.register(RecorderCollector(rec))
    return registry


def _buckets(hist: Histogram) -> list[tuple[str, int]]:
    return [(floatToGoString(bound), count) for bound, count in hist.cumulative()]


class RecorderCollector(Collector):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def describe(self) -> Iterator[Any]:
        return iter(())  # series come and go with models and runners

    def collect(self) -> Iterator[Any]:
        yield from _request_families(self.rec)
        yield from _model_families(self.rec)
        yield from _runner_families(list(self.rec.runners.values()))
        if self.rec.system is not None:
            yield from _system_families(self.rec.system)
        yield CounterMetricFamily(f"{PREFIX}_metrics_stream_dropped", "Events dropped for slow /api/v1/events clients.",
                                  value=self.rec.hub.dropped)


def _request_families(rec: Recorder) -> Iterator[Any]:
    pair = ["model", "surface"]
    requests = CounterMetricFamily(f"{PREFIX}_requests", "Finished requests.",
                                   labels=["model", "surface", "endpoint", "status"])
    errors = CounterMetricFamily(f"{PREFIX}_request_errors",
                                 "Finished requests that failed (status >= 400 or an error).", labels=pair)
    prompt = CounterMetricFamily(f"{PREFIX}_prompt_tokens", "Prompt tokens processed.", labels=pair)
    completion = CounterMetricFamily(f"{PREFIX}_completion_tokens", "Completion tokens generated.", labels=pair)
    histograms = {
        "duration": HistogramMetricFamily(f"{PREFIX}_request_duration_seconds",
                                          "Request duration, first to last byte.", labels=pair),
        "ttft": HistogramMetricFamily(f"{PREFIX}_time_to_first_token_seconds",
                                      "Time from the request to its first token.", labels=pair),
        "tokens_per_second": HistogramMetricFamily(f"{PREFIX}_generation_tokens_per_second",
                                                   "Generation speed of a request (llama-server timings).",
                                                   labels=pair),
        "queue_wait": HistogramMetricFamily(f"{PREFIX}_queue_wait_seconds",
                                            "Time a request waited for its model to load or for room.", labels=pair),
    }
    for (model, surface), series in list(rec.series.items()):
        labels = [model, surface]
        for (endpoint, status), count in series.by_status.items():
            requests.add_metric([model, surface, endpoint, str(status)], count)
        errors.add_metric(labels, series.errors)
        prompt.add_metric(labels, series.prompt_tokens)
        completion.add_metric(labels, series.completion_tokens)
        for attr, family in histograms.items():
            hist = getattr(series, attr)
            family.add_metric(labels, _buckets(hist), hist.sum)
    yield from (requests, errors, prompt, completion, *histograms.values())


def _model_families(rec: Recorder) -> Iterator[Any]:
    in_flight = GaugeMetricFamily(f"{PREFIX}_requests_in_flight", "Requests being served.", labels=["model"])
    loaded = GaugeMetricFamily(f"{PREFIX}_model_loaded", "1 when the model's runner is up.", labels=["model"])
    loads = CounterMetricFamily(f"{PREFIX}_model_loads", "Model loads that succeeded.", labels=["model"])
    load_seconds = HistogramMetricFamily(f"{PREFIX}_model_load_seconds", "Time to start a model until it is healthy.",
                                         labels=["model"])
    failures = CounterMetricFamily(f"{PREFIX}_model_load_failures", "Model loads that failed.", labels=["model"])
    unloads = CounterMetricFamily(f"{PREFIX}_model_unloads", "Model unloads by reason.", labels=["model", "reason"])
    log_dropped = CounterMetricFamily(f"{PREFIX}_runner_log_lines_dropped",
                                      "Runner log lines its log file could not take (it logged faster than the disk).",
                                      labels=["model"])
    for name, stats in list(rec.models.items()):
        in_flight.add_metric([name], stats.in_flight)
        loaded.add_metric([name], 1 if stats.state == "loaded" else 0)
        loads.add_metric([name], stats.load_seconds.count)
        load_seconds.add_metric([name], _buckets(stats.load_seconds), stats.load_seconds.sum)
        failures.add_metric([name], stats.failed_loads)
        for reason, count in stats.unloads.items():
            unloads.add_metric([name, reason], count)
        log_dropped.add_metric([name], stats.log_lines_dropped)
    yield from (in_flight, loaded, loads, load_seconds, failures, unloads, log_dropped)


def _runner_families(runners: list[RunnerSample]) -> Iterator[Any]:
    labels = ["model", "pid"]
    fams = {
        "cpu_percent": GaugeMetricFamily(f"{PREFIX}_runner_cpu_percent",
                                         "CPU use of the runner process (100 = one core).", labels=labels),
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


class PeerCollector(Collector):
    """Per peer (``peers:`` in the site file): up, requests sent, failures, requests in flight — read at scrape time
    from the host's peer pool (``host.peers.stats()``)."""

    def __init__(self, host: Any) -> None:
        self.host = host

    def describe(self) -> Iterator[Any]:
        return iter(())

    def collect(self) -> Iterator[Any]:
        pool = getattr(self.host, "peers", None)
        stats = pool.stats() if pool is not None else []
        if not stats:
            return
        up = GaugeMetricFamily(f"{PREFIX}_peer_up", "1 when the peer answered its last check.", labels=["peer"])
        requests = CounterMetricFamily(f"{PREFIX}_peer_requests", "Requests sent to the peer.", labels=["peer"])
        failures = CounterMetricFamily(f"{PREFIX}_peer_failures",
                                       "Requests to the peer that failed (unreachable, cut mid-response).",
                                       labels=["peer"])
        in_flight = GaugeMetricFamily(f"{PREFIX}_peer_in_flight", "Requests in flight at the peer.", labels=["peer"])
        for peer in stats:
            up.add_metric([peer["name"]], 1.0 if peer["up"] else 0.0)
            requests.add_metric([peer["name"]], peer["requests"])
            failures.add_metric([peer["name"]], peer["failures"])
            in_flight.add_metric([peer["name"]], peer["in_flight"])
        yield from (up, requests, failures, in_flight)
