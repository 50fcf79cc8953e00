"""The Anthropic Messages translator (pure): requests → chat bodies, recorded llama-server chunks → Anthropic's
stream events, each validated by the official ``anthropic`` SDK's own types and accumulated by its own
``accumulate_event`` (what ``client.messages.stream`` does)."""

from __future__ import annotations

import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message, RawMessageStreamEvent
from dialect_helpers import recorded_chunks, recorded_reply, sse_events
from llama_host_anthropic_api import translate as tr

EVENT = pydantic.TypeAdapter(RawMessageStreamEvent)
TOOL = {"name": "get_weather", "description": "weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


def _stream(req, chunks):
    ms = tr.MessageStream(req, "tiny")
    raw = ms.start() + b"".join(ms.feed(c) for c in chunks) + ms.finish()
    events = sse_events(raw)
    snapshot, bufs = None, {}
    for name, data in events:
        assert name == data["type"]
        if name == "ping":
            continue
        event = EVENT.validate_python(data)
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=bufs)
    return [d for _, d in events], snapshot


def test_request_blocks_tools_and_options():
    req = {"model": "tiny", "max_tokens": 9, "system": [{"type": "text", "text": "Be brief."}],
           "stop_sequences": ["END"], "temperature": 0.3, "top_k": 5,
           "tools": [TOOL], "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
           "messages": [
               {"role": "user", "content": [
                   {"type": "text", "text": "look "},
                   {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]},
               {"role": "assistant", "content": [
                   {"type": "thinking", "thinking": "hmm", "signature": "s"},
                   {"type": "text", "text": "checking"},
                   {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}]},
               {"role": "user", "content": [
                   {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "sunny"}]},
                   {"type": "text", "text": "thanks"}]}]}
    body = tr.chat_request(req, "tiny", stream=True)
    assert body["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "look "},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "assistant", "content": "checking", "tool_calls": [
            {"id": "toolu_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "user", "content": "thanks"}]
    assert body["max_tokens"] == 9 and body["stop"] == ["END"] and body["top_k"] == 5
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "weather", "parameters": TOOL["input_schema"]}}]
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("req", [
    {"messages": [{"role": "user", "content": "x"}]},  # max_tokens is required
    {"max_tokens": 0, "messages": [{"role": "user", "content": "x"}]},
    {"max_tokens": 5, "messages": []},
    {"max_tokens": 5, "messages": [{"role": "system", "content": "x"}]},
    {"max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
    {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "web_search_20250305",
                                                                                  "name": "web_search"}]},
    {"max_tokens": 5, "messages": [{"role": "user", "content": "x"}], "tools": [TOOL], "tool_choice": {"type": "x"}},
])
def test_request_errors(req):
    with pytest.raises(tr.RequestError):
        tr.chat_request(req, "tiny", stream=False)


def test_count_only_needs_no_max_tokens():
    body = tr.chat_request({"messages": [{"role": "user", "content": "hi"}], "system": "s", "tools": [TOOL]}, "tiny",
                           stream=False, count_only=True)
    assert body["messages"][0] == {"role": "system", "content": "s"} and "max_tokens" not in body and body["tools"]


def test_stream_of_recorded_text_chunks():
    chunks = recorded_chunks("chat_text")
    events, message = _stream({"model": "tiny", "max_tokens": 6}, chunks)
    kinds = [e["type"] for e in events]
    assert kinds[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert kinds[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert message.content[0].text == text and message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 6
    assert message.usage.input_tokens == 1 and message.usage.cache_read_input_tokens == 55  # recorded: 55 cached


def test_stream_of_tool_calls_and_thinking():
    events, message = _stream({"model": "tiny", "max_tokens": 60, "tools": [TOOL]}, recorded_chunks("chat_tools"))
    assert [b.type for b in message.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert message.content[0].thinking == "The user wants the weather."
    assert message.content[2].input == {"city": "Paris"} and message.content[2].id == "call_abc"
    assert message.content[3].name == "get_time" and message.content[3].input == {}
    assert message.stop_reason == "tool_use"
    starts = [e["index"] for e in events if e["type"] == "content_block_start"]
    stops = [e["index"] for e in events if e["type"] == "content_block_stop"]
    assert starts == stops == [0, 1, 2, 3]


def test_reply_from_recorded_chat_completion():
    out = Message.model_validate(tr.message_from_chat({"max_tokens": 6}, recorded_reply("chat_text"), model="tiny"))
    assert out.content[0].text == recorded_reply("chat_text")["choices"][0]["message"]["content"]
    assert out.stop_reason == "max_tokens" and out.usage.input_tokens == 56 and out.usage.output_tokens == 6
    tools = Message.model_validate(tr.message_from_chat({}, recorded_reply("chat_tools"), model="tiny"))
    assert [b.type for b in tools.content] == ["thinking", "text", "tool_use"]
    assert tools.content[2].input == {"city": "Paris"} and tools.stop_reason == "tool_use"


@pytest.mark.parametrize(("finish", "stops", "reason", "seq"), [
    ("stop", None, "end_turn", None), ("length", None, "max_tokens", None), ("tool_calls", None, "tool_use", None),
    ("stop", ["END"], "stop_sequence", "END"), ("stop", ["A", "B"], "stop_sequence", None)])
def test_stop_reason(finish, stops, reason, seq):
    assert tr.stop_reason(finish, "text", stops) == (reason, seq)


@pytest.mark.parametrize(("status", "kind"), [
    (400, "invalid_request_error"), (401, "authentication_error"), (403, "permission_error"),
    (404, "not_found_error"), (413, "request_too_large"), (429, "rate_limit_error"), (500, "api_error"),
    (502, "api_error"), (503, "overloaded_error"), (504, "timeout_error")])
def test_error_types(status, kind):
    assert tr.error_body(status, "m") == {"type": "error", "error": {"type": kind, "message": "m"}}
