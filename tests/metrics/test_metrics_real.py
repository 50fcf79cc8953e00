"""Metrics from real requests: the official openai SDK through llama-host to the real llama-server (tiny model)."""

from __future__ import annotations

import time

import httpx
import msgspec
import openai
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llama_host.testing import serve_host, tiny_site

pytestmark = pytest.mark.real
CHAT = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def rh(tiny_model, llama_server_bin, tmp_path_factory):
    broken = tmp_path_factory.mktemp("broken") / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    site = tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path_factory.mktemp("logs")),
                     plugins={"llama_server": {"binary": llama_server_bin}, "metrics": {"sample_seconds": 0.2}})
    site["models"]["broken"] = {"path": str(broken)}
    with serve_host(site, ["openai_api", "llama_server", "metrics"]) as running:
        yield running


@pytest.fixture
def client(rh):
    return openai.OpenAI(base_url=rh.url() + "/v1", api_key="any", max_retries=0)


@pytest.fixture
def http(rh):
    with httpx.Client(base_url=rh.url(), timeout=60) as c:
        yield c


def scrape(http: httpx.Client) -> dict[str, dict[tuple, float]]:
    """Every sample of ``/metrics`` by name, then by sorted labels (parsed with prometheus_client's parser)."""
    r = http.get("/metrics")
    assert r.status_code == 200
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    """Sum of a sample over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for k, v in samples.get(name, {}).items() if want <= set(k))


def until(predicate, timeout: float = 30.0):
    """Poll a condition (a wait, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)
    return value


def test_counters_and_histograms_change_by_exactly_the_requests_sent(client, http):
    client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)  # load before measuring
    before = scrape(http)
    replies = [client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=n) for n in (3, 5, 8)]
    stream = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=6, stream=True,
                                                 stream_options={"include_usage": True}))
    completions = client.completions.create(model="tiny", prompt="once upon a time", max_tokens=4)
    after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return total(after, name, model="tiny", **labels) - total(before, name, model="tiny", **labels)

    timings = [r.model_extra["timings"] for r in replies] + [stream[-1].model_extra["timings"]]
    timings.append(completions.model_extra["timings"])
    assert delta("llama_host_requests_total", surface="openai_api", status="200") == 5
    assert delta("llama_host_requests_total", status="200", endpoint="chat") == 4
    assert delta("llama_host_requests_total", status="200", endpoint="completions") == 1
    assert delta("llama_host_request_errors_total") == 0
    for hist in ("request_duration_seconds", "time_to_first_token_seconds", "generation_tokens_per_second",
                 "queue_wait_seconds"):
        assert delta(f"llama_host_{hist}_count", surface="openai_api") == 5, hist
        assert delta(f"llama_host_{hist}_bucket", surface="openai_api", le="+Inf") == 5, hist
    assert delta("llama_host_generation_tokens_per_second_sum") == pytest.approx(
        sum(t["predicted_per_second"] for t in timings))
    assert delta("llama_host_completion_tokens_total") == sum(t["predicted_n"] for t in timings) == 3 + 5 + 8 + 6 + 4
    usage_prompt = [r.usage.prompt_tokens for r in replies] + [stream[-1].usage.prompt_tokens,
                                                                completions.usage.prompt_tokens]
    assert delta("llama_host_prompt_tokens_total") == sum(usage_prompt)
    assert total(after, "llama_host_requests_in_flight", model="tiny") == 0


def test_activity_matches_the_runners_timings(client, http):
    reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=7)
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=5, stream=True))
    [streamed, plain] = http.get("/api/v1/activity", params={"limit": 2, "model": "tiny"}).json()["activity"]
    assert streamed["id"] == plain["id"] + 1

    t = reply.model_extra["timings"]
    assert plain["stream"] is False and plain["status"] == 200 and plain["surface"] == "openai_api"
    assert plain["tokens_per_second"] == t["predicted_per_second"]
    assert plain["completion_tokens"] == t["predicted_n"] == reply.usage.completion_tokens == 7
    assert plain["prompt_tokens"] == reply.usage.prompt_tokens
    assert plain["predicted_ms"] == t["predicted_ms"] and plain["prompt_ms"] == t["prompt_ms"]
    assert plain["stop_reason"] == "length"
    assert 0 < plain["ttft"] <= plain["duration"]

    t = chunks[-1].model_extra["timings"]
    assert streamed["stream"] is True
    assert streamed["tokens_per_second"] == t["predicted_per_second"]
    assert streamed["completion_tokens"] == t["predicted_n"] == 5
    assert 0 < streamed["ttft"] <= streamed["duration"]

    summary = http.get("/api/v1/metrics").json()
    tiny = summary["models"]["tiny"]
    assert tiny["last_tokens_per_second"] == t["predicted_per_second"]
    assert tiny["requests"] >= 2 and tiny["errors"] == 0 and tiny["in_flight"] == 0
    assert tiny["total_tokens"] == tiny["prompt_tokens"] + tiny["completion_tokens"]


