"""The plugin in a real Host holding only it (no llama-server): settings, routes, the sampler, SQLite, SSE."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import httpx
import msgspec
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

import llama_host_metrics
from llama_host.errors import ConfigError
from llama_host.host import Host
from llama_host.testing import serve_host
from llama_host.types import ModelLoaded, ModelLoading, ModelUnloaded, RequestFinished, RequestStarted

MODEL = "tiny"


def make_host(tmp_path, port: int = 18000, **settings) -> Host:
    data = {
        "port": port,
        "log_dir": str(tmp_path / "logs"),
        "models": {MODEL: {"path": str(tmp_path / "tiny.gguf"), "runtime": "fake"}},
        "plugins": {"metrics": settings},
    }

    class FakeRuntime:
        @staticmethod
        def register_runtimes(register):
            register("fake", lambda spec, host: None)

    from llama_host import hookimpl

    hookimpl(FakeRuntime.register_runtimes)
    return Host.from_config(data=data, only=["metrics"], extra=[("fake", FakeRuntime)])


def finished(**kw) -> RequestFinished:
    base = dict(surface="openai_api", model=MODEL, endpoint="/v1/chat/completions", status=200, duration=0.25,
                ttft=0.05, prompt_tokens=9, completion_tokens=16, tokens_per_second=640.0)
    return RequestFinished(**{**base, **kw})


def families(text: str) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


@pytest.fixture
def child():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


async def until(predicate, timeout: float = 10.0):
    """Poll until ``predicate()`` is truthy (condition wait, not a timed assertion)."""
    async with asyncio.timeout(timeout):
        while not (value := predicate()):
            await asyncio.sleep(0.02)
    return value


def test_settings_forbid_unknown_fields(tmp_path):
    with pytest.raises(ConfigError) as info:
        make_host(tmp_path, sample_secs=1)
    assert "plugins.metrics" in str(info.value)
    with pytest.raises(ConfigError):
        make_host(tmp_path, activity_size=0)


async def test_endpoints(tmp_path, child):
    host = make_host(tmp_path, sample_seconds=0.05)
    async with host.running():
        app = host.build_apps()[18000]
        async with AsyncTestClient(app, base_url="http://127.0.0.1") as client:
            host.emit(ModelLoading(model=MODEL))
            host.emit(ModelLoaded(model=MODEL, load_seconds=0.3, pid=child.pid))
            for _ in range(2):
                host.emit(RequestStarted(surface="openai_api", model=MODEL, endpoint="/v1/chat/completions"))
                host.emit(finished())
            host.emit(finished(model="no-such-model", status=404, ttft=None, tokens_per_second=None,
                               prompt_tokens=None, completion_tokens=None))

            async def scrape():
                r = await client.get("/metrics")
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/plain")
                return families(r.text)

            fams = await scrape()
            pair = (("model", MODEL), ("surface", "openai_api"))
            assert fams["llama_host_requests_total"][(("endpoint", "/v1/chat/completions"), *pair[:1],
                                                      ("status", "200"), pair[1])] == 2
            assert fams["llama_host_generation_tokens_per_second_count"][pair] == 2
            assert fams["llama_host_completion_tokens_total"][pair] == 32
            assert fams["llama_host_model_loads_total"][(("model", MODEL),)] == 1
            assert (("model", "_other"), ("surface", "openai_api")) in fams["llama_host_request_errors_total"]

            runner = (("model", MODEL), ("pid", str(child.pid)))
            for _ in range(500):
                fams = await scrape()
                if runner in fams.get("llama_host_runner_resident_memory_bytes", {}):
                    break
                await asyncio.sleep(0.02)
            assert fams["llama_host_runner_resident_memory_bytes"][runner] > 0
            assert fams["llama_host_system_memory_total_bytes"][()] > 0

            body = (await client.get("/api/v1/metrics")).json()
            assert body["models"][MODEL]["requests"] == 2
            assert body["models"][MODEL]["state"] == "loaded"
            assert body["models"][MODEL]["pid"] == child.pid
            assert body["totals"]["requests"] == 3
            assert [r["pid"] for r in body["runners"]] == [child.pid]
            assert body["system"]["cpu_count"] >= 1

            act = (await client.get("/api/v1/activity", params={"limit": 2})).json()["activity"]
            assert [a["id"] for a in act] == [3, 2]
            assert act[0]["model"] == "no-such-model" and act[0]["status"] == 404
            act = (await client.get("/api/v1/activity", params={"model": MODEL})).json()["activity"]
            assert [a["id"] for a in act] == [2, 1]
            assert act[0]["tokens_per_second"] == 640.0
            assert (await client.get("/api/v1/activity", params={"limit": 0})).status_code == 400

            host.emit(ModelUnloaded(model=MODEL, reason="requested"))
            fams = await scrape()
            assert runner not in fams.get("llama_host_runner_resident_memory_bytes", {})
            assert fams["llama_host_model_unloads_total"][(("model", MODEL), ("reason", "requested"))] == 1
            assert (await client.get("/api/v1/metrics")).json()["runners"] == []


def test_event_stream(tmp_path):
    """Over a real socket (httpx's ASGI transport buffers whole bodies); events are emitted from this thread."""
    seen: list[tuple[str, dict]] = []
    data = {"log_dir": str(tmp_path / "logs"), "plugins": {"metrics": {"sample_seconds": 0.05}}}
    with serve_host(data, ["metrics"]) as rh, httpx.Client(base_url=rh.url(), timeout=30) as client:
        host = rh.host
        hub = llama_host_metrics.plugin_for(host).recorder.hub
        with client.stream("GET", "/api/v1/events") as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            assert r.headers["cache-control"] == "no-cache"
            kind = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    seen.append((kind, msgspec.json.decode(line[6:])))
                    if kind == "snapshot":
                        host.emit(RequestStarted(surface="openai_api", model=MODEL, endpoint="/v1/x"))
                        host.emit(finished(endpoint="/v1/x"))
                        host.emit(ModelUnloaded(model=MODEL, reason="ttl"))
                    kinds = [k for k, _ in seen]
                    if "model_unloaded" in kinds and "system" in kinds:
                        break
        deadline = time.monotonic() + 10
        while hub.clients and time.monotonic() < deadline:  # the server notices the closed stream
            time.sleep(0.02)
        assert hub.clients == 0
    kinds = [k for k, _ in seen]
    assert kinds[0] == "snapshot"
    assert "totals" in seen[0][1] and seen[0][1]["kind"] == "snapshot"
    events = [(k, d) for k, d in seen if k not in ("system", "runner", "snapshot")]
    assert [k for k, _ in events] == ["request_started", "request_finished", "model_unloaded"]
    assert events[1][1]["id"] == 1 and events[1][1]["kind"] == "request_finished"
    assert events[1][1]["tokens_per_second"] == 640.0
    assert events[2][1] == {"kind": "model_unloaded", "ts": events[2][1]["ts"], "model": MODEL, "reason": "ttl"}
    system = next(d for k, d in seen if k == "system")
    assert system["memory_total"] > 0 and system["kind"] == "system"


async def test_events_from_another_thread_are_recorded_on_the_loop(tmp_path):
    host = make_host(tmp_path, sample_seconds=0)
    rec = llama_host_metrics.plugin_for(host).recorder
    async with host.running():
        t = threading.Thread(target=host.emit, args=(finished(),))
        t.start()
        t.join()
        await until(lambda: rec.summary()["totals"]["requests"] == 1)


async def test_activity_persists_across_restarts(tmp_path):
    db = tmp_path / "metrics" / "activity.db"
    for round_ in range(2):
        host = make_host(tmp_path, sample_seconds=0, activity_db=str(db), activity_size=2, activity_db_rows=4)
        async with host.running():
            for i in range(3):
                host.emit(finished(duration=float(round_ * 10 + i)))
            async with AsyncTestClient(host.build_apps()[18000], base_url="http://127.0.0.1") as client:
                act = (await client.get("/api/v1/activity", params={"limit": 10})).json()["activity"]
        if round_ == 0:
            # Two in memory, the third read back from SQLite (written by then? the writer may lag: accept 2 or 3).
            assert [a["id"] for a in act][:2] == [3, 2]
    # Second run: ids continue; memory holds 2, SQLite the rest up to 4 rows.
    assert [a["id"] for a in act] == [6, 5, 4, 3]
    assert [a["duration"] for a in act] == [12.0, 11.0, 10.0, 2.0]
