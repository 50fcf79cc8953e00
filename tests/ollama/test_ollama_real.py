"""The Ollama surface end to end: the official ``ollama`` client against the real host and the real llama-server."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import pytest

from llama_host.testing import serve_host
from llama_host.tinymodel import write_tiny_model

pytestmark = pytest.mark.real

PLUGINS = ["ollama_api", "openai_api", "llama_server", "discovery_gguf"]
# The host's loop answers within milliseconds; this only bounds a wait for an unload that happens after the reply.
SETTLE_S = 30


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    # The chat model is found by the discovery plugin (with its GGUF metadata); the embedding model is configured.
    discovered = tmp_path_factory.mktemp("discovered")
    configured = tmp_path_factory.mktemp("configured")
    # Without a leading-space prefix the chat template's generation prompt tokenizes as written, which the
    # grammar of format/json_schema requests requires (SentencePiece would add "▁" and the grammar rejects it).
    chat = write_tiny_model(discovered / "tiny.gguf", extra_kv={"tokenizer.ggml.add_space_prefix": False})
    embed = write_tiny_model(configured / "tiny-embed.gguf", name="tiny-embed", embedding=True)
    return chat, embed


@pytest.fixture(scope="module")
def running(models: tuple[Path, Path], llama_server_bin: str) -> Iterator[Any]:
    chat, embed = models
    config = {
        "scheduler": {"max_loaded": 3, "ttl": 300, "startup_timeout": 60},
        "plugins": {"llama_server": {"binary": llama_server_bin},
                    "discovery_gguf": {"dirs": [str(chat.parent)], "params": {"ctx_size": 1024}}},
        "models": {
            "tiny-embed": {"path": str(embed), "params": {"ctx_size": 512, "embeddings": True, "pooling": "mean"}},
        },
    }
    with serve_host(config, plugins=PLUGINS) as running:
        yield running


@pytest.fixture
def client(running: Any) -> Iterator[ollama.Client]:
    with ollama.Client(host=running.url("ollama_api"), timeout=120) as c:
        yield c


def wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.05)


def loaded(client: ollama.Client) -> set[str]:
    return {m.model for m in client.ps().models}


def ndjson_lines(response: httpx.Response) -> list[dict[str, Any]]:
    """Every line of a streamed body: none blank, each one JSON object."""
    assert response.headers["content-type"].startswith("application/x-ndjson")
    body = response.read()
    assert body.endswith(b"\n")
    lines = body.split(b"\n")[:-1]
    assert lines, "empty stream"
    for line in lines:
        assert line.strip(), f"blank NDJSON line in {body!r}"
    return [json.loads(line) for line in lines]


# --- meta ------------------------------------------------------------------------------------------------------------


def test_root_version_and_head(running):
    base = running.url("ollama_api")
    root = httpx.get(base + "/")
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert root.headers["content-type"].startswith("text/plain")
    head = httpx.head(base + "/")
    assert head.status_code == 200 and head.content == b""
    version = httpx.get(base + "/api/version").json()["version"]
    assert tuple(int(p) for p in version.split(".")[:3]) >= (0, 6, 4)
    assert httpx.head(base + "/api/version").status_code == 200
    assert httpx.head(base + "/api/tags").status_code == 200


def test_list_and_show(client):
    listed = {m.model: m for m in client.list().models}
    assert set(listed) >= {"tiny:latest", "tiny-embed:latest"}
    tiny = listed["tiny:latest"]
    assert tiny.size and tiny.size > 100_000
    assert len(tiny.digest) == 64
    assert tiny.details.format == "gguf"
    assert tiny.modified_at is not None

    shown = client.show("tiny")
    assert shown.modelinfo is not None
    assert "completion" in shown.capabilities
    assert shown.parameters == "num_ctx 1024"
    assert client.show("tiny-embed:latest").capabilities == ["embedding"]


def test_show_and_list_read_gguf_metadata(client, running):
    """family, parameter size, quantization and ``<arch>.context_length`` come from the spec's GGUF metadata."""
    assert running.host.scheduler.models["tiny"].source == "discovery_gguf"
    shown = client.show("tiny")
    assert shown.details.family == "llama"
    assert shown.details.quantization_level == "F32"
    assert re.fullmatch(r"\d+(\.\d+)?[KMB]", shown.details.parameter_size)  # ~154K parameters
    assert shown.modelinfo["llama.context_length"] == 2048
    assert shown.modelinfo["general.architecture"] == "llama"
    assert "tools" in shown.capabilities
    assert "<|im_start|>" in shown.template
    listed = {m.model: m for m in client.list().models}
    assert listed["tiny:latest"].details.family == "llama"


