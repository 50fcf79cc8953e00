"""The Responses API, Anthropic's Messages API and llama.cpp's native endpoints with the official clients against
the real llama-server on the tiny model."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from llama_host.testing import serve_host, tiny_site

pytestmark = pytest.mark.real
PLUGINS = ["openai_api", "anthropic_api", "ollama_api", "lmstudio_api", "llama_server"]
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
ANTHROPIC_TOOL = {"name": "get_weather", "description": "The weather in a city",
                  "input_schema": WEATHER["parameters"]}


@pytest.fixture(scope="module")
def rh(tiny_model, llama_server_bin, tmp_path_factory):
    site = tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path_factory.mktemp("logs")),
                     plugins={"llama_server": {"binary": llama_server_bin},
                              "openai_api": {"responses_store_entries": 3}})
    site["models"]["tiny"]["params"] = {"ctx_size": 2048, "jinja": True}
    with serve_host(site, PLUGINS) as running:
        yield running


@pytest.fixture
def oai(rh):
    with openai.OpenAI(base_url=rh.url() + "/v1", api_key="any", max_retries=0) as c:
        yield c


@pytest.fixture
def claude(rh):
    with anthropic.Anthropic(base_url=rh.url(), api_key="any", max_retries=0) as c:
        yield c


# --- OpenAI Responses -----------------------------------------------------------------------------------------


def test_responses_create(oai):
    r = oai.responses.create(model="tiny", input="hello", instructions="Be brief.", max_output_tokens=5)
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text and r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.output_tokens == 5 and r.usage.input_tokens > 0
    assert oai.responses.retrieve(r.id).output_text == r.output_text


def test_responses_stream_every_event(oai):
    events = list(oai.responses.create(model="tiny", input="hello", max_output_tokens=6, stream=True))
    kinds = [e.type for e in events]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text and events[-1].response.output_text == text and events[-1].response.usage.output_tokens == 6


def test_responses_stream_helper_accumulates(oai):
    with oai.responses.stream(model="tiny", input=[{"role": "user", "content": "hi"}], max_output_tokens=4) as s:
        deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
    # the helper raises on a stream without response.completed: a reply cut by max_output_tokens is "incomplete"
    assert len(deltas) == 4


def test_responses_previous_response_id_and_store_bound(oai, rh):
    first = oai.responses.create(model="tiny", input="my name is Ada", max_output_tokens=3)
    second = oai.responses.create(model="tiny", input="what is my name?", previous_response_id=first.id,
                                  max_output_tokens=3)
    assert second.previous_response_id == first.id
    # the second turn carried the first: its prompt is longer than the same question alone
    alone = oai.responses.create(model="tiny", input="what is my name?", max_output_tokens=3, store=False)
    assert second.usage.input_tokens > alone.usage.input_tokens
    with pytest.raises(openai.NotFoundError):
        oai.responses.retrieve(alone.id)  # store=False
    for _ in range(3):  # the store keeps 3 (responses_store_entries): the first one goes
        oai.responses.create(model="tiny", input="x", max_output_tokens=1)
    with pytest.raises(openai.NotFoundError) as err:
        oai.responses.create(model="tiny", input="again", previous_response_id=first.id, max_output_tokens=1)
    assert err.value.body["code"] == "previous_response_not_found"
    assert err.value.body["param"] == "previous_response_id"


def test_responses_tools_and_function_call_output(oai):
    """Tools and a turn holding a function call and its output reach the runner's template; the tiny model answers
    in text (it cannot be made to call a tool), which the SDK parses."""
    r = oai.responses.create(model="tiny", tools=[WEATHER], tool_choice="auto", max_output_tokens=4, input=[
        {"role": "user", "content": "weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}])
    assert r.output and r.tools[0].name == "get_weather"
    stream = oai.responses.create(model="tiny", tools=[WEATHER], input="weather?", max_output_tokens=3, stream=True)
    assert [e.type for e in stream][-1] in ("response.completed", "response.incomplete")


def test_responses_json_schema_format(oai):
    r = oai.responses.create(model="tiny", input="give me a", max_output_tokens=40, text={"format": {
        "type": "json_schema", "name": "thing", "schema": {"type": "object", "properties": {"a": {"type": "string"}},
                                                           "required": ["a"]}}})
    assert r.output_text.startswith("{")  # the runner's grammar followed the schema


def test_responses_errors_in_openai_shape(oai):
    with pytest.raises(openai.NotFoundError):
        oai.responses.create(model="no-such-model", input="x")
    with pytest.raises(openai.BadRequestError) as err:
        oai.responses.create(model="tiny", input="x", tools=[{"type": "web_search"}])
    assert err.value.body["param"] == "tools[0].type"
    with pytest.raises(openai.BadRequestError):  # the runner's 400: a prompt longer than the context
        oai.responses.create(model="tiny", input="hello world " * 3000, max_output_tokens=2)


# --- Anthropic Messages ---------------------------------------------------------------------------------------


def test_messages_create_with_system(claude):
    m = claude.messages.create(model="tiny", max_tokens=5, system="Be brief.",
                               messages=[{"role": "user", "content": "hello"}])
    assert m.type == "message" and m.role == "assistant" and m.model == "tiny" and m.id.startswith("msg_")
    assert m.content[0].type == "text" and m.content[0].text
    assert m.stop_reason == "max_tokens" and m.usage.output_tokens == 5
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens > 0


def test_messages_stream(claude):
    with claude.messages.stream(model="tiny", max_tokens=6, messages=[{"role": "user", "content": "hi"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text and final.content[0].text == text and final.stop_reason == "max_tokens"
    assert final.usage.output_tokens == 6 and final.usage.input_tokens + final.usage.cache_read_input_tokens > 0
    raw = list(claude.messages.create(model="tiny", max_tokens=3, stream=True,
                                      messages=[{"role": "user", "content": "hi"}]))
    assert [e.type for e in raw][:2] == ["message_start", "content_block_start"]  # the SDK drops ping itself
    assert [e.type for e in raw][-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_messages_tools_round_trip(claude):
    m = claude.messages.create(model="tiny", max_tokens=4, tools=[ANTHROPIC_TOOL], tool_choice={"type": "auto"},
                               messages=[{"role": "user", "content": "weather in Paris?"},
                                         {"role": "assistant", "content": [
                                             {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                              "input": {"city": "Paris"}}]},
                                         {"role": "user", "content": [
                                             {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}]}])
    assert m.content and m.stop_reason in ("max_tokens", "end_turn", "tool_use")


def test_count_tokens(claude):
    short = claude.messages.count_tokens(model="tiny", messages=[{"role": "user", "content": "hi"}])
    longer = claude.messages.count_tokens(model="tiny", system="You are a careful assistant.",
                                          messages=[{"role": "user", "content": "hi"}])
    with_tools = claude.messages.count_tokens(model="tiny", tools=[ANTHROPIC_TOOL],
                                              messages=[{"role": "user", "content": "hi"}])
    assert 0 < short.input_tokens < longer.input_tokens < with_tools.input_tokens
    # the count is the prompt the model sees: the same as the usage a reply reports
    m = claude.messages.create(model="tiny", max_tokens=1, messages=[{"role": "user", "content": "hi"}])
    assert m.usage.input_tokens + m.usage.cache_read_input_tokens == short.input_tokens


def test_anthropic_error_types(claude, rh):
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="no-such-model", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model="tiny", max_tokens=5, messages=[{"role": "system", "content": "x"}])
    assert err.value.body["error"]["type"] == "invalid_request_error"
    with httpx.Client(base_url=rh.url()) as c:  # max_tokens missing: the SDK would refuse to send it
        r = c.post("/v1/messages", json={"model": "tiny", "messages": [{"role": "user", "content": "x"}]},
                   headers={"anthropic-version": "2023-06-01", "x-api-key": "k"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = c.post("/v1/messages", content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["type"] == "error"


def test_anthropic_on_the_ollama_port(rh):
    with anthropic.Anthropic(base_url=rh.url("ollama_api"), api_key="any", max_retries=0) as c:
        m = c.messages.create(model="tiny", max_tokens=2, messages=[{"role": "user", "content": "hi"}])
    assert m.usage.output_tokens == 2


# --- llama.cpp's native endpoints -----------------------------------------------------------------------------


def test_native_endpoints_routed_by_model(rh):
    with httpx.Client(base_url=rh.url("ollama_api"), timeout=60) as c:
        tokens = c.post("/tokenize", json={"model": "tiny", "content": "hello"}).json()["tokens"]
        assert tokens
        assert c.post("/detokenize", json={"model": "tiny", "tokens": tokens}).json()["content"].strip() == "hello"
        prompt = c.post("/apply-template", json={"model": "tiny", "messages": [{"role": "user", "content": "hi"}]})
        assert "hi" in prompt.json()["prompt"]
        done = c.post("/completion", json={"model": "tiny", "prompt": "Once", "n_predict": 3}).json()
        assert done["tokens_predicted"] == 3 and done["content"]
        with c.stream("POST", "/completion", json={"model": "tiny", "prompt": "Once", "n_predict": 3,
                                                   "stream": True}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            events = [line for line in r.iter_lines() if line.startswith("data: ")]
        assert len(events) >= 3
        missing = c.post("/tokenize", json={"model": "nope", "content": "x"})
        assert missing.status_code == 404
        r = c.post("/rerank", json={"model": "tiny", "query": "q", "documents": ["d"]})  # not a reranker
        assert 400 <= r.status_code < 600 and "error" in r.json()  # the runner's own error, as it sent it


# --- embeddings from any model ----------------------------------------------------------------------------------


def test_embeddings_from_a_chat_model_in_every_dialect(rh, oai):
    import ollama

    vectors = oai.embeddings.create(model="tiny", input=["first text", "second text"], encoding_format="float")
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) == 64
    with ollama.Client(host=rh.url("ollama_api"), timeout=120) as client:
        assert len(client.embed("tiny", ["first text"]).embeddings[0]) == 64
        assert len(client.embeddings("tiny", "first text").embedding) == 64
    with httpx.Client(base_url=rh.url("lmstudio_api"), timeout=60) as c:
        r = c.post("/api/v0/embeddings", json={"model": "tiny", "input": "first text"})
        assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 64
        native = c.post("/embedding", json={"model": "tiny", "content": "first text"})
        assert native.status_code == 200
    status = rh.host.scheduler.status("tiny@embed")  # one embedding runner for the same file, scheduled like any
    assert status.state == "loaded" and status.unlisted and status.memory > 0 and status.ttl == 300
    assert status.path == rh.host.scheduler.status("tiny").path and status.facts.embedding
    assert "tiny@embed" not in [m.id for m in oai.models.list()]
    # a chat request still goes to the chat runner
    assert oai.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=2)