def test_metrics_text_parses_with_types(http, client):
    client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=1)
    r = http.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    types = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    assert types["llama_host_request_duration_seconds"] == "histogram"
    assert types["llama_host_time_to_first_token_seconds"] == "histogram"
    assert types["llama_host_generation_tokens_per_second"] == "histogram"
    assert types["llama_host_requests"] == "counter"
    assert types["llama_host_model_loads"] == "counter"
    assert types["llama_host_requests_in_flight"] == "gauge"
    until(lambda: "llama_host_system_memory_total_bytes" in scrape(http))


def test_runner_rss_appears_when_loaded_and_disappears_after_unload(rh, http):
    def runner_series():
        return {k: v for k, v in scrape(http).get("llama_host_runner_resident_memory_bytes", {}).items()
                if ("model", "tiny") in k}

    before = scrape(http)
    assert http.post("/api/v1/models/tiny/load").status_code == 200
    pid = http.get("/api/v1/models/tiny").json()["pid"]
    assert "llama-server" in psutil.Process(pid).name()

    series = until(runner_series)
    assert list(series) == [(("model", "tiny"), ("pid", str(pid)))]
    assert list(series.values())[0] > 1 << 20
    runner = until(lambda: [r for r in http.get("/api/v1/metrics").json()["runners"] if r["model"] == "tiny"])[0]
    assert runner["pid"] == pid and runner["rss"] > 1 << 20 and runner["threads"] >= 1
    assert runner["open_files"] is not None  # regular files: llama-server closes the GGUF once it is mapped
    assert runner["fds"] >= 3  # stdio and its listening socket

    assert http.post("/api/v1/models/tiny/unload").json()["unloaded"] is True
    assert runner_series() == {}
    assert [r for r in http.get("/api/v1/metrics").json()["runners"] if r["model"] == "tiny"] == []
    after = scrape(http)
    key = (("model", "tiny"), ("reason", "requested"))
    assert after["llama_host_model_unloads_total"][key] - before.get("llama_host_model_unloads_total", {}).get(key, 0) == 1
    assert http.get("/api/v1/metrics").json()["models"]["tiny"]["state"] == "unloaded"


def test_failed_load_is_counted(client, http):
    before = total(scrape(http), "llama_host_model_load_failures_total", model="broken")
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="broken", messages=CHAT, max_tokens=1)
    assert info.value.status_code == 503
    assert total(scrape(http), "llama_host_model_load_failures_total", model="broken") == before + 1
    broken = http.get("/api/v1/metrics").json()["models"]["broken"]
    assert broken["state"] == "failed" and broken["failed_loads"] >= 1 and broken["last_error"]
    assert broken["errors"] >= 1
    [last] = http.get("/api/v1/activity", params={"limit": 1, "model": "broken"}).json()["activity"]
    assert last["status"] == 503 and last["error"]


def test_event_stream_carries_a_real_request(rh, client):
    with httpx.Client(base_url=rh.url(), timeout=60) as http, http.stream("GET", "/api/v1/events") as r:
        lines = r.iter_lines()
        assert next(lines) == "event: snapshot"
        assert "models" in msgspec.json.decode(next(lines)[6:])
        reply = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4)
        kind, seen = None, []
        for line in lines:
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                seen.append((kind, msgspec.json.decode(line[6:])))
                if kind == "request_finished":
                    break
    kinds = [k for k, _ in seen if k not in ("system", "runner")]
    assert "request_started" in kinds and kinds[-1] == "request_finished"
    finished = seen[-1][1]
    assert finished["model"] == "tiny" and finished["completion_tokens"] == 4
    assert finished["tokens_per_second"] == reply.model_extra["timings"]["predicted_per_second"]
