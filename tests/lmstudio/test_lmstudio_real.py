"""The LM Studio surface end to end: the real host, the real llama-server and the tiny model.

Each documented field of LM Studio's REST API (v0 and the native v1) is read and its type checked; stats are
compared with the runner's own ``timings`` (as llama-server reports them and as the host's request events carry them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llama_host import hookimpl
from llama_host.testing import serve_host
from llama_host.tinymodel import write_tiny_model
from llama_host.types import RequestFinished

pytestmark = pytest.mark.real

PLUGINS = ["lmstudio_api", "openai_api", "llama_server"]
# Only bounds a wait for something that happens after the reply (a stream's closing event, an idle unload).
SETTLE_S = 30
NUMBER = (int, float)
OPTIONAL_STR = (str, type(None))
STOP_REASONS = {"eosFound", "stopStringFound", "maxPredictedTokensReached", "contextLengthReached", "toolCalls",
                "userStopped", "modelUnloaded", "failed"}


class Recorder:
    """Keeps the host's ``request_finished`` events: they carry the runner's timings for each request."""

    def __init__(self) -> None:
        self.finished: list[RequestFinished] = []

    @hookimpl
    def track_event(self, event: Any) -> None:
        if isinstance(event, RequestFinished):
            self.finished.append(event)

    def last(self, endpoint: str, after: int) -> RequestFinished:
        def found() -> list[RequestFinished]:
            return [e for e in self.finished[after:] if e.endpoint == endpoint]

        wait_for(lambda: bool(found()), f"request_finished for {endpoint}")
        return found()[-1]


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.02)


def check_fields(obj: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    """Every documented field is present with the documented type (a tuple of types, or a set of allowed values)."""
    for name, expected in fields.items():
        assert name in obj, f"{where}: missing documented field {name!r} in {obj}"
        value = obj[name]
        if isinstance(expected, set):
            assert value in expected, f"{where}.{name} = {value!r}, expected one of {expected}"
        elif expected is bool:
            assert isinstance(value, bool), f"{where}.{name} = {value!r} is not a boolean"
        else:  # a JSON number is never a boolean
            assert isinstance(value, expected) and not isinstance(value, bool), (
                f"{where}.{name} = {value!r} is not {expected}")


V0_MODEL = {"id": str, "object": {"model"}, "type": {"llm", "vlm", "embeddings"}, "publisher": str,
            "arch": OPTIONAL_STR, "compatibility_type": {"gguf"}, "quantization": OPTIONAL_STR,
            "state": {"loaded", "not-loaded"}, "max_context_length": int, "capabilities": list}
V0_STATS = {"tokens_per_second": NUMBER, "time_to_first_token": NUMBER, "generation_time": NUMBER,
            "stop_reason": STOP_REASONS}
V0_MODEL_INFO = {"arch": OPTIONAL_STR, "quant": OPTIONAL_STR, "format": {"gguf"}, "context_length": int}
V0_RUNTIME = {"name": str, "version": str, "supported_formats": list}
V1_MODEL = {"type": {"llm", "embedding"}, "publisher": str, "key": str, "display_name": str,
            "quantization": (dict, type(None)), "size_bytes": int, "params_string": OPTIONAL_STR,
            "loaded_instances": list, "max_context_length": int, "format": {"gguf", "mlx", None}}
V1_CHAT_STATS = {"input_tokens": int, "total_output_tokens": int, "reasoning_output_tokens": int,
                 "tokens_per_second": NUMBER, "time_to_first_token_seconds": NUMBER}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("lmstudio-models")
    chat = write_tiny_model(folder / "tiny.gguf", context_length=8192)
    embed = write_tiny_model(folder / "tiny-embed.gguf", name="tiny-embed", embedding=True)
    return chat, embed


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def running(models: tuple[Path, Path], llama_server_bin: str, recorder: Recorder) -> Iterator[Any]:
    chat, embed = models
    config = {
        "scheduler": {"max_loaded": 3, "ttl": 300, "startup_timeout": 60},
        "plugins": {"llama_server": {"binary": llama_server_bin}},
        "models": {
            "tiny": {"path": str(chat), "params": {"ctx_size": 1024}, "aliases": ["tiny-alias"]},
            "tiny-embed": {"path": str(embed), "params": {"ctx_size": 512, "embeddings": True, "pooling": "mean"}},
            # a short context, to run out of it quickly; a long one, to stop a generation halfway
            "tiny-short": {"path": str(chat), "params": {"ctx_size": 256}, "unlisted": True},
            "tiny-long": {"path": str(chat), "params": {"ctx_size": 8192}, "unlisted": True},
        },
    }
    with serve_host(config, plugins=PLUGINS, extra=[("recorder", recorder)]) as running:
        yield running


@pytest.fixture
def client(running: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=running.url("lmstudio_api"), timeout=120) as c:
        yield c


@pytest.fixture
def sdk(running: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=running.url("lmstudio_api") + "/api/v0", api_key="not-needed", max_retries=0)


def unload(running: Any, name: str = "tiny") -> None:
    running.call(running.host.scheduler.unload(name))
    assert running.host.scheduler.status(name).state == "unloaded"


def sse_data(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of an OpenAI-style stream; the last one must be ``[DONE]``."""
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]
    assert payloads and payloads[-1] == "[DONE]", payloads[-3:]
    return [json.loads(p) for p in payloads[:-1]]


