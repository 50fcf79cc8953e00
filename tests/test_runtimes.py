"""The ``command`` and ``remote`` runtimes: any OpenAI-compatible server, started from cmd or already running."""

import sys
from pathlib import Path

import httpx
import openai
import pytest

from llama_host.errors import ConfigError
from llama_host.host import Host
from llama_host.testing import serve_host
from llama_host.types import ModelSpec
from llama_host_llama_server import HTTP_THREADS, build_argv, http_threads

FAKE = str(Path(__file__).with_name("fake_llama_server.py"))
HELLO = [{"role": "user", "content": "hi"}]


def test_command_runtime_starts_cmd_with_placeholders(tmp_path):
    site = {"log_dir": str(tmp_path), "models": {"cmd-model": {
        "runtime": "command", "path": str(tmp_path / "weights.bin"),
        "cmd": [sys.executable, FAKE, "-m", "${MODEL_PATH}", "--port", "${PORT}", "--alias", "${MODEL_NAME}"]}}}
    with serve_host(site, ["openai_api", "command_runtime"]) as rh, \
            openai.OpenAI(base_url=rh.url() + "/v1", api_key="x", max_retries=0) as client:
        reply = client.chat.completions.create(model="cmd-model", messages=HELLO, max_tokens=3)
        assert reply.choices[0].message.content == " t0 t1 t2"
        status = rh.host.scheduler.status("cmd-model")
        assert status.state == "loaded" and status.pid
        started = next(line for line in rh.host.scheduler.logs("cmd-model").lines if line.startswith("starting"))
    # placeholders were replaced by the runtime, not read from the environment
    assert f"-m {tmp_path / 'weights.bin'} --port " in started and "--alias cmd-model" in started


def test_command_runtime_without_cmd_is_a_configuration_error(tmp_path):
    site = {"log_dir": str(tmp_path), "models": {"empty": {"runtime": "command"}}}
    with pytest.raises(ConfigError) as info:
        Host.from_config(data=site, only=["openai_api", "command_runtime"])
    assert info.value.problems == ["models.empty.cmd: runtime 'command' needs 'cmd: [program, args...]'"]


def test_remote_runtime_routes_to_another_server_with_its_key(tmp_path):
    """One llama-host serves a model; a second one reaches it as a `remote` model with an API key."""
    inner = {"log_dir": str(tmp_path / "inner"), "api_keys": ["inner-key"], "models": {"m": {
        "runtime": "command", "aliases": ["far"], "cmd": [sys.executable, FAKE, "--port", "${PORT}"]}}}
    with serve_host(inner, ["openai_api", "command_runtime"]) as backend:
        outer = {"log_dir": str(tmp_path / "outer"), "scheduler": {"max_loaded": 1}, "models": {
            "far": {"runtime": "remote", "url": backend.url() + "/v1", "api_key": "inner-key", "health_path": "/api/v1/health"},
            "wrong-key": {"runtime": "remote", "url": backend.url(), "api_key": "nope", "health_path": "/v1/models"}}}
        with serve_host(outer, ["openai_api", "remote_runtime"]) as front, \
                openai.OpenAI(base_url=front.url() + "/v1", api_key="x", max_retries=0) as client:
            reply = client.chat.completions.create(model="far", messages=HELLO, max_tokens=2)
            assert reply.choices[0].message.content == " t0 t1"
            assert front.host.scheduler.status("far").pid is None  # no local process
            with pytest.raises(openai.APIStatusError) as info:  # the backend refuses the key: not healthy
                client.chat.completions.create(model="wrong-key", messages=HELLO)
            assert info.value.status_code == 503 and "not healthy" in info.value.body["message"]
            config = httpx.get(front.url() + "/api/v1/config").json()
            assert config["models"]["far"]["api_key"] == "***"


def test_llama_server_runners_get_http_threads_unless_a_model_sets_them():
    """llama-server's default HTTP threads leave a burst of new connections waiting 5 s (see HTTP_THREADS)."""
    spec = ModelSpec(name="m", path="/m.gguf")

    def threads(argv: list[str]) -> list[str]:
        return [argv[i + 1] for i, arg in enumerate(argv) if arg == "--threads-http"]

    assert threads(build_argv("llama-server", spec, 1234, {})) == [str(HTTP_THREADS)]
    assert threads(build_argv("llama-server", spec, 1234, {"threads_http": 8})) == ["8"]  # the plugin's params
    for own in ({"params": {"threads_http": 4}}, {"params": {"threads-http": 4}}, {"args": ["--threads-http", "4"]}):
        model = ModelSpec(name="m", path="/m.gguf", **own)
        assert threads(build_argv("llama-server", model, 1234, {})) == ["4"]
        assert http_threads(model, {}) == 4  # the relay opens no more connections than that
    assert http_threads(spec, {}) == HTTP_THREADS and http_threads(spec, {"threads_http": 8}) == 8
    assert http_threads(spec, {"threads_http": -1}) is None  # llama-server's own choice: no bound known
