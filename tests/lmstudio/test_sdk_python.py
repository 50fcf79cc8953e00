"""LM Studio's Python SDK (``lmstudio``), unchanged, against the LM Studio port of the real host and llama-server.

What the SDK's README and docs show: list downloaded and loaded models, ``llm.model(name)`` (loading on demand, with a
ttl), ``respond`` and ``complete`` (whole and streamed), stats, cancellation, structured output, model info, context
length, tokenize, embeddings, unload. Stats are compared with what the runner itself reported (the host's
``request_finished`` events carry its ``timings``); loaded state with what the other dialects show.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import lmstudio as lms
import openai
import pytest

from llama_host import hookimpl
from llama_host.testing import RunningHost, serve_host
from llama_host.tinymodel import write_tiny_model
from llama_host.types import RequestFinished

pytestmark = pytest.mark.real

PLUGINS = ["lmstudio_api", "openai_api", "llama_server"]
SETTLE_S = 30


class Recorder:
    def __init__(self) -> None:
        self.finished: list[RequestFinished] = []

    @hookimpl
    def track_event(self, event: Any) -> None:
        if isinstance(event, RequestFinished):
            self.finished.append(event)

    def last(self, endpoint: str, after: int) -> RequestFinished:
        wait_for(lambda: any(e.endpoint == endpoint for e in self.finished[after:]), f"request_finished {endpoint}")
        return [e for e in self.finished[after:] if e.endpoint == endpoint][-1]


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.02)


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str,
            recorder: Recorder) -> Iterator[RunningHost]:
    folder = tmp_path_factory.mktemp("sdk-models")
    chat = write_tiny_model(folder / "tiny.gguf", context_length=32768)
    embed = write_tiny_model(folder / "tiny-embed.gguf", name="tiny-embed", embedding=True)
    broken = folder / "broken.gguf"
    broken.write_bytes(b"GGUF but not really")
    config = {
        "scheduler": {"max_loaded": 3, "ttl": 300, "startup_timeout": 60},
        "plugins": {"llama_server": {"binary": llama_server_bin}},
        "models": {
            "tiny": {"path": str(chat), "params": {"ctx_size": 1024}, "aliases": ["tiny-alias"]},
            "tiny-embed": {"path": str(embed), "params": {"ctx_size": 512, "embeddings": True, "pooling": "mean"}},
            # a long context and one slot: a generation without a limit runs for seconds, to be cancelled
            "tiny-long": {"path": str(chat), "params": {"ctx_size": 32768, "parallel": 1}, "unlisted": True},
            # a context too short for most prompts, and a file that is no model
            "tiny-short": {"path": str(chat), "params": {"ctx_size": 64}, "unlisted": True},
            "broken": {"path": str(broken), "unlisted": True},
        },
    }
    with serve_host(config, plugins=PLUGINS, extra=[("recorder", recorder)]) as rh:
        yield rh


@pytest.fixture(scope="module")
def client(running: RunningHost) -> Iterator[lms.Client]:
    with lms.Client(f"127.0.0.1:{running.port('lmstudio_api')}") as c:
        yield c


def state(running: RunningHost, name: str) -> str:
    return running.host.scheduler.status(name).state


def unload(running: RunningHost, name: str) -> None:
    running.call(running.host.scheduler.unload(name))


def runner_stopped_early(rh: RunningHost, model: str, released_before: int) -> int:
    """Wait for the runner to release its slot after the cancel; the tokens it held then (prompt and generated) —
    far fewer than the 32k context it would have filled had it not stopped."""
    def released() -> list[str]:
        return [line for line in rh.host.scheduler.logs(model).tail(1000) if "stop processing: n_tokens" in line]

    wait_for(lambda: len(released()) > released_before, "llama-server released the slot")
    return int(re.search(r"n_tokens = (\d+)", released()[-1]).group(1))


def releases(rh: RunningHost, model: str) -> int:
    return sum("stop processing: n_tokens" in line for line in rh.host.scheduler.logs(model).tail(1000))


def runner_timings(recorder: Recorder, after: int) -> RequestFinished:
    return recorder.last("/llm predict", after)


def test_greeting_and_model_lists(running: RunningHost, client: lms.Client) -> None:
    assert httpx.get(running.url("lmstudio_api") + "/lmstudio-greeting").json() == {"lmstudio": True}
    assert lms.Client.is_valid_api_host(f"127.0.0.1:{running.port('lmstudio_api')}")
    downloaded = {m.model_key: m for m in client.list_downloaded_models()}
    assert set(downloaded) == {"tiny", "tiny-embed"}  # unlisted models stay out, as in /api/v1/models
    assert downloaded["tiny"].type == "llm" and downloaded["tiny-embed"].type == "embedding"
    assert downloaded["tiny"].path.endswith("tiny.gguf")
    assert [m.model_key for m in client.llm.list_downloaded()] == ["tiny"]
    assert [m.model_key for m in client.embedding.list_downloaded()] == ["tiny-embed"]


def test_model_loads_on_demand_with_ttl_and_the_state_is_the_hosts(running: RunningHost, client: lms.Client) -> None:
    unload(running, "tiny")
    assert client.llm.list_loaded() == []
    model = client.llm.model("tiny", ttl=120)
    assert model.identifier == "tiny" and state(running, "tiny") == "loaded"
    assert running.host.scheduler.status("tiny").ttl == 120  # the SDK's ttl is the model's idle time
    assert [m.identifier for m in client.llm.list_loaded()] == ["tiny"]
    v1 = httpx.get(running.url("lmstudio_api") + "/api/v1/models").json()["models"]
    assert [m["key"] for m in v1 if m["loaded_instances"]] == ["tiny"]  # the REST dialect shows the same
    # already loaded: the ttl of a model the call did not load stays
    assert client.llm.model("tiny-alias", ttl=5).identifier == "tiny"
    assert running.host.scheduler.status("tiny").ttl == 120
    # lms.llm() without a name takes a loaded model
    assert client.llm.model().identifier == "tiny"


def test_the_readmes_convenience_api(running: RunningHost) -> None:
    """The SDK README's own lines, on the default client pointed at this port."""
    lms.configure_default_client(f"127.0.0.1:{running.port('lmstudio_api')}")
    try:
        lms.llm("tiny")
        model = lms.llm()  # an already loaded LLM
        assert model.complete("Once upon a time,", config={"maxTokens": 3}).stats.predicted_tokens_count == 3
        chat = lms.Chat("You are a helpful shopkeeper assisting a foreign traveller")
        chat.add_user_message("My hovercraft is full of eels!")
        response = model.respond(chat, config={"maxTokens": 3})
        chat.add_assistant_response(response)
        assert str(response) == response.content and response.content
        assert "tiny" in [m.identifier for m in lms.list_loaded_models("llm")]
    finally:
        lms.sync_api._reset_default_client()


