"""Fast unit tests of the Ollama ↔ OpenAI translation (no host, no server)."""

from __future__ import annotations

import json
import time

import msgspec
import pytest

from llama_host_ollama_api import translate as t
from llama_host_ollama_api.wire import ChatRequest, GenerateRequest, Message, ToolCall


def decode_chat(body: dict) -> ChatRequest:
    return msgspec.convert(body, ChatRequest)


# --- keep_alive ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "ttl"), [
    (None, None), (0, 0.0), (0.0, 0.0), (300, 300.0), (2.5, 2.5), (-1, -1.0), (-0.5, -1.0),
    ("5m", 300.0), ("1h30m", 5400.0), ("300ms", 0.3), ("0", 0.0), ("-1", -1.0), ("-1s", -1.0), ("-5m", -1.0),
    ("1.5h", 5400.0), ("10s", 10.0), ("300", 300.0), ("2h45m30.5s", 9930.5), ("500us", 0.0005), ("7µs", 7e-6),
])
def test_keep_alive(value, ttl):
    assert t.keep_alive_ttl(value) == pytest.approx(ttl) if ttl is not None else t.keep_alive_ttl(value) is None


@pytest.mark.parametrize("value", ["5 minutes", "m", "", "1d", "abc", "5m3"])
def test_keep_alive_invalid(value):
    with pytest.raises(t.BadKeepAlive, match="invalid duration"):
        t.keep_alive_ttl(value)


# --- options ---------------------------------------------------------------------------------------------------------


def test_split_options_sampling_and_load():
    sampling, load = t.split_options({
        "temperature": 0.2, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "typical_p": 1.0, "repeat_penalty": 1.1,
        "repeat_last_n": 64, "presence_penalty": 0.1, "frequency_penalty": 0.2, "seed": 42, "stop": ["\n"],
        "mirostat": 2, "mirostat_tau": 5.0, "mirostat_eta": 0.1, "num_keep": 4, "num_predict": 16,
        "num_ctx": 4096, "num_batch": 256, "num_gpu": 99, "main_gpu": 1, "num_thread": 8, "use_mmap": False,
        "use_mlock": True, "numa": True, "low_vram": False, "tfs_z": 1.0, "penalize_newline": True,
    })
    assert sampling == {
        "temperature": 0.2, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "typical_p": 1.0, "repeat_penalty": 1.1,
        "repeat_last_n": 64, "presence_penalty": 0.1, "frequency_penalty": 0.2, "seed": 42, "stop": ["\n"],
        "mirostat": 2, "mirostat_tau": 5.0, "mirostat_eta": 0.1, "n_keep": 4, "max_tokens": 16,
    }
    assert load == {"ctx_size": 4096, "batch_size": 256, "n_gpu_layers": 99, "main_gpu": 1, "threads": 8,
                    "no_mmap": True, "mlock": True}


def test_split_options_defaults_leave_the_runner_alone():
    sampling, load = t.split_options({"num_predict": -1, "use_mmap": True, "use_mlock": False, "stop": "x",
                                      "temperature": None})
    assert sampling == {"stop": ["x"]}
    assert load == {}
    assert t.split_options(None) == ({}, {})


# --- request bodies --------------------------------------------------------------------------------------------------


