"""The recorder fed directly with events: per-model figures, Prometheus exposition, activity, the event hub."""

from __future__ import annotations


import msgspec
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from llama_host.types import (
    ModelFailed,
    ModelLoaded,
    ModelLoading,
    ModelsChanged,
    ModelUnloaded,
    RequestFinished,
    RequestStarted,
)
from llama_host_metrics.exposition import registry_for
from llama_host_metrics.recorder import OTHER_MODEL, Recorder
from llama_host_metrics.sampler import ProcessSample, RunnerSample, SystemSample
from llama_host_metrics.settings import Settings


def finished(model: str = "m", surface: str = "openai_api", **kw) -> RequestFinished:
    base = dict(surface=surface, model=model, endpoint="/v1/chat/completions", status=200, duration=0.5)
    return RequestFinished(**{**base, **kw})


def samples(rec: Recorder) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, by (sample name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry_for(rec)).decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def system_sample(**kw) -> SystemSample:
    base = dict(ts=1.0, cpu_percent=12.5, cpu_count=2, memory_total=8 << 30, memory_available=6 << 30,
                memory_used=2 << 30, memory_percent=25.0, swap_used=0, load_average=[0.5, 0.4, 0.3],
                process=ProcessSample(pid=1, cpu_percent=1.0, rss=50 << 20, threads=4))
    return SystemSample(**{**base, **kw})


def runner_sample(model: str = "m", pid: int = 4242, **kw) -> RunnerSample:
    base = dict(model=model, pid=pid, ts=1.0, cpu_percent=3.0, rss=18 << 20, vms=100 << 20, threads=3,
                open_files=2, fds=9)
    return RunnerSample(**{**base, **kw})


def test_request_counts_tokens_and_histograms():
    rec = Recorder()
    for _ in range(3):
        rec.record(RequestStarted(surface="openai_api", model="m", endpoint="/v1/chat/completions"))
    rec.record(finished(ttft=0.1, prompt_tokens=7, completion_tokens=16, tokens_per_second=800.0, queue_wait=0.25))
    rec.record(finished(ttft=0.2, prompt_tokens=3, completion_tokens=4, tokens_per_second=400.0))
    rec.record(finished(status=503, error="model_load_failed", duration=0.1))

    stats = rec.summary()["models"]["m"]
    assert stats["requests"] == 3
    assert stats["errors"] == 1
    assert stats["in_flight"] == 0
    assert stats["prompt_tokens"] == 10
    assert stats["completion_tokens"] == 20
    assert stats["total_tokens"] == 30
    assert stats["avg_tokens_per_second"] == pytest.approx(600.0)
    assert stats["last_tokens_per_second"] == 400.0
    assert stats["avg_ttft"] == pytest.approx(0.15)
    assert stats["avg_duration"] == pytest.approx(1.1 / 3)

    s = samples(rec)
    lbl = (("model", "m"), ("surface", "openai_api"))
    ok = (("endpoint", "/v1/chat/completions"), ("model", "m"), ("status", "200"), ("surface", "openai_api"))
    bad = (("endpoint", "/v1/chat/completions"), ("model", "m"), ("status", "503"), ("surface", "openai_api"))
    assert s[("llama_host_requests_total", ok)] == 2
    assert s[("llama_host_requests_total", bad)] == 1
    assert s[("llama_host_request_errors_total", lbl)] == 1
    assert s[("llama_host_prompt_tokens_total", lbl)] == 10
    assert s[("llama_host_completion_tokens_total", lbl)] == 20
    assert s[("llama_host_request_duration_seconds_count", lbl)] == 3
    assert s[("llama_host_request_duration_seconds_sum", lbl)] == pytest.approx(1.1)
    assert s[("llama_host_time_to_first_token_seconds_count", lbl)] == 2
    assert s[("llama_host_generation_tokens_per_second_count", lbl)] == 2
    assert s[("llama_host_generation_tokens_per_second_sum", lbl)] == pytest.approx(1200.0)
    assert s[("llama_host_generation_tokens_per_second_bucket", tuple(sorted(lbl + (("le", "500.0"),))))] == 1
    assert s[("llama_host_queue_wait_seconds_sum", lbl)] == pytest.approx(0.25)
    assert s[("llama_host_requests_in_flight", (("model", "m"),))] == 0


def test_in_flight_follows_started_and_finished():
    rec = Recorder()
    rec.record(RequestStarted(surface="s", model="m", endpoint="/e"))
    rec.record(RequestStarted(surface="s", model="m", endpoint="/e"))
    assert rec.models["m"].in_flight == 2
    assert samples(rec)[("llama_host_requests_in_flight", (("model", "m"),))] == 2
    rec.record(finished(surface="s"))
    assert rec.models["m"].in_flight == 1
    rec.record(finished(surface="s"))
    rec.record(finished(surface="s"))  # a finish without a start never goes below zero
    assert rec.models["m"].in_flight == 0


