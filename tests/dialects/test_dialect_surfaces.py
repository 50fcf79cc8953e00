"""The dialect surfaces without a runner: API keys, routing errors and bad bodies in each dialect's own shape, on
every port that serves /v1 (the real host, real sockets, the official clients)."""

from __future__ import annotations

import anthropic
import httpx
import openai
import pytest

from llama_host.testing import serve_host

PLUGINS = ["openai_api", "anthropic_api", "ollama_api", "remote_runtime"]


@pytest.fixture(scope="module")
def rh(tmp_path_factory):
    site = {"api_keys": ["sekrit"], "scheduler": {"startup_timeout": 3}, "log_dir": str(tmp_path_factory.mktemp("logs")),
            "models": {"far": {"runtime": "remote", "url": "http://127.0.0.1:9"}}}
    with serve_host(site, PLUGINS) as running:
        yield running


@pytest.mark.parametrize("port", ["main", "ollama_api"])
def test_anthropic_keys_and_error_types(rh, port):
    base = rh.url(port)
    with anthropic.Anthropic(base_url=base, api_key="wrong", max_retries=0) as c, pytest.raises(
            anthropic.AuthenticationError) as err:
        c.messages.create(model="far", max_tokens=1, messages=[{"role": "user", "content": "x"}])
    assert err.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                         "message": err.value.body["error"]["message"]}}
    with anthropic.Anthropic(base_url=base, api_key="sekrit", max_retries=0) as c:  # sent as x-api-key
        with pytest.raises(anthropic.NotFoundError) as err:
            c.messages.create(model="nope", max_tokens=1, messages=[{"role": "user", "content": "x"}])
        assert err.value.body["error"]["type"] == "not_found_error"
        with pytest.raises(anthropic.BadRequestError) as err:
            c.messages.count_tokens(model="far", messages=[{"role": "user", "content": [{"type": "document"}]}])
        assert err.value.body["error"]["type"] == "invalid_request_error"
    with httpx.Client(base_url=base, headers={"x-api-key": "sekrit", "anthropic-version": "2023-06-01"}) as c:
        for raw in (b"[1]", b'{"model": "far", "max_tokens": -1, "messages": []}', b'{"a":' * 100 + b"1"):
            r = c.post("/v1/messages", content=raw, headers={"content-type": "application/json"})
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", raw[:40]


def test_runner_unreachable_is_an_api_error_before_a_stream(rh):
    with anthropic.Anthropic(base_url=rh.url(), api_key="sekrit", max_retries=0) as c, pytest.raises(
            anthropic.APIStatusError) as err:
        c.messages.create(model="far", max_tokens=1, messages=[{"role": "user", "content": "x"}], stream=True)
    assert err.value.status_code >= 500 and err.value.body["type"] == "error"


def test_responses_keys_and_errors_in_openai_shape(rh):
    with openai.OpenAI(base_url=rh.url("ollama_api") + "/v1", api_key="wrong", max_retries=0) as c, pytest.raises(
            openai.AuthenticationError):
        c.responses.create(model="far", input="x")
    with openai.OpenAI(base_url=rh.url() + "/v1", api_key="sekrit", max_retries=0) as c:
        with pytest.raises(openai.NotFoundError) as err:
            c.responses.create(model="far", input="x", previous_response_id="resp_nope")
        assert err.value.body["code"] == "previous_response_not_found"
        with pytest.raises(openai.BadRequestError) as err:
            c.responses.create(model="far", input=[{"type": "item_reference", "id": "x"}])
        assert err.value.body["param"] == "input[0].type"
        with pytest.raises(openai.NotFoundError):
            c.responses.retrieve("resp_nope")
        with pytest.raises(openai.BadRequestError):
            c.responses.create(model="far", input="x", max_output_tokens=-5)


def test_native_routes_need_a_model(rh):
    with httpx.Client(base_url=rh.url(), headers={"authorization": "Bearer sekrit"}) as c:
        r = c.post("/tokenize", json={"content": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "model"
        assert c.post("/infill", json={"model": "nope"}).status_code == 404
        assert c.post("/completion", json={"model": "far", "prompt": "x"}).status_code == 503  # cannot start