def test_chat_body_messages_images_tools_format_think():
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather",
                                               "parameters": {"type": "object", "properties": {"city": {
                                                   "type": "string"}}, "required": ["city"]}}}]
    req = decode_chat({
        "model": "m", "stream": True, "format": "json", "think": True, "tools": tools, "unknown_field": 1,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is this?", "images": [png, "/9j/4AAQ"]},
            {"role": "assistant", "content": "", "thinking": "hmm",
             "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
                            {"function": {"name": "get_time", "arguments": {}}}]},
            {"role": "tool", "content": "12:00", "tool_name": "get_time"},
            {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
        ],
    })
    sampling, _ = t.split_options({"temperature": 0})
    body = t.chat_body(req, "m", sampling, stream=True)
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    assert body["chat_template_kwargs"] == {"enable_thinking": True}
    assert body["tools"] == tools
    msgs = body["messages"]
    assert msgs[0] == {"role": "system", "content": "be brief"}
    assert msgs[1]["content"] == [
        {"type": "text", "text": "what is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + png}},
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
    ]
    assistant = msgs[2]
    assert assistant["reasoning_content"] == "hmm"
    assert [c["function"] for c in assistant["tool_calls"]] == [
        {"name": "get_weather", "arguments": '{"city": "Paris"}'}, {"name": "get_time", "arguments": "{}"}]
    ids = [c["id"] for c in assistant["tool_calls"]]
    assert len(set(ids)) == 2
    # each tool result answers the call of its name, whatever the order
    assert msgs[3]["tool_call_id"] == ids[1] and msgs[3]["name"] == "get_time"
    assert msgs[4]["tool_call_id"] == ids[0] and msgs[4]["name"] == "get_weather"


def test_chat_body_non_stream_schema_and_no_tools():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    req = decode_chat({"model": "m", "messages": [{"role": "user", "content": "hi"}], "tools": [],
                       "format": schema, "think": "high"})
    body = t.chat_body(req, "m", {}, stream=False)
    assert "tools" not in body and "stream_options" not in body and body["stream"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    assert body["reasoning_effort"] == "high"
    assert t.chat_body(decode_chat({"model": "m", "messages": [], "think": False}), "m", {}, False)[
        "chat_template_kwargs"] == {"enable_thinking": False}


def test_bad_format_is_rejected():
    with pytest.raises(ValueError, match="invalid format"):
        t.response_format("yaml")


def test_generate_routes():
    plain = msgspec.convert({"model": "m", "prompt": "hi", "system": "sys", "format": "json"}, GenerateRequest)
    path, body = t.generate_request(plain, "m", {"max_tokens": 5}, stream=True)
    assert path == "/v1/chat/completions"
    assert body["messages"] == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    assert body["max_tokens"] == 5 and body["response_format"] == {"type": "json_object"}

    raw = msgspec.convert({"model": "m", "prompt": "<s>hi", "raw": True, "format": {"type": "object"}},
                          GenerateRequest)
    path, body = t.generate_request(raw, "m", {}, stream=False)
    assert path == "/v1/completions"
    assert body == {"model": "m", "prompt": "<s>hi", "json_schema": {"type": "object"}, "stream": False}

    fim = msgspec.convert({"model": "m", "prompt": "def f(", "suffix": "  return x"}, GenerateRequest)
    path, body = t.generate_request(fim, "m", {"max_tokens": 8, "temperature": 0}, stream=True)
    assert path == "/infill"
    assert body["input_prefix"] == "def f(" and body["input_suffix"] == "  return x"
    assert body["n_predict"] == 8 and "max_tokens" not in body

    with pytest.raises(ValueError, match="raw"):
        t.generate_request(msgspec.convert({"model": "m", "prompt": "x", "raw": True, "images": ["AAAA"]},
                                           GenerateRequest), "m", {}, False)


def test_image_url_passthrough():
    assert t.image_url("data:image/webp;base64,AAA") == "data:image/webp;base64,AAA"
    assert t.image_url("UklGRxxx") == "data:image/webp;base64,UklGRxxx"
    assert t.image_url("AAAA") == "data:image/png;base64,AAAA"


# --- replies ---------------------------------------------------------------------------------------------------------

TIMINGS = {"cache_n": 0, "prompt_n": 12, "prompt_ms": 3.5, "prompt_per_second": 3428.5, "predicted_n": 3,
           "predicted_ms": 1.25, "predicted_per_second": 2400.0}

# A streamed tool call as llama-server sends it (deltas of one chat.completion.chunk each).
TOOL_CALL_STREAM = [
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"role": "assistant", "content": None}}],
     "object": "chat.completion.chunk"},
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"tool_calls": [
        {"index": 0, "id": "call_abc", "type": "function", "function": {"name": "get_weather", "arguments": "{\""}}
    ]}}], "object": "chat.completion.chunk"},
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "city\": \"Pa"}}]}}], "object": "chat.completion.chunk"},
    {"choices": [{"finish_reason": None, "index": 0, "delta": {"tool_calls": [
        {"index": 0, "function": {"arguments": "ris\"}"}}]}}], "object": "chat.completion.chunk"},
    {"choices": [{"finish_reason": "tool_calls", "index": 0, "delta": {}}], "object": "chat.completion.chunk"},
    {"choices": [], "object": "chat.completion.chunk",
     "usage": {"completion_tokens": 3, "prompt_tokens": 12, "total_tokens": 15}, "timings": TIMINGS},
]


