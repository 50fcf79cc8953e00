"""The ``remote`` runtime against another llama-host: the default health check finds its ``/api/v1/health``, and
``upstream_model`` renames the model on the way out (both OpenAI passthrough bodies and surface-built bodies)."""

import sys
from pathlib import Path

import httpx
import openai
import pytest

from llama_host.testing import serve_host

FAKE = str(Path(__file__).parents[1] / "fake_llama_server.py")
HELLO = [{"role": "user", "content": "hi"}]


@pytest.fixture
def backend(tmp_path):
    """A llama-host with a key, serving model ``inner-name`` (a fake llama-server through the command runtime)."""
    inner = {"log_dir": str(tmp_path / "inner"), "api_keys": ["inner-key"], "models": {"inner-name": {
        "runtime": "command", "cmd": [sys.executable, FAKE, "--port", "${PORT}"]}}}
    with serve_host(inner, ["openai_api", "command_runtime"]) as rh:
        yield rh


def test_default_health_check_and_upstream_model_against_llama_host(tmp_path, backend):
    outer = {"log_dir": str(tmp_path / "outer"), "models": {
        "renamed": {"runtime": "remote", "url": backend.url() + "/v1", "api_key": "inner-key",
                    "upstream_model": "inner-name"},
        "same-name": {"runtime": "remote", "url": backend.url(), "api_key": "inner-key"}}}
    with serve_host(outer, ["openai_api", "ollama_api", "remote_runtime"]) as front, \
            openai.OpenAI(base_url=front.url() + "/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model="renamed", messages=HELLO, max_tokens=2)
        assert reply.choices[0].message.content == " t0 t1"
        logs = front.host.scheduler.logs("renamed").lines
        # /health is not llama-host's: the check fell back to /api/v1/health
        assert any("/health: HTTP 404" in line for line in logs), list(logs)
        assert any("/api/v1/health: HTTP 200" in line for line in logs), list(logs)
        # a body the Ollama surface builds itself is renamed too
        with front.client("ollama_api") as c:
            r = c.post("/api/chat", json={"model": "renamed", "messages": HELLO, "stream": False,
                                          "options": {"num_predict": 3}})
            assert r.status_code == 200, r.text
            assert r.json()["message"]["content"] == " t0 t1 t2"
        # without upstream_model the client's name goes upstream, which the backend does not know
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="same-name", messages=HELLO, max_tokens=2)
        assert info.value.status_code == 404


def test_custom_health_path_has_no_fallback(tmp_path, backend):
    outer = {"log_dir": str(tmp_path / "outer"), "models": {
        "far": {"runtime": "remote", "url": backend.url(), "api_key": "inner-key", "health_path": "/nowhere",
                "upstream_model": "inner-name"}}}
    with serve_host(outer, ["openai_api", "remote_runtime"]) as front:
        r = httpx.post(front.url() + "/v1/chat/completions", json={"model": "far", "messages": HELLO})
        assert r.status_code == 503 and "not healthy" in r.json()["error"]["message"]
        assert not any("/api/v1/health" in line for line in front.host.scheduler.logs("far").lines)
