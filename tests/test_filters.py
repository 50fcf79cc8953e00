"""Request filters (models.<name>.filters), the pure part: llama_host.filters."""

import msgspec

from llama_host.filters import apply_filters, filtered
from llama_host.types import ModelSpec, RequestFilters

FILTERS = RequestFilters(strip=["top_k", "logit_bias"], set={"temperature": 0.1})


def test_strip_and_set_leave_the_original_alone():
    body = {"model": "m", "top_k": 5, "temperature": 0.9, "stream": True}
    assert filtered(FILTERS, body) == {"model": "m", "temperature": 0.1, "stream": True}
    assert body["top_k"] == 5 and body["temperature"] == 0.9


def test_bytes_bodies_are_decoded_and_others_pass_unchanged():
    json, body = apply_filters(FILTERS, None, msgspec.json.encode({"top_k": 1, "seed": 2}))
    assert (json, body) == ({"seed": 2, "temperature": 0.1}, None)
    assert apply_filters(FILTERS, None, b"not json") == (None, b"not json")
    assert apply_filters(FILTERS, None, b"[1, 2]") == (None, b"[1, 2]")
    assert apply_filters(FILTERS, [1], None) == ([1], None)


def test_filters_are_read_from_the_site_file():
    spec = msgspec.convert({"filters": {"strip": ["top_k"], "set": {"seed": 1}}}, ModelSpec)
    assert spec.filters == RequestFilters(strip=["top_k"], set={"seed": 1})