def lines_of(data: bytes) -> list[dict]:
    assert data.endswith(b"\n")
    lines = data.split(b"\n")[:-1]
    assert all(line.strip() for line in lines), "blank NDJSON line"
    return [json.loads(line) for line in lines]


def test_chat_stream_text_thinking_and_final():
    start = time.monotonic_ns()
    s = t.ChatStream("m:latest", start, load_ns=7)
    events = [
        {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"reasoning_content": "let me"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
        {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}, "timings": TIMINGS},
    ]
    out = b"".join(s.feed(e) for e in events) + s.finish()
    chunks = lines_of(out)
    assert [c["message"] for c in chunks] == [
        {"role": "assistant", "content": "", "thinking": "let me"},
        {"role": "assistant", "content": "Hel"},
        {"role": "assistant", "content": "lo"},
        {"role": "assistant", "content": ""},
    ]
    assert [c["done"] for c in chunks] == [False, False, False, True]
    final = chunks[-1]
    assert final["done_reason"] == "length"
    assert final["prompt_eval_count"] == 12 and final["eval_count"] == 3
    assert final["prompt_eval_duration"] == 3_500_000 and final["eval_duration"] == 1_250_000
    assert final["load_duration"] == 7 and final["total_duration"] > 0
    assert all(c["model"] == "m:latest" and c["created_at"].endswith("Z") for c in chunks)


