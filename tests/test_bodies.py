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
    assert decode_json(raw) == eval("[" * MAX_DEPTH + "]" * MAX_DEPTH)  # noqa: S307 - brackets only


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


def test_negative_counts_are_refused_by_name():
    assert decode_json(b'{"max_tokens": -1}')["max_tokens"] == -1  # not a count field here
    with pytest.raises(BadRequest, match="max_tokens") as info:
        decode_json(b'{"max_tokens": -1}', nonnegative=("max_tokens",))
    assert info.value.param == "max_tokens"
    assert decode_json(b'{"max_tokens": 0, "stream": true}', nonnegative=("max_tokens", "stream"))["max_tokens"] == 0