def test_model_info_and_context_length(running: RunningHost, client: lms.Client) -> None:
    model = client.llm.model("tiny")
    info = model.get_info()
    assert (info.model_key, info.identifier, info.type, info.format) == ("tiny", "tiny", "llm", "gguf")
    props = httpx.get(running.url() + "/upstream/tiny/props").json()
    assert model.get_context_length() == info.context_length == props["default_generation_settings"]["n_ctx"]
    assert model.get_load_config().context_length == info.context_length


def test_load_with_a_context_length(running: RunningHost, client: lms.Client) -> None:
    model = client.llm.load_new_instance("tiny", config={"contextLength": 2048}, ttl=60)
    props = httpx.get(running.url() + "/upstream/tiny/props").json()
    assert props["default_generation_settings"]["n_ctx"] == 2048  # the runner restarted with it
    assert model.get_context_length() == 2048
    assert running.host.scheduler.status("tiny").ttl == 60
    unload(running, "tiny")  # the next load goes back to the configured context


def test_respond_whole_reply_and_stats(client: lms.Client, recorder: Recorder) -> None:
    model = client.llm.model("tiny")
    seen = len(recorder.finished)
    result = model.respond("Hello there", config={"maxTokens": 8, "temperature": 0.5})
    event = runner_timings(recorder, seen)
    assert event.status == 200 and event.completion_tokens == 8
    assert result.content and isinstance(result.content, str)
    assert result.stats.stop_reason == "maxPredictedTokensReached"
    assert result.stats.predicted_tokens_count == 8
    assert result.stats.prompt_tokens_count == event.prompt_tokens
    assert result.stats.total_tokens_count == event.prompt_tokens + 8
    assert result.stats.tokens_per_second == pytest.approx(event.tokens_per_second)
    assert 0 < result.stats.time_to_first_token_sec
    assert result.model_info.model_key == "tiny"
    assert result.prediction_config.max_tokens == 8 and result.prediction_config.temperature == 0.5
    assert result.load_config.context_length == 1024


