"""Stats from llama-server timings, stop reasons, and the v0 reply / stream decoration: fast, no runner."""

from __future__ import annotations

import pytest

from llama_host_lmstudio_api import stats, v0
from llama_host_lmstudio_api.wire import V0ModelInfo, V0Runtime

TIMINGS = {
    "prompt_n": 12, "prompt_ms": 40.0, "prompt_per_second": 300.0,
    "predicted_n": 8, "predicted_ms": 2.0, "predicted_per_second": 4000.0, "cache_n": 3,
}


@pytest.mark.parametrize(
    ("finish", "kw", "reason"),
    [
        ("stop", {}, "eosFound"),
        ("stop", {"stop_type": "word"}, "stopStringFound"),
        ("tool_calls", {}, "toolCalls"),
        ("length", {"max_tokens": 8, "predicted_n": 8}, "maxPredictedTokensReached"),
        ("length", {"max_tokens": 8}, "maxPredictedTokensReached"),
        ("length", {"max_tokens": 100, "predicted_n": 8}, "contextLengthReached"),
        ("length", {}, "contextLengthReached"),
        (None, {"stop_type": "eos"}, "eosFound"),
        (None, {}, "failed"),
    ],
)
def test_stop_reason(finish, kw, reason):
    assert stats.stop_reason(finish, **kw) == reason
    assert reason in stats.STOP_REASONS


def test_v0_stats_follow_timings():
    s = stats.v0_stats(TIMINGS, finish_reason="length", waited=0.5, max_tokens=8)
    assert s.tokens_per_second == 4000.0
    assert s.generation_time == pytest.approx(0.002)
    assert s.time_to_first_token == pytest.approx(0.54)
    assert s.stop_reason == "maxPredictedTokensReached"


def test_tokens_per_second_computed_when_missing():
    assert stats.tokens_per_second({"predicted_n": 10, "predicted_ms": 500}) == pytest.approx(20.0)
    assert stats.tokens_per_second(None) == 0.0


def test_v1_stats():
    s = stats.v1_stats(TIMINGS, {"prompt_tokens": 15, "completion_tokens": 8}, reasoning_tokens=2, waited=1.5,
                       load_seconds=1.2)
    assert s.input_tokens == 15 and s.total_output_tokens == 8 and s.reasoning_output_tokens == 2
    assert s.tokens_per_second == 4000.0
    assert s.time_to_first_token_seconds == pytest.approx(0.3 + 0.04)
    assert s.model_load_time_seconds == 1.2


def test_v1_stats_without_usage_and_load():
    s = stats.v1_stats(TIMINGS)
    assert s.input_tokens == 15 and s.total_output_tokens == 8
    import msgspec

    assert "model_load_time_seconds" not in msgspec.to_builtins(s)


def extras() -> v0.Extras:
    return v0.Extras(
        model_info=V0ModelInfo(arch="llama", quant="F32", context_length=1024),
        runtime=V0Runtime(name="llama-server", version="b1"),
        waited=0.25,
        max_tokens=8,
    )


def test_upstream_body():
    body = {"model": "Tiny", "messages": [], "max_tokens": -1, "ttl": 30, "temperature": 0.2, "extra": {"a": 1}}
    assert v0.upstream_body(body, "tiny") == {"model": "tiny", "messages": [], "temperature": 0.2, "extra": {"a": 1}}
    assert v0.token_limit({"max_tokens": -1}) is None
    assert v0.token_limit({"max_completion_tokens": 5}) == 5


def test_reply_gets_extras():
    reply = {"choices": [{"index": 0, "finish_reason": "length", "message": {}}], "timings": TIMINGS}
    out = extras().apply(reply)
    assert out["stats"] == {
        "tokens_per_second": 4000.0, "time_to_first_token": pytest.approx(0.29), "generation_time": pytest.approx(0.002),
        "stop_reason": "maxPredictedTokensReached",
    }
    assert out["model_info"] == {"arch": "llama", "quant": "F32", "format": "gguf", "context_length": 1024}
    assert out["runtime"] == {"name": "llama-server", "version": "b1", "supported_formats": ["gguf"]}


def test_stream_extras_on_the_timings_chunk():
    deco = v0.StreamDecorator(extras())
    first = deco.chunk({"id": "c", "object": "chat.completion.chunk", "choices": [{"delta": {"content": "a"}}]})
    assert "stats" not in first
    last = deco.chunk({"id": "c", "choices": [{"delta": {}, "finish_reason": "length"}], "timings": TIMINGS})
    assert last["stats"]["stop_reason"] == "maxPredictedTokensReached"
    assert deco.trailer() is None


def test_stream_extras_on_the_usage_chunk_after_the_finish():
    deco = v0.StreamDecorator(extras())
    finish = deco.chunk({"id": "c", "choices": [{"delta": {}, "finish_reason": "stop"}]})
    assert "stats" not in finish
    usage = deco.chunk({"id": "c", "choices": [], "usage": {"completion_tokens": 3}, "timings": TIMINGS})
    assert usage["stats"]["stop_reason"] == "eosFound"


def test_per_token_timings_do_not_end_the_stream_early():
    deco = v0.StreamDecorator(extras())
    mid = deco.chunk({"id": "c", "choices": [{"delta": {"content": "a"}, "finish_reason": None}], "timings": TIMINGS})
    assert "stats" not in mid


def test_stream_without_timings_gets_a_trailer():
    deco = v0.StreamDecorator(extras())
    deco.chunk({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                "choices": [{"delta": {}, "finish_reason": "stop"}]})
    trailer = deco.trailer()
    assert trailer["choices"] == [] and trailer["id"] == "c" and trailer["object"] == "chat.completion.chunk"
    assert trailer["stats"]["stop_reason"] == "eosFound"
    assert deco.trailer() is None