def named_events(response: httpx.Response) -> list[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs of an LM Studio v1 stream; each data's ``type`` repeats its event name."""
    assert response.headers["content-type"].startswith("text/event-stream")
    events, name = [], None
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line[len("event: "):]
        elif line.startswith("data: "):
            data = json.loads(line[len("data: "):])
            assert name is not None and data["type"] == name, (name, data)
            events.append((name, data))
            name = None
    return events


# --- v0 models ----------------------------------------------------------------------------------------------------


def test_v0_models_lists_documented_fields(client: httpx.Client) -> None:
    body = client.get("/api/v0/models").json()
    assert body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert set(by_id) == {"tiny", "tiny-embed"}
    for model in body["data"]:
        check_fields(model, V0_MODEL, f"v0 model {model['id']}")
        assert all(isinstance(c, str) for c in model["capabilities"])
    assert by_id["tiny"]["type"] == "llm" and by_id["tiny-embed"]["type"] == "embeddings"
    assert by_id["tiny"]["max_context_length"] > 0


def test_v0_model_state_flips_to_loaded_after_a_request(running: Any, client: httpx.Client) -> None:
    unload(running)
    before = client.get("/api/v0/models/tiny").json()
    check_fields(before, V0_MODEL, "v0 model")
    assert before["id"] == "tiny" and before["state"] == "not-loaded"
    reply = client.post("/api/v0/chat/completions",
                        json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
    assert reply.status_code == 200, reply.text
    assert client.get("/api/v0/models/tiny").json()["state"] == "loaded"
    listed = {m["id"]: m for m in client.get("/api/v0/models").json()["data"]}
    assert listed["tiny"]["state"] == "loaded"


def test_v0_model_by_alias_and_unknown(client: httpx.Client) -> None:
    assert client.get("/api/v0/models/tiny-alias").json()["id"] == "tiny"
    missing = client.get("/api/v0/models/no-such-model")
    assert missing.status_code == 404
    check_fields(missing.json()["error"], {"message": str, "type": str, "param": OPTIONAL_STR, "code": OPTIONAL_STR},
                 "error")


# --- v0 inference -------------------------------------------------------------------------------------------------


def test_v0_chat_with_the_openai_sdk(running: Any, sdk: openai.OpenAI, recorder: Recorder) -> None:
    unload(running)
    seen = len(recorder.finished)
    reply = sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Introduce yourself."}],
                                        max_tokens=4, temperature=0.7)
    assert reply.object == "chat.completion" and reply.choices[0].message.content
    assert reply.usage.completion_tokens == 4
    body = reply.model_dump()
    check_fields(body["stats"], V0_STATS, "stats")
    check_fields(body["model_info"], V0_MODEL_INFO, "model_info")
    check_fields(body["runtime"], V0_RUNTIME, "runtime")
    assert body["model_info"]["context_length"] == 1024
    assert body["runtime"]["supported_formats"] == ["gguf"]
    # the stats are the runner's timings, in LM Studio's units
    timings, stats = body["timings"], body["stats"]
    assert stats["tokens_per_second"] == pytest.approx(timings["predicted_per_second"])
    assert stats["generation_time"] == pytest.approx(timings["predicted_ms"] / 1000)
    assert stats["time_to_first_token"] >= timings["prompt_ms"] / 1000  # + the load this request waited for
    assert stats["stop_reason"] == "maxPredictedTokensReached"
    event = recorder.last("/api/v0/chat/completions", seen)
    assert event.status == 200 and event.surface == "lmstudio_api" and event.model == "tiny"
    assert event.predicted_ms == timings["predicted_ms"] and event.completion_tokens == 4
    assert event.queue_wait > 0  # this request loaded the model
    assert stats["time_to_first_token"] == pytest.approx(event.queue_wait + timings["prompt_ms"] / 1000)


def test_v0_chat_stream_puts_stats_on_the_last_chunk(sdk: openai.OpenAI, client: httpx.Client) -> None:
    chunks = list(sdk.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    last = chunks[-1].model_dump()
    check_fields(last["stats"], V0_STATS, "stream stats")
    check_fields(last["model_info"], V0_MODEL_INFO, "stream model_info")
    check_fields(last["runtime"], V0_RUNTIME, "stream runtime")
    assert last["stats"]["tokens_per_second"] == pytest.approx(last["timings"]["predicted_per_second"])
    assert last["stats"]["generation_time"] == pytest.approx(last["timings"]["predicted_ms"] / 1000)
    assert last["stats"]["stop_reason"] == "maxPredictedTokensReached"
    assert all("stats" not in c.model_dump() for c in chunks[:-1])
    # on the wire: OpenAI SSE closed by [DONE], with the usage chunk (include_usage) carrying the extras
    with client.stream("POST", "/api/v0/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True,
        "stream_options": {"include_usage": True}}) as response:
        payloads = sse_data(response)
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] == 3
    assert payloads[-1]["stats"]["stop_reason"] == "maxPredictedTokensReached"


