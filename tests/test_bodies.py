"""The core's decision on hostile request bodies (llama_host.bodies): every case is a BadRequest, never another error."""

import msgspec
import pytest

from llama_host.bodies import MAX_DEPTH, decode_json
from llama_host.errors import BadRequest


class Typed(msgspec.Struct):
    model: str
    options: dict = {}


@pytest.mark.parametrize("raw, words", [
    (b"[" * 1200, "nested"),
    (b'{"a":' * 1200, "nested"),
    (b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1), "nested"),
    (b'{"max_tokens": 1e400}', "out of range"),
    (b'{"model": "a"', "not valid JSON"),
    (b"\xff\xfe{}", "not valid JSON"),
    (b"", "empty"),
    (b"   ", "empty"),
])
def test_hostile_bodies_are_bad_requests(raw, words):
    with pytest.raises(BadRequest) as info:
        decode_json(raw)
    assert words in info.value.message


def test_depth_at_the_limit_is_accepted():
    raw = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert decode_json(raw) == eval("[" * MAX_DEPTH + "]" * MAX_DEPTH)


def test_wide_bodies_with_many_brackets_are_accepted():
    raw = msgspec.json.encode({"input": [[1, 2]] * 5000})
    assert len(decode_json(raw)["input"]) == 5000


def test_typed_view_checks_types_and_depth():
    assert decode_json(b'{"model": "m"}', Typed).model == "m"
    with pytest.raises(BadRequest, match="Expected `str`"):
        decode_json(b'{"model": 5}', Typed)
    deep = b'{"model": "m", "options": ' + b'{"a":' * 100 + b"1" + b"}" * 101
    with pytest.raises(BadRequest, match="nested"):
        decode_json(deep, Typed)


def test_counts_below_their_minimum_are_refused_by_name():
    assert decode_json(b'{"max_tokens": -5}')["max_tokens"] == -5  # not a count field here
    with pytest.raises(BadRequest, match="'max_tokens' must be at least -1") as info:
        decode_json(b'{"max_tokens": -2}', minimums={"max_tokens": -1})
    assert info.value.param == "max_tokens"
    with pytest.raises(BadRequest, match="'n' must be at least 1"):
        decode_json(b'{"n": 0}', minimums={"n": 1})
    counts = {"max_tokens": -1, "stream": 0}
    assert decode_json(b'{"max_tokens": -1, "stream": true}', minimums=counts)["max_tokens"] == -1  # -1: no limit
    for body in (b'{"n": 0, "max_tokens": -2}', b'{"max_tokens": -2, "n": 0}'):  # two below: the first of minimums
        with pytest.raises(BadRequest, match="'max_tokens' must be at least -1"):
            decode_json(body, minimums={"max_tokens": -1, "n": 1})


def test_integers_beyond_64_bits_are_refused():
    for raw in (b'{"max_tokens": 1' + b"0" * 400 + b"}", b'{"a": [[-1' + b"0" * 19 + b"]]}"):
        with pytest.raises(BadRequest, match="out of range"):
            decode_json(raw)
    with pytest.raises(BadRequest, match="out of range"):
        decode_json(b'{"model": "m", "options": {"seed": 1' + b"0" * 30 + b"}}", Typed)
    assert decode_json(b'{"seed": 18446744073709551615, "n": -9223372036854775808}')["seed"] == 2**64 - 1
    assert decode_json(b'{"prompt": "' + b"1" * 40 + b'"}')["prompt"] == "1" * 40  # digits in a string are text


def test_negative_counts_inside_an_object():
    typed = decode_json(b'{"model": "m", "options": {"num_ctx": 8}}', Typed, minimums={"options.num_ctx": 1})
    assert typed.options == {"num_ctx": 8}
    with pytest.raises(BadRequest, match=r"'options\.num_ctx' must be at least 1") as info:
        decode_json(b'{"model": "m", "options": {"num_ctx": -5}}', Typed, minimums={"options.num_ctx": 1})
    assert info.value.param == "options.num_ctx"
    assert decode_json(b'{"options": null}', minimums={"options.num_ctx": 1}) == {"options": None}