def test_chat_stream_tool_calls_become_objects():
    s = t.ChatStream("m", time.monotonic_ns(), 0)
    out = b"".join(s.feed(e) for e in TOOL_CALL_STREAM) + s.finish()
    chunks = lines_of(out)
    assert len(chunks) == 2
    call_chunk, final = chunks
    assert call_chunk["done"] is False
    assert call_chunk["message"]["content"] == ""
    assert call_chunk["message"]["tool_calls"] == [
        {"id": "call_abc", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]
    assert final["done"] is True and final["done_reason"] == "stop"
    assert final["message"] == {"role": "assistant", "content": ""}


def test_parse_arguments():
    assert t.parse_arguments('{"a": 1}') == {"a": 1}
    assert t.parse_arguments("") == {}
    assert t.parse_arguments(None) == {}
    assert t.parse_arguments({"x": 2}) == {"x": 2}
    assert t.parse_arguments("{broken") == {"_raw": "{broken"}
    assert t.parse_arguments("[1, 2]") == {"_raw": "[1, 2]"}


def test_chat_reply_non_stream_with_tool_calls():
    reply = {"choices": [{"finish_reason": "tool_calls", "index": 0, "message": {
        "role": "assistant", "content": "", "reasoning_content": "think",
        "tool_calls": [{"type": "function", "id": "c1", "function": {"name": "f", "arguments": "{\"q\": [1]}"}}]}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 9}, "timings": TIMINGS}
    out = t.chat_reply(reply, "m", started_ns=time.monotonic_ns(), load_ns=0)
    assert out["message"] == {"role": "assistant", "content": "", "thinking": "think", "tool_calls": [
        {"id": "c1", "function": {"index": 0, "name": "f", "arguments": {"q": [1]}}}]}
    assert out["done"] is True and out["done_reason"] == "stop"
    assert out["prompt_eval_count"] == 5 and out["eval_count"] == 3  # predicted_n wins over usage


def test_generate_stream_from_chat_completion_and_infill():
    s = t.GenerateStream("m", time.monotonic_ns(), 0)
    out = s.feed({"choices": [{"index": 0, "delta": {"content": "A"}, "finish_reason": None}]})
    out += s.feed({"choices": [{"index": 0, "text": "B", "finish_reason": "stop"}], "usage": {"prompt_tokens": 2}})
    out += s.finish()
    chunks = lines_of(out)
    assert [c["response"] for c in chunks] == ["A", "B", ""]
    assert chunks[-1]["done_reason"] == "stop" and chunks[-1]["prompt_eval_count"] == 2

    s = t.GenerateStream("m", time.monotonic_ns(), 0)
    out = s.feed({"content": "x", "stop": False})
    out += s.feed({"content": "", "stop": True, "stop_type": "limit", "tokens_evaluated": 4, "timings": TIMINGS})
    out += s.finish()
    chunks = lines_of(out)
    assert [c["response"] for c in chunks] == ["x", ""]
    assert chunks[-1]["done_reason"] == "length" and chunks[-1]["prompt_eval_count"] == 4
    assert chunks[-1]["eval_count"] == 3


def test_generate_reply_variants():
    started = time.monotonic_ns()
    chat = t.generate_reply({"choices": [{"message": {"content": "hi", "reasoning_content": "r"},
                                          "finish_reason": "stop"}], "timings": TIMINGS}, "m",
                            started_ns=started, load_ns=1)
    assert chat["response"] == "hi" and chat["thinking"] == "r" and chat["done_reason"] == "stop"
    text = t.generate_reply({"choices": [{"text": "yo", "finish_reason": "length"}]}, "m", started_ns=started,
                            load_ns=0)
    assert text["response"] == "yo" and text["done_reason"] == "length" and text["eval_count"] == 0
    native = t.generate_reply({"content": "z", "stop_type": "eos", "tokens_evaluated": 3}, "m", started_ns=started,
                              load_ns=0)
    assert native["response"] == "z" and native["prompt_eval_count"] == 3


def test_load_reply():
    assert t.load_reply("m", chat=True, unloaded=False)["done_reason"] == "load"
    out = t.load_reply("m", chat=True, unloaded=True)
    assert out["message"] == {"role": "assistant", "content": ""} and out["done_reason"] == "unload"
    assert t.load_reply("m", chat=False, unloaded=False)["response"] == ""


def test_created_at_format():
    stamp = t.created_at(1_726_175_849_110_811_000)
    assert stamp == "2024-09-12T21:17:29.110811000Z"


def test_embeddings_order_and_dimensions():
    reply = {"data": [{"index": 1, "embedding": [0.0, 3.0, 4.0]}, {"index": 0, "embedding": [1.0, 0.0, 0.0]}]}
    assert t.embeddings_from(reply) == [[1.0, 0.0, 0.0], [0.0, 3.0, 4.0]]
    assert t.embeddings_from(reply, dimensions=2) == [[1.0, 0.0], [0.0, 1.0]]
    assert t.embed_inputs("") == [] and t.embed_inputs("a") == ["a"] and t.embed_inputs(["a", "b"]) == ["a", "b"]


def test_messages_accept_openai_style_tool_results():
    msgs = t.messages_to_openai([
        Message(role="assistant", content=None, tool_calls=[msgspec.convert(
            {"id": "x1", "function": {"name": "f", "arguments": '{"a":1}'}}, ToolCall)]),
        Message(role="tool", content="ok", tool_call_id="x1"),
    ])
    assert msgs[0]["tool_calls"][0] == {"id": "x1", "type": "function", "function": {"name": "f",
                                                                                    "arguments": '{"a":1}'}}
    assert msgs[0]["content"] == ""
    assert msgs[1]["tool_call_id"] == "x1"


def test_logprobs_both_ways():
    req = decode_chat({"model": "m", "messages": [{"role": "user", "content": "x"}], "logprobs": True,
                       "top_logprobs": 3})
    body = t.chat_body(req, "m", {}, stream=True)
    assert body["logprobs"] is True and body["top_logprobs"] == 3
    assert "logprobs" not in t.chat_body(decode_chat({"model": "m", "messages": []}), "m", {}, False)
    upstream = {"content": [{"id": 5, "token": "Hi", "bytes": [72, 105], "logprob": -0.5,
                             "top_logprobs": [{"id": 5, "token": "Hi", "bytes": [72, 105], "logprob": -0.5}]}]}
    s = t.ChatStream("m", time.monotonic_ns(), 0)
    (chunk,) = lines_of(s.feed({"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": upstream}]}))
    assert chunk["logprobs"] == [{"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105]}]}]
    reply = t.chat_reply({"choices": [{"message": {"content": "Hi"}, "logprobs": upstream, "finish_reason": "stop"}]},
                         "m", started_ns=time.monotonic_ns(), load_ns=0)
    assert reply["logprobs"][0]["token"] == "Hi"
