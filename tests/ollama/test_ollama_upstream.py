"""The Ollama surface against a scripted upstream (a ``remote`` model): tool calls from llama-server's stream shape,
mid-stream errors, client disconnects, and what the runner receives. Fast: no llama-server needed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import ollama
import pytest

from llama_host.testing import serve_host

SETTLE_S = 30


@pytest.fixture(scope="module")
def running(fake_upstream) -> Iterator[Any]:
    models = {name: {"runtime": "remote", "url": f"{fake_upstream.url}/{name}"}
              for name in ("toolcalls", "midstream-error", "endless")}
    with serve_host({"models": models}, plugins=["ollama_api", "remote_runtime"]) as running:
        yield running


@pytest.fixture
def client(running) -> Iterator[ollama.Client]:
    with ollama.Client(host=running.url("ollama_api"), timeout=60) as c:
        yield c


def get_weather(city: str, unit: str) -> str:
    """Weather in a city.

    Args:
      city: the city
      unit: C or F
    """
    return "sunny"


def test_tool_call_stream_reaches_the_client_as_objects(client, fake_upstream):
    parts = list(client.chat("toolcalls", messages=[{"role": "user", "content": "weather in Paris?"}],
                             tools=[get_weather], stream=True))
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert len(calls) == 1
    assert calls[0].function.name == "get_weather"
    assert calls[0].function.arguments == {"city": "Paris", "unit": "C"}
    final = parts[-1]
    assert final.done and final.done_reason == "stop" and final.message.content == ""
    assert final.prompt_eval_count == 31 and final.eval_count == 14
    assert final.prompt_eval_duration == 2_500_000 and final.eval_duration == 3_500_000

    sent = fake_upstream.bodies("toolcalls")[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}
    assert sent["tools"][0]["function"]["name"] == "get_weather"
    assert sent["tools"][0]["function"]["parameters"]["required"] == ["city", "unit"]


def test_tool_call_round_trip_non_stream(client, fake_upstream):
    r = client.chat("toolcalls", messages=[{"role": "user", "content": "weather in Paris?"}], tools=[get_weather])
    (call,) = r.message.tool_calls
    assert call.function.arguments == {"city": "Paris", "unit": "C"}
    # the application runs the tool and sends the call and its result back
    history = [{"role": "user", "content": "weather in Paris?"}, r.message,
               {"role": "tool", "content": "sunny", "tool_name": call.function.name}]
    client.chat("toolcalls", messages=history, tools=[get_weather], options={"temperature": 0.1, "num_predict": 9},
                format="json", keep_alive="1m")
    sent = fake_upstream.bodies("toolcalls")[-1]
    assistant, tool = sent["messages"][1], sent["messages"][2]
    assert assistant["role"] == "assistant"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"city": "Paris", "unit": "C"}
    assert tool == {"role": "tool", "content": "sunny", "tool_call_id": assistant["tool_calls"][0]["id"],
                    "name": "get_weather"}
    assert sent["temperature"] == 0.1 and sent["max_tokens"] == 9
    assert sent["response_format"] == {"type": "json_object"}


def test_mid_stream_error_is_an_ndjson_error_line(running, client):
    with httpx.stream("POST", running.url("ollama_api") + "/api/chat", timeout=30,
                      json={"model": "midstream-error", "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status_code == 200
        lines = [line for line in r.read().split(b"\n")[:-1]]
    assert all(line.strip() for line in lines)
    chunks = [json.loads(line) for line in lines]
    assert [c["message"]["content"] for c in chunks[:-1]] == ["Hel", "lo"]
    assert chunks[-1] == {"error": "boom: the slot died"}

    with pytest.raises(ollama.ResponseError, match="boom"):
        list(client.chat("midstream-error", messages=[{"role": "user", "content": "hi"}], stream=True))
    with pytest.raises(ollama.ResponseError) as err:
        client.chat("midstream-error", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 500 and err.value.error == "boom"


def test_client_disconnect_cancels_the_upstream_and_releases_the_model(running, fake_upstream):
    with httpx.stream("POST", running.url("ollama_api") + "/api/generate", timeout=30,
                      json={"model": "endless", "prompt": "go"}) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["response"] == "x"
        assert json.loads(next(lines))["done"] is False
    assert fake_upstream.disconnected.wait(SETTLE_S), "the upstream request was not cancelled"
    deadline = time.monotonic() + SETTLE_S
    while running.host.scheduler.status("endless").in_flight:
        assert time.monotonic() < deadline, "the lease was not released"
        time.sleep(0.02)


def test_api_keys(fake_upstream):
    models = {"toolcalls": {"runtime": "remote", "url": f"{fake_upstream.url}/toolcalls"}}
    with serve_host({"api_keys": ["sekret"], "models": models}, plugins=["ollama_api", "remote_runtime"]) as running:
        base = running.url("ollama_api")
        assert httpx.get(base + "/").text == "Ollama is running"  # liveness stays public
        assert httpx.get(base + "/api/version").status_code == 200
        with ollama.Client(host=base) as anonymous, pytest.raises(ollama.ResponseError) as err:
            anonymous.list()
        assert err.value.status_code == 401 and "API key" in err.value.error
        with ollama.Client(host=base, headers={"Authorization": "Bearer sekret"}) as client:
            assert [m.model for m in client.list().models] == ["toolcalls:latest"]


def test_load_time_options_leave_other_runtimes_alone(client, running, fake_upstream):
    client.chat("toolcalls", messages=[{"role": "user", "content": "hi"}])
    loaded_at = running.host.scheduler.status("toolcalls").loaded_at
    client.chat("toolcalls", messages=[{"role": "user", "content": "hi"}], options={"num_ctx": 333, "num_gpu": 1})
    assert running.host.scheduler.status("toolcalls").loaded_at == loaded_at  # not restarted
    assert "num_ctx" not in fake_upstream.bodies("toolcalls")[-1]