def test_respond_with_a_chat_history(client: lms.Client) -> None:
    model = client.llm.model("tiny")
    chat = lms.Chat("You are a helpful shopkeeper assisting a foreign traveller")
    chat.add_user_message("My hovercraft is full of eels!")
    first = model.respond(chat, config={"maxTokens": 4})
    chat.add_assistant_response(first)
    chat.add_user_message("I will not buy this record, it is scratched.")
    second = model.respond(chat, config={"maxTokens": 4})
    # the second prompt holds the whole conversation: system, two user turns and the first answer
    assert second.stats.prompt_tokens_count > first.stats.prompt_tokens_count + first.stats.predicted_tokens_count


def test_respond_stream_fragments_make_the_result(client: lms.Client) -> None:
    model = client.llm.model("tiny")
    stream = model.respond_stream("Tell me a story", config={"maxTokens": 12})
    fragments = [f.content for f in stream]
    result = stream.result()
    assert len(fragments) == result.stats.predicted_tokens_count == 12
    assert "".join(fragments) == result.content


def test_complete(running: RunningHost, client: lms.Client, recorder: Recorder) -> None:
    model = client.llm.model("tiny")
    seen = len(recorder.finished)
    result = model.complete("Once upon a time,", config={"maxTokens": 6})
    event = runner_timings(recorder, seen)
    assert result.content and result.stats.predicted_tokens_count == event.completion_tokens == 6
    # raw completion: the prompt is the text alone (after the BOS token), no chat template around it
    bos_and_text = httpx.post(running.url() + "/upstream/tiny/tokenize",
                              json={"content": "Once upon a time,", "add_special": True}).json()["tokens"]
    assert result.stats.prompt_tokens_count == len(bos_and_text) == len(model.tokenize("Once upon a time,")) + 1
    streamed = model.complete_stream("Once upon a time,", config={"maxTokens": 6})
    assert "".join(f.content for f in streamed) == streamed.result().content


def test_structured_output_follows_the_schema(client: lms.Client) -> None:
    model = client.llm.model("tiny")
    schema = {"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}}, "required": ["answer"],
              "additionalProperties": False}
    # the grammar lets the model put some whitespace between the tokens: room for it, the grammar ends the reply
    result = model.respond("Yes or no?", response_format=schema, config={"maxTokens": 400})
    assert result.structured and result.parsed in ({"answer": "yes"}, {"answer": "no"})


def test_cancel_stops_the_generation_at_the_runner(running: RunningHost, client: lms.Client,
                                                   recorder: Recorder) -> None:
    model = client.llm.model("tiny-long")
    seen, before = len(recorder.finished), releases(running, "tiny-long")
    stream = model.respond_stream("Go on forever")  # no token limit: the runner would fill its 32k context
    fragments = []
    for fragment in stream:
        fragments.append(fragment.content)
        if len(fragments) == 3:
            stream.cancel()
    result = stream.result()
    assert result.stats.stop_reason == "userStopped" and result.stats.predicted_tokens_count >= 3
    event = recorder.last("/llm predict", seen)
    assert event.status == 499
    assert runner_stopped_early(running, "tiny-long", before) < 16000
    assert running.host.scheduler.status("tiny-long").in_flight == 0
    unload(running, "tiny-long")