def test_tokens_per_second_from_predicted_ms_when_missing():
    rec = Recorder()
    rec.record(finished(completion_tokens=50, predicted_ms=100.0))
    assert rec.models["m"].last_tokens_per_second == pytest.approx(500.0)


def test_model_lifecycle():
    rec = Recorder()
    rec.record(ModelLoading(model="m"))
    assert rec.models["m"].state == "loading"
    rec.record(ModelLoaded(model="m", load_seconds=1.5, pid=4242))
    rec.record(ModelUnloaded(model="m", reason="ttl"))
    rec.record(ModelLoaded(model="m", load_seconds=0.5, pid=4343))
    assert rec.loaded_pids() == {"m": 4343}
    rec.record(ModelUnloaded(model="m", reason="evicted"))
    rec.record(ModelUnloaded(model="m", reason="evicted"))
    rec.record(ModelLoading(model="m"))
    rec.record(ModelFailed(model="m", error="boom", log_tail=["x"]))

    stats = rec.summary()["models"]["m"]
    assert stats["state"] == "failed"
    assert stats["loads"] == 2
    assert stats["load_seconds_total"] == pytest.approx(2.0)
    assert stats["last_load_seconds"] == 0.5
    assert stats["failed_loads"] == 1
    assert stats["last_error"] == "boom"
    assert stats["unloads"] == {"ttl": 1, "evicted": 2}
    assert rec.loaded_pids() == {}

    # A crash after loading: unloaded ("crashed"), then failed; it is not a failed load.
    rec.record(ModelLoaded(model="m", load_seconds=0.5, pid=4444))
    rec.record(ModelUnloaded(model="m", reason="crashed"))
    rec.record(ModelFailed(model="m", error="runner exited unexpectedly"))
    stats = rec.summary()["models"]["m"]
    assert stats["failed_loads"] == 1
    assert stats["unloads"]["crashed"] == 1
    assert stats["state"] == "failed"
    assert stats["last_error"] == "runner exited unexpectedly"

    s = samples(rec)
    assert s[("llama_host_model_loads_total", (("model", "m"),))] == 3
    assert s[("llama_host_model_load_seconds_count", (("model", "m"),))] == 3
    assert s[("llama_host_model_load_failures_total", (("model", "m"),))] == 1
    assert s[("llama_host_model_unloads_total", (("model", "m"), ("reason", "evicted")))] == 2
    assert s[("llama_host_model_unloads_total", (("model", "m"), ("reason", "ttl")))] == 1
    assert s[("llama_host_model_unloads_total", (("model", "m"), ("reason", "crashed")))] == 1
    assert s[("llama_host_model_loaded", (("model", "m"),))] == 0


def test_unknown_models_share_one_label():
    rec = Recorder(known_model=lambda name: name == "real")
    rec.record(finished(model="real"))
    rec.record(finished(model="made-up-1", status=404))
    rec.record(finished(model="made-up-2", status=404))
    assert set(rec.models) == {"real", OTHER_MODEL}
    assert rec.summary()["models"][OTHER_MODEL]["requests"] == 2
    # The activity log keeps what the client asked for.
    assert [e["model"] for e in rec.recent(10)] == ["made-up-2", "made-up-1", "real"]


def test_activity_newest_first_bounded_and_filtered():
    rec = Recorder(Settings(activity_size=3))
    for i in range(5):
        rec.record(finished(model="a" if i % 2 else "b", duration=float(i)))
    entries = rec.recent(10)
    assert [e["id"] for e in entries] == [5, 4, 3]
    assert entries[0]["duration"] == 4.0
    assert entries[0]["surface"] == "openai_api"
    assert [e["id"] for e in rec.recent(10, model="a")] == [4]
    assert [e["id"] for e in rec.recent(1, before=5)] == [4]
    msgspec.json.encode(entries)  # JSON-ready


def test_seeded_activity_continues_numbering():
    rec = Recorder()
    rec.seed_activity([(41, finished(duration=1.0)), (42, finished(duration=2.0))])
    rec.record(finished(duration=3.0))
    assert [e["id"] for e in rec.recent(10)] == [43, 42, 41]


def test_sink_gets_each_finished_request():
    got = []
    rec = Recorder(sink=lambda seq, ev: got.append((seq, ev.duration)))
    rec.record(RequestStarted(surface="s", model="m", endpoint="/e"))
    rec.record(finished(duration=0.7))
    assert got == [(1, 0.7)]