# --- generate and chat -----------------------------------------------------------------------------------------------


def test_generate_non_stream(client):
    r = client.generate("tiny", "hello there", options={"num_predict": 5, "temperature": 0})
    assert r.done is True and r.done_reason == "length"
    assert r.response
    assert r.eval_count == 5
    assert r.prompt_eval_count and r.prompt_eval_count > 0
    assert r.total_duration > 0 and r.eval_duration > 0 and r.prompt_eval_duration >= 0
    assert r.model == "tiny"
    dt.datetime.fromisoformat(r.created_at.replace("Z", "+00:00"))


def test_generate_stream(client):
    parts = list(client.generate("tiny", "once upon a time", stream=True, options={"num_predict": 6}))
    assert all(p.done is False for p in parts[:-1]) and parts[-1].done is True
    assert parts[-1].response == "" and parts[-1].done_reason == "length"
    assert parts[-1].eval_count == 6
    assert "".join(p.response for p in parts).strip()
    raw = list(client.generate("tiny", "<s>free text", raw=True, stream=True, options={"num_predict": 4}))
    assert raw[-1].done and raw[-1].eval_count == 4 and "".join(p.response for p in raw)


def test_generate_raw_and_system(client):
    raw = client.generate("tiny", "<s>free text", raw=True, options={"num_predict": 4})
    assert raw.response and raw.eval_count == 4
    with_system = client.generate("tiny", "hi", system="You are terse.", options={"num_predict": 3})
    assert with_system.eval_count == 3


def test_chat_non_stream(client):
    r = client.chat("tiny", messages=[{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}],
                    options={"num_predict": 4})
    assert r.message.role == "assistant" and r.message.content
    assert r.done and r.done_reason == "length" and r.eval_count == 4


def test_chat_stream(client):
    parts = list(client.chat("tiny", messages=[{"role": "user", "content": "hello"}], stream=True,
                             options={"num_predict": 5}))
    assert all(p.message.role == "assistant" for p in parts)
    final = parts[-1]
    assert final.done and final.done_reason == "length" and final.message.content == ""
    assert final.eval_count == 5 and final.total_duration > 0
    assert "".join(p.message.content or "" for p in parts)


def test_streams_are_clean_ndjson_and_stream_defaults_to_true(running):
    base = running.url("ollama_api")
    with httpx.Client(timeout=60) as http:
        for path, body in (("/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}]}),
                           ("/api/generate", {"model": "tiny", "prompt": "hi"})):
            body["options"] = {"num_predict": 8}
            with http.stream("POST", base + path, json=body) as response:  # no "stream": Ollama streams
                assert response.status_code == 200
                chunks = ndjson_lines(response)
            assert len(chunks) >= 2
            assert [c["done"] for c in chunks].count(True) == 1 and chunks[-1]["done"] is True
            if path == "/api/chat":
                assert all("message" in c for c in chunks)
            for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
                        "eval_count", "eval_duration"):
                assert isinstance(chunks[-1][key], int)
        # stream:false is one application/json object
        r = http.post(base + "/api/chat", json={"model": "tiny", "stream": False, "options": {"num_predict": 2},
                                                "messages": [{"role": "user", "content": "hi"}]})
        assert r.headers["content-type"].startswith("application/json") and r.json()["done"] is True


