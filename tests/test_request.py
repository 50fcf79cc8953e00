"""The core request primitive's parts that need no server: the one SSE parser, what a whole reply is metered from."""

from __future__ import annotations

import json

import pytest

from llama_host.errors import UpstreamError
from llama_host.proxy import RequestMeter
from llama_host.request import BadUpstreamEvent, SSEParser, _observe_reply


def parse(*reads: bytes) -> tuple[list, SSEParser]:
    parser = SSEParser()
    out = []
    for r in reads:
        out.append(parser.events(r))
        if parser.error is not None or parser.done:
            return out, parser
    out.append(parser.close())
    return out, parser


def test_events_are_grouped_by_read_and_end_at_done():
    out, p = parse(b'data: {"a":1}\n\ndata: {"a"', b':2}\n\n: ping\n\ndata: {"a":3}\n\n', b"data: [DONE]\n\n",
                   b'data: {"never":1}\n\n')
    assert out == [[{"a": 1}], [{"a": 2}, {"a": 3}], []] and p.done


def test_a_final_event_without_its_newline_is_kept():
    out, p = parse(b'data: {"x":1}\n\ndata: {"x":2}')
    assert out == [[{"x": 1}], [{"x": 2}]] and not p.done
    parser = SSEParser()
    assert parser.passthrough(b'data: {"x":1}\n\ndata: {"x":2}') == b'data: {"x":1}\n\n'
    assert parser.close_passthrough() == b'data: {"x":2}\n\n'


def test_error_events_in_either_form_come_after_the_good_events():
    out, p = parse(b'data: {"a":1}\n\ndata: {"error":{"code":503,"message":"slot died"}}\n\n')
    assert out == [[{"a": 1}]]
    assert isinstance(p.error, UpstreamError) and p.error.status == 503 and "slot died" in p.error.message
    _, p = parse(b'error: {"message":"legacy"}\n\n')
    assert isinstance(p.error, UpstreamError) and p.error.message == "legacy"


@pytest.mark.parametrize("mode", ["events", "passthrough"])
def test_a_malformed_event_is_a_bad_upstream_event_after_the_good_ones(mode):
    parser = SSEParser()
    got = getattr(parser, mode)(b'data: {"a":1}\n\ndata: {"a": tru\n\ndata: {"a":3}\n\n')
    assert got == ([{"a": 1}] if mode == "events" else b'data: {"a":1}\n\n')
    assert isinstance(parser.error, BadUpstreamEvent) and parser.error.status == 502


def test_passthrough_forwards_complete_lines_unchanged_and_observes_the_metered_ones():
    seen = []
    parser = SSEParser(observe=seen.append)
    head = b'data: {"choices":[{"delta":{"content":"x"},"finish_reason":null}]}\n\n'
    last = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"timings":{"predicted_n":3}}\n\n'
    assert parser.passthrough(head + last[:20]) == head
    assert parser.passthrough(last[20:] + b"data: [DONE]\n\nextra") == last + b"data: [DONE]\n\n"
    assert parser.done and seen == [{"choices": [{"delta": {}, "finish_reason": "stop"}], "timings": {"predicted_n": 3}}]


STREAM = (b'data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}\n\n'
          b'data: {"choices":[{"delta":{"content":"b"},"finish_reason":null}]}\n\n'
          b": keep-alive comment\n\n"
          b'event: message\ndata: {"choices":[{"delta":{"content":"c"},"finish_reason":null}]}\n\n'
          b'data: {"choices":[{"delta":{"content":"d"},"finish_reason":null}]}\n\n'
          b'data: {"choices":[{"delta":{},"finish_reason":"length"}],"timings":{"predicted_n":4}}\n\n'
          b'data: {"choices":[],"usage":{"completion_tokens":4}}\n\n'
          b"data: [DONE]\n\n")
CONTENT = [{"choices": [{"delta": {"content": c}, "finish_reason": None}]} for c in "abcd"]
METERED = [{"choices": [{"delta": {}, "finish_reason": "length"}], "timings": {"predicted_n": 4}},
           {"choices": [], "usage": {"completion_tokens": 4}}]


@pytest.mark.parametrize("reads", [1, 2, 3])
def test_every_split_of_a_stream_gives_the_same_events_and_bytes(reads):
    """Runner reads cut anywhere (mid-event, between an event's two newlines, inside a metered event): the same
    events, the same bytes forwarded, and the metered events observed once each, whichever path a read takes."""
    cuts = [(i, j) for i in range(len(STREAM) + 1) for j in ([i] if reads < 3 else range(i, len(STREAM) + 1, 7))]
    if reads == 1:
        cuts = [(len(STREAM), len(STREAM))]
    for i, j in cuts:
        parts = [STREAM[:i], STREAM[i:j], STREAM[j:]]
        seen: list = []
        parser = SSEParser(observe=seen.append)
        events = [e for part in parts for e in parser.events(part)]
        assert events == CONTENT + METERED and parser.done and seen == METERED, (i, j)
        seen.clear()
        parser = SSEParser(observe=seen.append)
        forwarded = b"".join(parser.passthrough(part) for part in parts) + parser.close_passthrough()
        assert forwarded == STREAM and parser.done and seen == METERED, (i, j)


def test_a_read_of_plain_events_then_an_error_keeps_the_plain_ones():
    plain = b"".join(b'data: {"n":%d}\n\n' % n for n in range(50))
    parser = SSEParser()
    assert parser.passthrough(plain + b'data: {"error":{"message":"boom"}}\n\n' + plain) == plain
    assert isinstance(parser.error, UpstreamError) and parser.error.message == "boom"
    parser = SSEParser()
    assert parser.events(plain + b'data: {"n": oops}\n\n') == [{"n": n} for n in range(50)]
    assert isinstance(parser.error, BadUpstreamEvent)


def _facts(reply: object) -> tuple[object, object, object]:
    """What a meter takes from ``reply`` (JSON) through ``_observe_reply``, and through ``observe`` of the decoded
    value: the two must agree."""
    out = []
    for feed in (lambda m: _observe_reply(m, json.dumps(reply).encode()), lambda m: m.observe(reply)):
        meter = RequestMeter.__new__(RequestMeter)  # its facts only: no host, no events
        meter.usage, meter.timings, meter.stop_reason = {}, {}, None
        feed(meter)
        out.append((meter.usage, meter.timings, meter.stop_reason))
    assert out[0] == out[1]
    return out[0]


@pytest.mark.parametrize("size", [10, 5000], ids=["short", "long"])
def test_a_whole_reply_gives_the_meter_its_usage_timings_and_stop_reason(size):
    reply = {"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "w" * size}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7}, "timings": {"predicted_per_second": 12.5}}
    assert _facts(reply) == (reply["usage"], reply["timings"], "stop")
    embeddings = {"data": [{"embedding": [0.5] * (size // 4 + 1), "index": i} for i in range(3)],
                  "usage": {"prompt_tokens": 9, "total_tokens": 9}}
    assert _facts(embeddings) == (embeddings["usage"], {}, None)
    odd = [1, 2, 3] * size  # JSON, but not an object: nothing to meter, no error
    assert _facts(odd) == ({}, {}, None)
    odd_choices = {"choices": ["not an object"] * size, "usage": {"prompt_tokens": 1}}
    assert _facts(odd_choices) == ({"prompt_tokens": 1}, {}, None)
    odd_fields = {"choices": [{"finish_reason": None}, {"finish_reason": "length"}], "usage": 3, "timings": []}
    assert _facts(odd_fields) == ({}, {}, "length")