def test_samples_exposed_and_runner_gone_after_unload():
    rec = Recorder()
    rec.record(ModelLoaded(model="m", load_seconds=0.1, pid=4242))
    gpu = [dict(index=0, name="H200", memory_used=1 << 30, memory_total=140 << 30, utilization=7.0)]
    system = msgspec.convert({**msgspec.to_builtins(system_sample()), "gpus": gpu, "kind": "system"}, SystemSample)
    rec.update_samples(system, [runner_sample(gpu_memory=None)])

    s = samples(rec)
    r = (("model", "m"), ("pid", "4242"))
    assert s[("llama_host_runner_resident_memory_bytes", r)] == 18 << 20
    assert s[("llama_host_runner_cpu_percent", r)] == 3.0
    assert s[("llama_host_runner_threads", r)] == 3
    assert s[("llama_host_runner_open_files", r)] == 2
    assert ("llama_host_runner_gpu_memory_bytes", r) not in s
    assert s[("llama_host_system_cpu_percent", ())] == 12.5
    assert s[("llama_host_system_memory_total_bytes", ())] == 8 << 30
    assert s[("llama_host_system_load_average", (("period", "5m"),))] == 0.4
    assert s[("llama_host_gpu_memory_used_bytes", (("gpu", "0"), ("name", "H200")))] == 1 << 30
    assert s[("llama_host_gpu_utilization_percent", (("gpu", "0"), ("name", "H200")))] == 7.0
    assert rec.summary()["runners"][0].rss == 18 << 20

    rec.record(ModelUnloaded(model="m", reason="requested"))
    s = samples(rec)
    assert not [k for k in s if k[0].startswith("llama_host_runner_") and "pid" in dict(k[1])]  # the process is gone
    assert s[("llama_host_runner_log_lines_dropped_total", (("model", "m"),))] == 0  # a model's counter stays
    assert rec.summary()["runners"] == []


def test_history_keeps_the_last_samples_for_charts():
    rec = Recorder(Settings(history_samples=2))
    for ts in (1.0, 2.0, 3.0):
        system = msgspec.structs.replace(system_sample(), ts=ts)
        rec.update_samples(system, [msgspec.structs.replace(runner_sample(), ts=ts)])
    history = rec.summary()["history"]
    assert [s.ts for s in history["system"]] == [2.0, 3.0]
    assert [r.ts for r in history["runners"]] == [2.0, 3.0]


def test_no_gpu_series_without_nvidia_smi():
    rec = Recorder()
    rec.update_samples(system_sample(), [])
    assert not [k for k in samples(rec) if k[0].startswith("llama_host_gpu_")]
    assert "gpus" not in msgspec.json.decode(msgspec.json.encode(rec.summary()))["system"]


def test_registries_are_per_instance():
    a, b = Recorder(), Recorder()
    a.record(finished())
    assert registry_for(a) is not registry_for(b)
    assert not [k for k in samples(b) if k[0] == "llama_host_requests_total"]


def test_summary_is_json():
    rec = Recorder()
    rec.record(RequestStarted(surface="s", model="m", endpoint="/e"))
    rec.record(ModelLoaded(model="m", load_seconds=0.1, pid=1))
    rec.update_samples(system_sample(), [runner_sample()])
    body = msgspec.json.decode(msgspec.json.encode(rec.summary()))
    assert body["totals"]["in_flight"] == 1
    assert body["models"]["m"]["state"] == "loaded"
    assert body["runners"][0]["kind"] == "runner"
    assert body["runners"][0]["pid"] == 4242
    assert body["system"]["kind"] == "system"
    assert body["system"]["memory_total"] == 8 << 30
    assert body["stream"] == {"clients": 0, "dropped": 0}


async def test_hub_streams_every_event_and_drops_for_slow_clients():
    rec = Recorder(Settings(stream_buffer=3))
    queue = rec.hub.subscribe()
    rec.record(RequestStarted(surface="s", model="m", endpoint="/e"))
    rec.record(finished(surface="s"))
    rec.record(ModelsChanged(added=["x"]))
    rec.update_samples(system_sample(), [runner_sample()])  # two more: one fits, one is dropped
    got = [queue.get_nowait() for _ in range(queue.qsize())]
    assert [k for k, _ in got] == ["request_started", "request_finished", "models_changed"]
    assert got[1][1]["id"] == 1 and got[1][1]["kind"] == "request_finished"
    assert rec.hub.dropped == 2
    rec.hub.close()
    assert queue.get_nowait() == rec.hub.CLOSED
    assert rec.hub.clients == 0


def test_record_is_cheap():
    """Not a timed assertion: a sanity count that recording does no I/O (runs a few thousand events)."""
    rec = Recorder()
    ev = finished(ttft=0.1, prompt_tokens=7, completion_tokens=16, tokens_per_second=800.0)
    for _ in range(5000):
        rec.record(ev)
    assert rec.summary()["models"]["m"]["requests"] == 5000
    assert len(rec.activity) == 500