def test_format_json(client):
    r = client.chat("tiny", messages=[{"role": "user", "content": "answer in JSON"}], format="json",
                    options={"num_predict": 64})
    if r.done_reason == "stop":
        assert isinstance(json.loads(r.message.content), dict)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    g = client.generate("tiny", "a number", format=schema, options={"num_predict": 40})
    if g.done_reason == "stop":
        assert isinstance(json.loads(g.response)["n"], int)
    raw = client.generate("tiny", "{", raw=True, format="json", options={"num_predict": 40})
    assert raw.response.lstrip().startswith(("{", "["))


def test_tool_calls_round_trip(client):
    """Tools and a conversation holding a tool call and its result are accepted by the runner's template; the reply
    parses with the official client (the tiny random model answers in text; the parsing of llama-server's tool-call
    chunks is covered with a recorded stream in test_ollama_translate.py)."""

    def get_weather(city: str) -> str:
        """Weather in a city.

        Args:
          city: the city
        """
        return "sunny"

    messages = [
        {"role": "user", "content": "weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    r = client.chat("tiny", messages=messages, tools=[get_weather], options={"num_predict": 6})
    assert r.message.role == "assistant" and r.done
    for call in r.message.tool_calls or []:
        assert isinstance(call.function.arguments, dict)
    parts = list(client.chat("tiny", messages=messages, tools=[get_weather], stream=True,
                             options={"num_predict": 6}))
    assert parts[-1].done


def test_logprobs(client):
    r = client.chat("tiny", messages=[{"role": "user", "content": "hi"}], logprobs=True, top_logprobs=2,
                    options={"num_predict": 3})
    assert len(r.logprobs) == 3
    assert all(len(lp.top_logprobs) == 2 and lp.logprob <= 0 for lp in r.logprobs)
    assert "".join(lp.token for lp in r.logprobs) == r.message.content
    parts = list(client.generate("tiny", "hi", logprobs=True, stream=True, options={"num_predict": 3}))
    tokens = [lp for p in parts for lp in (p.logprobs or [])]
    assert len(tokens) == 3 and all(isinstance(lp.logprob, float) for lp in tokens)


def test_think_is_accepted(client):
    r = client.chat("tiny", messages=[{"role": "user", "content": "hi"}], think=False, options={"num_predict": 2})
    assert r.done and not r.message.thinking


def test_images_are_sent_as_data_urls(client):
    png = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
    with pytest.raises(ollama.ResponseError) as err:  # no projector: llama-server refuses images, cleanly
        client.chat("tiny", messages=[{"role": "user", "content": "what?", "images": [png]}],
                    options={"num_predict": 2})
    assert 400 <= err.value.status_code < 600 and err.value.error


# --- embeddings ------------------------------------------------------------------------------------------------------


def test_embed_and_embeddings(client):
    r = client.embed("tiny-embed", ["first text", "second text"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 64
    assert r.embeddings[0] != r.embeddings[1]
    assert r.prompt_eval_count and r.prompt_eval_count > 0
    single = client.embed("tiny-embed", "first text")
    assert single.embeddings[0] == pytest.approx(r.embeddings[0], abs=1e-5)
    short = client.embed("tiny-embed", "first text", dimensions=8)
    assert len(short.embeddings[0]) == 8
    assert sum(x * x for x in short.embeddings[0]) == pytest.approx(1.0, abs=1e-4)
    assert client.embed("tiny-embed", []).embeddings == []
    legacy = client.embeddings("tiny-embed", "first text")
    assert len(legacy.embedding) == 64
    assert client.embeddings("tiny-embed", "").embedding == []


def test_embedding_and_chat_models_keep_to_their_jobs(client):
    with pytest.raises(ollama.ResponseError) as err:
        client.chat("tiny-embed", messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 400 and "does not support chat" in err.value.error
    # a chat model embeds, as in Ollama: through its own embedding runner (llama_host.variants), not the chat runner
    assert len(client.embed("tiny", "hi").embeddings[0]) == 64


# --- load, unload, keep_alive, ps ------------------------------------------------------------------------------------


def test_load_and_unload_with_empty_requests(client):
    client.generate("tiny", "", keep_alive=0)  # start from unloaded
    assert "tiny:latest" not in loaded(client)
    r = client.generate("tiny", "")
    assert r.done and r.done_reason == "load" and r.response == ""
    assert "tiny:latest" in loaded(client)
    r = client.generate("tiny", "", keep_alive=0)
    assert r.done_reason == "unload"
    assert "tiny:latest" not in loaded(client)

    r = client.chat("tiny", messages=[])
    assert r.done_reason == "load" and r.message.role == "assistant"
    assert "tiny:latest" in loaded(client)
    r = client.chat("tiny", messages=[], keep_alive="0s")
    assert r.done_reason == "unload"
    assert "tiny:latest" not in loaded(client)


def test_keep_alive_sets_expiry_and_zero_unloads_after_the_request(client):
    client.generate("tiny", "hi", keep_alive="10m", options={"num_predict": 1})
    (entry,) = [m for m in client.ps().models if m.model == "tiny:latest"]
    left = (entry.expires_at - dt.datetime.now(dt.UTC)).total_seconds()
    assert 500 < left <= 600
    assert entry.size and entry.size > 0 and entry.context_length == 1024
    assert entry.details.format == "gguf"

    client.generate("tiny", "", keep_alive=-1)
    (entry,) = [m for m in client.ps().models if m.model == "tiny:latest"]
    assert entry.expires_at.year > 2200

    r = client.chat("tiny", messages=[{"role": "user", "content": "bye"}], keep_alive=0, options={"num_predict": 2})
    assert r.done
    wait_for(lambda: "tiny:latest" not in loaded(client), "unloaded after a keep_alive=0 request")


def test_load_time_options_restart_the_runner(client, running):
    client.generate("tiny", "", keep_alive="5m")
    pid = running.host.scheduler.status("tiny").pid
    same = client.generate("tiny", "hi", options={"num_ctx": 1024, "num_predict": 1})
    assert same.done and running.host.scheduler.status("tiny").pid == pid  # same context: no restart
    other = client.generate("tiny", "hi", options={"num_ctx": 512, "num_predict": 1})
    assert other.done
    assert running.host.scheduler.status("tiny").pid != pid
    assert other.load_duration > 0


# --- errors ----------------------------------------------------------------------------------------------------------


def test_unknown_model_is_404(client):
    for call in (lambda: client.generate("nope", "hi"), lambda: client.chat("nope", messages=[
            {"role": "user", "content": "x"}]), lambda: client.show("nope"), lambda: client.embed("nope", "x"),
                 lambda: list(client.chat("nope:7b", messages=[{"role": "user", "content": "x"}], stream=True))):
        with pytest.raises(ollama.ResponseError) as err:
            call()
        assert err.value.status_code == 404
        assert "not found" in err.value.error


def test_bad_requests_are_400(running):
    base = running.url("ollama_api")
    cases = [
        ("/api/generate", b""),
        ("/api/chat", b"{not json"),
        ("/api/chat", b'{"messages": []}'),
        ("/api/generate", b'{"model": "tiny", "prompt": "x", "keep_alive": "5 minutes"}'),
        ("/api/chat", b'{"model": "tiny", "messages": "hi"}'),
        ("/api/generate", b'{"model": "tiny", "prompt": "x", "format": "yaml"}'),
    ]
    for path, body in cases:
        r = httpx.post(base + path, content=body)
        assert r.status_code == 400, (path, body, r.text)
        assert set(r.json()) == {"error"} and r.json()["error"]


def test_model_management_says_what_to_do(client, running):
    """pull/create/copy/delete work (tests/downloads); what cannot be done says why, as a 4xx (push: 501)."""
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("llama3.2")  # an Ollama library name: only Hugging Face names are pulled
    assert err.value.status_code == 400 and "hf.co/" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("tiny")  # discovered outside the managed folder: its file is never deleted
    assert err.value.status_code == 400 and "managed folder" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:
        client.push("tiny")
    assert err.value.status_code == 501 and "hf.co/" in err.value.error
    assert client.pull("tiny").status == "success"  # already here
    r = httpx.get(running.url("ollama_api") + "/api/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_openai_routes_share_the_port(running):
    r = httpx.get(running.url("ollama_api") + "/v1/models")
    assert r.status_code == 200 and {m["id"] for m in r.json()["data"]} >= {"tiny", "tiny-embed"}