def test_tokenize_and_count_tokens_match_the_runner(running: RunningHost, client: lms.Client) -> None:
    model = client.llm.model("tiny")
    text = "hello world, hello tokens"
    runner = httpx.post(running.url() + "/upstream/tiny/tokenize", json={"content": text}).json()["tokens"]
    assert model.tokenize(text) == runner
    assert model.count_tokens(text) == len(runner)
    assert model.tokenize(["hello", "world"]) == [model.tokenize("hello"), model.tokenize("world")]


def test_apply_prompt_template(client: lms.Client) -> None:
    model = client.llm.model("tiny")
    chat = lms.Chat("be brief")
    chat.add_user_message("hi there")
    formatted = model.apply_prompt_template(chat)
    assert "be brief" in formatted and "hi there" in formatted and formatted != "hi there"


def test_embeddings_match_the_runner(running: RunningHost, client: lms.Client) -> None:
    model = client.embedding.model("tiny-embed")
    vector = model.embed("hello")
    oai = openai.OpenAI(base_url=running.url("lmstudio_api") + "/v1", api_key="unused", max_retries=0)
    expected = oai.embeddings.create(model="tiny-embed", input="hello").data[0].embedding
    assert vector == pytest.approx(expected)
    assert [v == pytest.approx(vector) for v in model.embed(["hello", "hello"])] == [True, True]
    assert model.get_context_length() == 512
    assert [m.identifier for m in client.embedding.list_loaded()] == ["tiny-embed"]


def test_unload(running: RunningHost, client: lms.Client) -> None:
    model = client.llm.model("tiny")
    model.unload()
    assert state(running, "tiny") == "unloaded"
    assert "tiny" not in [m.identifier for m in client.llm.list_loaded()]
    with pytest.raises(lms.LMStudioServerError, match="No loaded model"):
        client.llm.unload("tiny")
    # a handle keeps working: its next call loads the model again, as every dialect does on demand
    assert model.respond("again", config={"maxTokens": 2}).stats.predicted_tokens_count == 2


def test_errors_in_the_sdks_shape(client: lms.Client) -> None:
    with pytest.raises(lms.LMStudioServerError, match="Cannot find a model"):
        client.llm.model("no-such-model")
    with pytest.raises(lms.LMStudioServerError, match="embedding model"):
        client.llm.model("tiny-embed")
    with pytest.raises(lms.LMStudioModelNotFoundError):
        client.llm.get_model_info("no-such-model")
    unknown = client.llm.model("tiny")
    with pytest.raises(lms.LMStudioServerError, match="No Rpc endpoint"):
        client.llm.remote_call("noSuchEndpoint")
    assert unknown.respond("still fine", config={"maxTokens": 1}).stats.predicted_tokens_count == 1


def test_runner_errors_are_the_sdks_errors(running: RunningHost, client: lms.Client) -> None:
    short = client.llm.model("tiny-short")
    with pytest.raises(lms.LMStudioServerError, match="context"):
        short.respond("word " * 200, config={"maxTokens": 4})  # the prompt does not fit 64 tokens
    assert short.respond("hi", config={"maxTokens": 2}).stats.predicted_tokens_count == 2
    with pytest.raises(lms.LMStudioServerError, match="broken"):
        client.llm.model("broken")  # the runner cannot start: its error, with the runner's last log lines
    assert state(running, "broken") == "failed"
    unload(running, "tiny-short")


def test_concurrent_predictions_on_one_socket(client: lms.Client) -> None:
    model = client.llm.model("tiny")
    results: list[int] = []

    def ask() -> None:
        results.append(model.respond("hi", config={"maxTokens": 3}).stats.predicted_tokens_count)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results == [3, 3, 3]


