"""/api/v1/chat input mapping, chunk folding into events, SSE framing, the response store: fast, no runner."""

from __future__ import annotations

import msgspec
import pytest

from llama_host.errors import BadRequest, ModelNotFound, UpstreamError
from llama_host_lmstudio_api import dialect, sse
from llama_host_lmstudio_api.store import ResponseStore
from llama_host_lmstudio_api.v1chat import ChatFold, messages, openai_body
from llama_host_lmstudio_api.wire import V1ChatRequest


def req(**kw) -> V1ChatRequest:
    return msgspec.convert({"model": "m", "input": "hi", **kw}, V1ChatRequest)


def test_string_input_with_system_prompt():
    assert messages(req(system_prompt="be brief")) == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
    ]


def test_item_input_with_an_image():
    r = req(input=[{"type": "text", "content": "describe"}, {"type": "image", "data_url": "data:image/png;base64,AA"}])
    assert messages(r) == [
        {"role": "user", "content": [
            {"type": "text", "text": "describe"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}},
        ]}
    ]


def test_text_items_join_into_one_turn():
    r = req(input=[{"type": "message", "content": "a"}, {"type": "message", "content": "b"}])
    assert messages(r) == [{"role": "user", "content": "a\n\nb"}]


@pytest.mark.parametrize(
    "items", [[], [{"type": "image"}], [{"type": "audio", "content": "x"}], [{"type": "message"}]]
)
def test_bad_input_items(items):
    with pytest.raises(BadRequest):
        messages(req(input=items))


def test_history_continues_and_system_prompt_replaces():
    history = [{"role": "system", "content": "old"}, {"role": "user", "content": "q"},
               {"role": "assistant", "content": "a"}]
    assert [m["content"] for m in messages(req(), history)] == ["old", "q", "a", "hi"]
    assert [m["content"] for m in messages(req(system_prompt="new"), history)] == ["new", "q", "a", "hi"]


def test_openai_body_maps_sampling_and_limits():
    r = req(temperature=0.1, top_p=0.9, top_k=20, min_p=0.05, repeat_penalty=1.1, max_output_tokens=7, reasoning="off",
            unknown_field=True)
    body = openai_body(r, [{"role": "user", "content": "hi"}], "m")
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 7 and body["top_k"] == 20 and body["repeat_penalty"] == 1.1
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert "reasoning_effort" not in body
    assert openai_body(req(reasoning="high"), [], "m")["reasoning_effort"] == "high"


def chunk(content=None, reasoning=None, finish=None, **extra):
    delta = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    return {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}


def test_fold_events_in_lm_studio_order():
    fold = ChatFold("m")
    events = fold.start()
    events += fold.feed({"choices": [], "prompt_progress": {"total": 10, "cache": 0, "processed": 5, "time_ms": 1}})
    events += fold.feed(chunk(reasoning="think"))
    events += fold.feed(chunk(content="Hel"))
    events += fold.feed(chunk(content="lo"))
    events += fold.feed(chunk(finish="stop"))
    events += fold.feed({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3},
                         "timings": {"prompt_ms": 10, "predicted_per_second": 100.0, "predicted_n": 3}})
    events += fold.close()
    assert [e[0] for e in events] == [
        "prompt_processing.start", "prompt_processing.progress", "prompt_processing.end",
        "reasoning.start", "reasoning.delta", "reasoning.end",
        "message.start", "message.delta", "message.delta", "message.end",
    ]
    assert events[1][1] == {"progress": 0.5}
    result = msgspec.to_builtins(fold.result(waited=0.0, response_id="resp_1"))
    assert result["output"] == [{"type": "reasoning", "content": "think"}, {"type": "message", "content": "Hello"}]
    assert result["stats"]["input_tokens"] == 9 and result["stats"]["total_output_tokens"] == 3
    assert result["stats"]["reasoning_output_tokens"] == 1
    assert result["stats"]["time_to_first_token_seconds"] == pytest.approx(0.01)
    assert result["response_id"] == "resp_1" and result["model_instance_id"] == "m"


def test_fold_with_no_output_still_closes_prompt_processing():
    fold = ChatFold("m")
    events = fold.start() + fold.feed(chunk(finish="length")) + fold.close()
    assert [e[0] for e in events] == ["prompt_processing.start", "prompt_processing.end"]
    assert msgspec.to_builtins(fold.output()) == [{"type": "message", "content": ""}]


def test_sse_framing():
    assert sse.named_event("message.delta", {"content": "a"}) == (
        b'event: message.delta\ndata: {"type":"message.delta","content":"a"}\n\n'
    )
    assert sse.data_event({"a": 1}) == b'data: {"a":1}\n\n'
    assert sse.DONE == b"data: [DONE]\n\n"


def test_response_store_is_bounded():
    store = ResponseStore(2)
    a = store.put([{"role": "user", "content": "a"}])
    b = store.put([])
    assert a.startswith("resp_") and store.get(a) is not None
    store.put([])  # drops b, the least recently used
    assert store.get(b) is None and store.get(a) is not None and len(store) == 2
    assert ResponseStore(0).put([]) is None


def test_stream_error_kinds():
    assert dialect.stream_error(ModelNotFound("x"))["type"] == "model_not_found"
    assert dialect.stream_error(BadRequest("bad", param="input"))["param"] == "input"
    upstream = dialect.stream_error(UpstreamError({"error": {"message": "too long", "code": 400}}))
    assert upstream["type"] == "invalid_request" and upstream["message"] == "too long"
    assert dialect.stream_error(dialect.NotSupported("no"))["type"] == "not_implemented"
    assert dialect.stream_error(RuntimeError("boom")) == {"type": "unknown", "message": "boom"}