def test_v0_chat_unlimited_tokens_runs_to_the_context_end(running: Any, sdk: openai.OpenAI) -> None:
    # max_tokens -1 is LM Studio's "no limit"; the tiny model never ends on its own, so the context ends it
    reply = sdk.chat.completions.create(model="tiny-short", messages=[{"role": "user", "content": "hi"}],
                                        max_tokens=-1)
    body = reply.model_dump()
    assert reply.usage.total_tokens == body["model_info"]["context_length"] == 256
    assert body["stats"]["stop_reason"] == "contextLengthReached"
    assert reply.choices[0].finish_reason == "length"
    unload(running, "tiny-short")


def test_v0_completions(client: httpx.Client, sdk: openai.OpenAI) -> None:
    reply = sdk.completions.create(model="tiny", prompt="the meaning of life is", max_tokens=3)
    body = reply.model_dump()
    assert body["object"] == "text_completion" and body["choices"][0]["text"]
    check_fields(body["stats"], V0_STATS, "completion stats")
    check_fields(body["model_info"], V0_MODEL_INFO, "completion model_info")
    check_fields(body["runtime"], V0_RUNTIME, "completion runtime")
    assert body["stats"]["generation_time"] == pytest.approx(body["timings"]["predicted_ms"] / 1000)
    with client.stream("POST", "/api/v0/completions", json={
            "model": "tiny", "prompt": "once upon", "max_tokens": 3, "stream": True}) as response:
        payloads = sse_data(response)
    assert all(p["object"] == "text_completion" for p in payloads)
    check_fields(payloads[-1]["stats"], V0_STATS, "completion stream stats")
    assert payloads[-1]["stats"]["tokens_per_second"] == pytest.approx(payloads[-1]["timings"]["predicted_per_second"])


