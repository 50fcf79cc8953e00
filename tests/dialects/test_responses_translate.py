"""The Responses translator (pure): requests → chat bodies, recorded llama-server chunks → Responses events, each
event and object validated by the official ``openai`` SDK's own types."""

from __future__ import annotations

import pydantic
import pytest
from dialect_helpers import recorded_chunks, recorded_reply, sse_events
from llama_host_openai_api import responses as rs
from openai.types.responses import Response, ResponseStreamEvent

EVENT = pydantic.TypeAdapter(ResponseStreamEvent)
TOOLS = [{"type": "function", "name": "get_weather", "description": "weather",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]


def _stream(req, chunks):
    tr = rs.ResponseStream(req, "tiny")
    raw = tr.start() + b"".join(tr.feed(c) for c in chunks) + tr.finish()
    events = sse_events(raw)
    for name, data in events:
        assert name == data["type"]
        EVENT.validate_python(data)  # raises on a shape the SDK does not know
    return tr, [d for _, d in events]


def test_request_instructions_input_items_and_options():
    req = {"model": "tiny", "instructions": "Be brief.", "max_output_tokens": 7, "temperature": 0.2,
           "input": [{"role": "developer", "content": "dev note"},
                     {"type": "message", "role": "user",
                      "content": [{"type": "input_text", "text": "look: "},
                                  {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
                     {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": "{\"city\":1}"},
                     {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
                     {"type": "reasoning", "id": "rs_1", "summary": []}],
           "tools": TOOLS, "tool_choice": {"type": "function", "name": "get_weather"},
           "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": True}}}
    body = rs.chat_request(req, "tiny", rs.conversation_of(req), stream=True)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "dev note"},
        {"role": "user", "content": [{"type": "text", "text": "look: "},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":1}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    assert body["max_tokens"] == 7 and body["temperature"] == 0.2 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "weather", "parameters": TOOLS[0]["parameters"]}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "w", "schema": {"type": "object"}, "strict": True}}


def test_request_string_input_and_history():
    history = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    req = {"model": "tiny", "input": "again", "instructions": "sys"}
    body = rs.chat_request(req, "tiny", rs.conversation_of(req, history), stream=False)
    assert body["messages"] == [{"role": "system", "content": "sys"}, *history, {"role": "user", "content": "again"}]
    assert "stream" not in body


@pytest.mark.parametrize(("req", "param"), [
    ({"input": 5}, "input"),
    ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "text": {"format": {"type": "xml"}}}, "text.format.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({}, "input"),
])
def test_request_errors_name_the_parameter(req, param):
    with pytest.raises(rs.RequestError) as err:
        rs.chat_request(req, "tiny", rs.conversation_of(req), stream=False)
    assert err.value.param == param


def test_stream_of_recorded_text_chunks():
    chunks = recorded_chunks("chat_text")
    tr, events = _stream({"model": "tiny", "input": "hello"}, chunks)
    kinds = [e["type"] for e in events]
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert kinds[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert kinds[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.incomplete"]  # the recorded reply stopped at max_tokens
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert "".join(deltas) == text and len(deltas) == 6
    final = Response.model_validate(events[-1]["response"])
    assert final.output_text == text and final.status == "incomplete"
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.usage.output_tokens == 6 and final.usage.input_tokens == 56


def test_stream_of_tool_calls_and_reasoning():
    tr, events = _stream({"model": "tiny", "input": "weather?", "tools": TOOLS}, recorded_chunks("chat_tools"))
    items = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in items] == ["reasoning", "message", "function_call", "function_call"]
    assert items[0]["content"][0]["text"] == "The user wants the weather."
    assert items[2]["call_id"] == "call_abc" and items[2]["arguments"] == '{"city": "Paris"}'
    assert items[3]["name"] == "get_time" and items[3]["arguments"] == "{}"
    args = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert "".join(args) == '{"city": "Paris"}{}'
    done = [e for e in events if e["type"] == "response.function_call_arguments.done"]
    assert [d["arguments"] for d in done] == ['{"city": "Paris"}', "{}"]
    assert events[-1]["type"] == "response.completed"
    final = Response.model_validate(events[-1]["response"])
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call", "function_call"]
    assert final.usage.total_tokens == 141
    # every delta names an item that was added before it, at the index it was added
    added = {e["item"]["id"]: e["output_index"] for e in events if e["type"] == "response.output_item.added"}
    for e in events:
        if "item_id" in e:
            assert added[e["item_id"]] == e["output_index"]


def test_stream_failure_events():
    tr = rs.ResponseStream({"model": "tiny", "input": "x"}, "tiny")
    raw = tr.start() + tr.feed(recorded_chunks("chat_text")[1]) + tr.fail("runner crashed", "runner_crashed")
    events = [d for _, d in sse_events(raw)]
    for e in events:
        EVENT.validate_python(e)
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-2]["message"] == "runner crashed" and events[-2]["code"] == "runner_crashed"
    assert Response.model_validate(events[-1]["response"]).error.message == "runner crashed"


def test_reply_from_recorded_chat_completion():
    reply = recorded_reply("chat_text")
    out = Response.model_validate(rs.response_from_chat({"input": "hello"}, reply, response_id="resp_1",
                                                        model="tiny"))
    assert out.id == "resp_1" and out.output_text == reply["choices"][0]["message"]["content"]
    assert out.status == "incomplete" and out.usage.input_tokens == 56
    tools = Response.model_validate(rs.response_from_chat({"input": "x"}, recorded_reply("chat_tools"),
                                                          response_id="resp_2", model="tiny"))
    assert [o.type for o in tools.output] == ["reasoning", "message", "function_call"]
    assert tools.output[2].name == "get_weather" and tools.status == "completed"
    history = rs.assistant_messages(rs.response_from_chat({}, recorded_reply("chat_tools"), response_id="r",
                                                          model="tiny")["output"])
    assert history == [{"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": "call_abc", "type": "function",
         "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}]


def test_store_is_lru_and_bounded():
    store = rs.ResponseStore(max_entries=2, max_bytes=10_000)
    for i in range(3):
        store.put({"id": f"r{i}", "output": []}, [{"role": "user", "content": "x"}])
    assert store.get("r0") is None and store.get("r1") is not None and len(store) == 2
    store.put({"id": "r3", "output": []}, [])  # r1 was used last: r2 goes
    assert store.get("r2") is None and store.get("r1") is not None
    small = rs.ResponseStore(max_entries=100, max_bytes=300)
    for i in range(10):
        small.put({"id": f"r{i}", "output": [], "pad": "x" * 50}, [])
    assert small.bytes <= 300 and small.get("r9") is not None and small.get("r0") is None
    small.put({"id": "huge", "pad": "x" * 1000}, [])  # larger than the whole store: not kept
    assert small.get("huge") is None
    assert small.delete("r9") and not small.delete("r9")