def test_api_keys(tmp_path: Path, llama_server_bin: str) -> None:
    """With ``api_keys`` the socket needs a key: the Python SDK sends one as HTTP credentials (``KEY@host:port``)."""
    model = write_tiny_model(tmp_path / "tiny.gguf")
    config = {"api_keys": ["sekrit"], "plugins": {"llama_server": {"binary": llama_server_bin}},
              "models": {"tiny": {"path": str(model)}}}
    with serve_host(config, plugins=PLUGINS) as rh:
        port = rh.port("lmstudio_api")
        with lms.Client(f"127.0.0.1:{port}") as anonymous, pytest.raises(lms.LMStudioServerError,
                                                                          match="Authentication failed"):
            anonymous.list_downloaded_models()
        with lms.Client(f"wrong@127.0.0.1:{port}") as wrong, pytest.raises(lms.LMStudioServerError):
            wrong.list_downloaded_models()
        with lms.Client(f"sekrit@127.0.0.1:{port}") as keyed:
            assert [m.model_key for m in keyed.list_downloaded_models()] == ["tiny"]


def test_model_facts_are_the_rest_apis(tmp_path: Path, llama_server_bin: str) -> None:
    """Models discovered in LM Studio's folder layout: the SDK shows the facts ``/api/v1/models`` shows."""
    home = tmp_path / ".lmstudio" / "models" / "acme"
    for repo in ("Tiny-GGUF", "Embed-GGUF"):
        (home / repo).mkdir(parents=True)
    write_tiny_model(home / "Tiny-GGUF" / "tiny-chat.gguf", context_length=4096)
    write_tiny_model(home / "Embed-GGUF" / "tiny-embed.gguf", name="tiny-embed", embedding=True)
    config = {"plugins": {"llama_server": {"binary": llama_server_bin},
                          "discovery_gguf": {"dirs": [str(home.parent)], "params": {"ctx_size": 512}}}}
    with serve_host(config, plugins=[*PLUGINS, "discovery_gguf"]) as rh, \
            lms.Client(f"127.0.0.1:{rh.port('lmstudio_api')}") as client:
        rest = {m["key"]: m for m in httpx.get(rh.url("lmstudio_api") + "/api/v1/models").json()["models"]}
        sdk = {m.model_key: m.info for m in client.list_downloaded_models()}
        assert set(sdk) == set(rest) == {"tiny-chat", "tiny-embed"}
        for key, info in sdk.items():
            v1 = rest[key]
            assert (info.type, info.display_name, info.size_bytes, info.max_context_length, info.params_string) == (
                v1["type"], v1["display_name"], v1["size_bytes"], v1["max_context_length"], v1["params_string"])
            assert info.path == str(home / ("Tiny-GGUF/tiny-chat.gguf" if key == "tiny-chat"
                                            else "Embed-GGUF/tiny-embed.gguf"))
        # the Python SDK's structs drop the quantization: the raw reply has it, as LM Studio's schema writes it
        raw = {m["modelKey"]: m for m in client.system.remote_call("listDownloadedModels")}
        assert {k: m["quantization"] for k, m in raw.items()} == {
            k: {"name": m["quantization"]["name"], "bits": m["quantization"]["bits_per_weight"]}
            for k, m in rest.items()}
        chat = sdk["tiny-chat"]
        assert (chat.architecture, chat.max_context_length) == ("llama", 4096)
        assert (chat.vision, chat.trained_for_tool_use) == (
            rest["tiny-chat"]["capabilities"]["vision"], rest["tiny-chat"]["capabilities"]["trained_for_tool_use"])
        model = client.llm.model("tiny-chat")
        assert model.get_context_length() == 512  # the loaded instance runs with the discovered ctx_size
        loaded = httpx.get(rh.url("lmstudio_api") + "/api/v1/models").json()["models"]
        assert [m["loaded_instances"] for m in loaded if m["key"] == "tiny-chat"] == [
            [{"id": "tiny-chat", "config": {"context_length": 512}}]]