def test_v0_embeddings(sdk: openai.OpenAI, client: httpx.Client) -> None:
    reply = sdk.embeddings.create(model="tiny-embed", input=["Some text to embed", "more"])  # base64 on the wire
    assert [d.index for d in reply.data] == [0, 1]
    assert len(reply.data[0].embedding) == 64 and all(isinstance(x, float) for x in reply.data[0].embedding)
    raw = client.post("/api/v0/embeddings", json={"model": "tiny-embed", "input": "Some text to embed"}).json()
    assert raw["object"] == "list" and raw["data"][0]["object"] == "embedding"
    assert isinstance(raw["data"][0]["embedding"], list) and isinstance(raw["model"], str)
    check_fields(raw["usage"], {"prompt_tokens": int, "total_tokens": int}, "embedding usage")


def test_v0_errors_in_openai_shape(client: httpx.Client, sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        sdk.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"
    bad = client.post("/api/v0/chat/completions", content=b"{not json")
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    # the runner's own refusal keeps its status: a prompt longer than the context
    long = client.post("/api/v0/chat/completions",
                       json={"model": "tiny", "messages": [{"role": "user", "content": "hi " * 3000}]})
    assert long.status_code == 400
    assert long.json()["error"]["type"] == "invalid_request_error" and "context" in long.json()["error"]["message"]


def test_v0_ttl_overrides_the_idle_time(running: Any, client: httpx.Client) -> None:
    reply = client.post("/api/v0/chat/completions", json={
        "model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1, "ttl": 120})
    assert reply.status_code == 200
    assert running.host.scheduler.status("tiny").ttl == 120
    reply = client.post("/api/v0/completions", json={"model": "tiny", "prompt": "hi", "max_tokens": 1, "ttl": 0})
    assert reply.status_code == 200
    wait_for(lambda: running.host.scheduler.status("tiny").state == "unloaded", "unload after ttl 0")
    assert client.get("/api/v0/models/tiny").json()["state"] == "not-loaded"


# --- v1 -----------------------------------------------------------------------------------------------------------


def test_v1_models_lists_documented_fields(running: Any, client: httpx.Client) -> None:
    unload(running, "tiny-embed")
    client.post("/api/v1/models/load", json={"model": "tiny"}).raise_for_status()
    body = client.get("/api/v1/models").json()
    by_key = {m["key"]: m for m in body["models"]}
    assert set(by_key) == {"tiny", "tiny-embed"}
    for model in body["models"]:
        check_fields(model, V1_MODEL, f"v1 model {model['key']}")
        if model["quantization"] is not None:
            check_fields(model["quantization"], {"name": OPTIONAL_STR, "bits_per_weight": (int, float, type(None))},
                         "quantization")
        assert model["size_bytes"] > 0
    llm, embedding = by_key["tiny"], by_key["tiny-embed"]
    assert llm["type"] == "llm" and embedding["type"] == "embedding"
    check_fields(llm, {"architecture": OPTIONAL_STR, "capabilities": dict, "description": OPTIONAL_STR}, "v1 llm")
    check_fields(llm["capabilities"], {"vision": bool, "trained_for_tool_use": bool}, "capabilities")
    assert "capabilities" not in embedding and "architecture" not in embedding  # absent for embedding models
    assert llm["loaded_instances"] == [{"id": "tiny", "config": {"context_length": 1024}}]
    assert embedding["loaded_instances"] == []


def test_v1_load_and_unload(running: Any, client: httpx.Client) -> None:
    unload(running)
    loaded = client.post("/api/v1/models/load", json={"model": "tiny", "echo_load_config": True})
    assert loaded.status_code == 200, loaded.text
    body = loaded.json()
    check_fields(body, {"type": {"llm"}, "instance_id": str, "load_time_seconds": NUMBER, "status": {"loaded"}},
                 "load")
    assert body["instance_id"] == "tiny" and body["load_time_seconds"] > 0
    assert body["load_config"] == {"context_length": 1024}
    assert running.host.scheduler.status("tiny").state == "loaded"
    assert client.get("/api/v0/models/tiny").json()["state"] == "loaded"
    again = client.post("/api/v1/models/load", json={"model": "tiny"}).json()
    assert again["load_time_seconds"] == 0  # already loaded
    assert "load_config" not in again

    unloaded = client.post("/api/v1/models/unload", json={"instance_id": "tiny"})
    assert unloaded.status_code == 200 and unloaded.json() == {"instance_id": "tiny"}
    assert running.host.scheduler.status("tiny").state == "unloaded"
    assert client.get("/api/v1/models").json()["models"][0]["loaded_instances"] == []
    assert client.post("/api/v1/models/unload", json={"instance_id": "tiny"}).status_code == 404
    assert client.post("/api/v1/models/load", json={"model": "nope"}).status_code == 404

    embed = client.post("/api/v1/models/load", json={"model": "tiny-embed"}).json()
    assert embed["type"] == "embedding" and embed["status"] == "loaded"


def test_v1_load_with_a_context_length_restarts_the_runner(running: Any, client: httpx.Client) -> None:
    client.post("/api/v1/models/load", json={"model": "tiny"}).raise_for_status()
    body = client.post("/api/v1/models/load",
                       json={"model": "tiny", "context_length": 512, "echo_load_config": True}).json()
    assert body["load_time_seconds"] > 0 and body["load_config"] == {"context_length": 512}
    listed = {m["key"]: m for m in client.get("/api/v1/models").json()["models"]}
    assert listed["tiny"]["loaded_instances"][0]["config"]["context_length"] == 512
    client.post("/api/v1/models/unload", json={"instance_id": "tiny"}).raise_for_status()


def test_v1_chat(running: Any, client: httpx.Client, recorder: Recorder) -> None:
    unload(running)
    seen = len(recorder.finished)
    reply = client.post("/api/v1/chat", json={"model": "tiny", "input": "What is the first sentence?",
                                              "system_prompt": "Answer briefly.", "max_output_tokens": 5,
                                              "temperature": 0.7, "top_k": 20})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    check_fields(body, {"model_instance_id": str, "output": list, "stats": dict, "response_id": str}, "v1 chat")
    assert body["model_instance_id"] == "tiny" and body["response_id"].startswith("resp_")
    assert [item["type"] for item in body["output"]] == ["message"]
    check_fields(body["output"][0], {"type": {"message"}, "content": str}, "output item")
    stats = body["stats"]
    check_fields(stats, {**V1_CHAT_STATS, "model_load_time_seconds": NUMBER}, "v1 stats")
    event = recorder.last("/api/v1/chat", seen)
    assert stats["total_output_tokens"] == event.completion_tokens == 5
    assert stats["input_tokens"] == event.prompt_tokens
    assert stats["tokens_per_second"] == pytest.approx(event.tokens_per_second)
    assert stats["time_to_first_token_seconds"] >= event.prompt_ms / 1000
    assert stats["model_load_time_seconds"] > 0

    # continuing the conversation: the earlier turns count as input; a loaded model reports no load time
    follow = client.post("/api/v1/chat", json={"model": "tiny", "input": "And the second?", "max_output_tokens": 2,
                                               "previous_response_id": body["response_id"]}).json()
    assert follow["stats"]["input_tokens"] > stats["input_tokens"]
    assert "model_load_time_seconds" not in follow["stats"]
    assert follow["response_id"] != body["response_id"]
    unstored = client.post("/api/v1/chat", json={"model": "tiny", "input": "x", "max_output_tokens": 1,
                                                 "store": False}).json()
    assert "response_id" not in unstored


def test_v1_chat_stream_events(running: Any, client: httpx.Client) -> None:
    unload(running)
    with client.stream("POST", "/api/v1/chat", json={"model": "tiny", "input": "hello", "max_output_tokens": 4,
                                                      "stream": True}) as response:
        assert response.status_code == 200
        events = named_events(response)
    names = [name for name, _ in events]
    assert names[0] == "chat.start" and names[-1] == "chat.end"
    assert names[1:4] == ["model_load.start", "model_load.progress", "model_load.progress"]
    for name in ("model_load.end", "prompt_processing.start", "prompt_processing.end", "message.start",
                 "message.end"):
        assert names.count(name) == 1, (name, names)
    order = ["chat.start", "model_load.start", "model_load.end", "prompt_processing.start", "prompt_processing.end",
             "message.start", "message.end", "chat.end"]
    assert [n for n in names if n in order] == order
    data = dict(events)  # last of each name
    check_fields(data["chat.start"], {"model_instance_id": {"tiny"}}, "chat.start")
    check_fields(data["model_load.start"], {"model_instance_id": {"tiny"}}, "model_load.start")
    progress = [d["progress"] for n, d in events if n == "model_load.progress"]
    assert progress[0] == 0 and progress[-1] == 1
    check_fields(data["model_load.end"], {"model_instance_id": {"tiny"}, "load_time_seconds": NUMBER},
                 "model_load.end")
    for name, d in events:
        if name == "prompt_processing.progress":
            assert 0 <= d["progress"] <= 1
    deltas = [d["content"] for n, d in events if n == "message.delta"]
    assert deltas and all(isinstance(c, str) for c in deltas)
    result = data["chat.end"]["result"]
    check_fields(result, {"model_instance_id": {"tiny"}, "output": list, "stats": dict, "response_id": str},
                 "chat.end result")
    assert result["output"] == [{"type": "message", "content": "".join(deltas)}]
    check_fields(result["stats"], {**V1_CHAT_STATS, "model_load_time_seconds": NUMBER}, "chat.end stats")
    assert result["stats"]["total_output_tokens"] == 4
    assert result["stats"]["model_load_time_seconds"] == pytest.approx(data["model_load.end"]["load_time_seconds"])

    # a loaded model: no model_load events
    with client.stream("POST", "/api/v1/chat", json={"model": "tiny", "input": "again", "max_output_tokens": 2,
                                                      "stream": True}) as response:
        names = [name for name, _ in named_events(response)]
    assert not [n for n in names if n.startswith("model_load.")]
    assert names[0] == "chat.start" and names[-1] == "chat.end"


def test_v1_chat_stream_reports_runner_errors_as_events(client: httpx.Client) -> None:
    with client.stream("POST", "/api/v1/chat", json={"model": "tiny", "input": "hi " * 3000,
                                                      "stream": True}) as response:
        events = named_events(response)
    names = [name for name, _ in events]
    assert names[0] == "chat.start" and "error" in names and names[-1] == "chat.end"
    error = dict(events)["error"]["error"]
    check_fields(error, {"type": {"invalid_request"}, "message": str}, "error event")
    assert "context" in error["message"]


def test_v1_chat_errors(client: httpx.Client) -> None:
    missing = client.post("/api/v1/chat", json={"model": "nope", "input": "hi"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    no_input = client.post("/api/v1/chat", json={"model": "tiny"})
    assert no_input.status_code == 400 and "input" in no_input.json()["error"]["message"]
    unknown = client.post("/api/v1/chat", json={"model": "tiny", "input": "hi", "previous_response_id": "resp_x"})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "previous_response_id"
    mcp = client.post("/api/v1/chat", json={"model": "tiny", "input": "hi", "integrations": ["mcp/playwright"]})
    assert mcp.status_code == 501 and mcp.json()["error"]["code"] == "not_implemented"


def test_v1_chat_ttl(running: Any, client: httpx.Client) -> None:
    reply = client.post("/api/v1/chat", json={"model": "tiny", "input": "hi", "max_output_tokens": 1, "ttl": 0})
    assert reply.status_code == 200
    wait_for(lambda: running.host.scheduler.status("tiny").state == "unloaded", "unload after ttl 0")


def test_openai_routes_share_the_port(client: httpx.Client) -> None:
    # LM Studio serves OpenAI's /v1 next to its REST API; here they come from the OpenAI surface
    ids = [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert "tiny" in ids


def test_client_disconnect_ends_the_request(running: Any, client: httpx.Client, recorder: Recorder) -> None:
    # no token limit: the runner would go on to the end of its 8192-token context
    for path, body in (
        ("/api/v0/chat/completions", {"model": "tiny-long", "messages": [{"role": "user", "content": "hi"}],
                                      "max_tokens": -1, "stream": True}),
        ("/api/v1/chat", {"model": "tiny-long", "input": "hi", "stream": True}),
    ):
        seen = len(recorder.finished)
        with client.stream("POST", path, json=body) as response:
            for line in response.iter_lines():
                if "content" in line:
                    break  # leave mid-generation
        event = recorder.last(path, seen)
        assert (event.status, event.error) == (499, "client disconnected")
        wait_for(lambda: running.host.scheduler.status("tiny-long").in_flight == 0, "the lease released")
    unload(running, "tiny-long")


def test_api_keys_guard_the_surface(models: tuple[Path, Path], llama_server_bin: str) -> None:
    config = {"api_keys": ["sekrit"], "plugins": {"llama_server": {"binary": llama_server_bin}},
              "models": {"tiny": {"path": str(models[0])}}}
    with serve_host(config, plugins=PLUGINS) as running:
        url = running.url("lmstudio_api")
        denied = httpx.get(url + "/api/v0/models")
        assert denied.status_code == 401
        check_fields(denied.json()["error"], {"message": str, "type": {"authentication_error"}}, "401")
        allowed = httpx.get(url + "/api/v1/models", headers={"Authorization": "Bearer sekrit"})
        assert allowed.status_code == 200 and allowed.json()["models"][0]["key"] == "tiny"


def test_models_described_from_real_gguf_metadata(tmp_path: Path, llama_server_bin: str) -> None:
    """Models found by GGUF discovery in LM Studio's folder layout carry their real metadata into both APIs."""
    home = tmp_path / ".lmstudio" / "models" / "acme"
    for repo in ("Tiny-GGUF", "Embed-GGUF"):
        (home / repo).mkdir(parents=True)
    write_tiny_model(home / "Tiny-GGUF" / "tiny-chat.gguf", context_length=4096)
    write_tiny_model(home / "Embed-GGUF" / "tiny-embed.gguf", name="tiny-embed", embedding=True)
    config = {"plugins": {"llama_server": {"binary": llama_server_bin},
                          "discovery_gguf": {"dirs": [str(home.parent)], "params": {"ctx_size": 512}}}}
    with serve_host(config, plugins=[*PLUGINS, "discovery_gguf"]) as running, \
            httpx.Client(base_url=running.url("lmstudio_api"), timeout=120) as client:
        v0 = {m["id"]: m for m in client.get("/api/v0/models").json()["data"]}
        assert set(v0) == {"tiny-chat", "tiny-embed"}
        chat, embed = v0["tiny-chat"], v0["tiny-embed"]
        check_fields(chat, {**V0_MODEL, "arch": {"llama"}, "quantization": {"F32"}, "publisher": {"acme"}}, "v0")
        assert chat["type"] == "llm" and chat["max_context_length"] == 4096
        assert chat["capabilities"] == ["tool_use"]  # its chat template takes tools
        assert embed["type"] == "embeddings" and embed["capabilities"] == []

        v1 = {m["key"]: m for m in client.get("/api/v1/models").json()["models"]}
        check_fields(v1["tiny-chat"], {**V1_MODEL, "architecture": {"llama"}, "display_name": {"tiny"},
                                       "params_string": str, "publisher": {"acme"}}, "v1")
        assert v1["tiny-chat"]["quantization"] == {"name": "F32", "bits_per_weight": 32}
        assert v1["tiny-chat"]["capabilities"] == {"vision": False, "trained_for_tool_use": True}
        assert v1["tiny-chat"]["size_bytes"] == (home / "Tiny-GGUF" / "tiny-chat.gguf").stat().st_size
        assert v1["tiny-embed"]["type"] == "embedding" and "capabilities" not in v1["tiny-embed"]

        reply = client.post("/api/v0/chat/completions", json={
            "model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).json()
        assert reply["model_info"] == {"arch": "llama", "quant": "F32", "format": "gguf", "context_length": 512}
        listed = {m["key"]: m for m in client.get("/api/v1/models").json()["models"]}
        assert listed["tiny-chat"]["loaded_instances"] == [{"id": "tiny-chat", "config": {"context_length": 512}}]
