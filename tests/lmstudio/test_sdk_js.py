"""LM Studio's JavaScript SDK (``@lmstudio/sdk``, installed into ``tests/node`` by ``scripts/setup``), unchanged,
against the LM Studio port of the real host and llama-server: ``tests/node/sdk_flow.mjs`` runs one scenario of the
SDK's README and docs per call under ``node`` and prints what it saw.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llama_host import hookimpl
from llama_host.testing import RunningHost, serve_host
from llama_host.tinymodel import write_tiny_model
from llama_host.types import RequestFinished

pytestmark = pytest.mark.real

NODE_DIR = Path(__file__).resolve().parents[1] / "node"
PLUGINS = ["lmstudio_api", "openai_api", "llama_server"]
SETTLE_S = 30


@pytest.fixture(scope="module")
def node() -> str:
    """``node`` with the SDK installed by scripts/setup. Missing → fail under CI, skip elsewhere."""
    binary = shutil.which("node")
    if binary is None or not (NODE_DIR / "node_modules" / "@lmstudio" / "sdk").is_dir():
        message = "node or tests/node/node_modules missing: install nodejs and npm, then run scripts/setup"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


class Recorder:
    def __init__(self) -> None:
        self.finished: list[RequestFinished] = []

    @hookimpl
    def track_event(self, event: Any) -> None:
        if isinstance(event, RequestFinished):
            self.finished.append(event)


@pytest.fixture(scope="module")
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, llama_server_bin: str,
            recorder: Recorder) -> Iterator[RunningHost]:
    folder = tmp_path_factory.mktemp("sdk-js-models")
    chat = write_tiny_model(folder / "tiny.gguf", context_length=32768)
    embed = write_tiny_model(folder / "tiny-embed.gguf", name="tiny-embed", embedding=True)
    config = {
        "scheduler": {"max_loaded": 3, "ttl": 300, "startup_timeout": 60},
        "plugins": {"llama_server": {"binary": llama_server_bin}},
        "models": {
            "tiny": {"path": str(chat), "params": {"ctx_size": 1024}},
            "tiny-embed": {"path": str(embed), "params": {"ctx_size": 512, "embeddings": True, "pooling": "mean"}},
            "tiny-long": {"path": str(chat), "params": {"ctx_size": 32768, "parallel": 1}, "unlisted": True},
        },
    }
    with serve_host(config, plugins=PLUGINS, extra=[("recorder", recorder)]) as rh:
        yield rh


def run_js(node: str, rh: RunningHost, scenario: str, *extra: str) -> dict[str, Any]:
    done = subprocess.run([node, "sdk_flow.mjs", f"ws://127.0.0.1:{rh.port('lmstudio_api')}", scenario, *extra],
                          cwd=NODE_DIR, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    # the SDK prints protocol problems it meets ("communication warning") to stderr: there must be none
    assert "warning" not in done.stderr.lower(), done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def state(rh: RunningHost, name: str) -> str:
    return rh.host.scheduler.status(name).state


def unload(rh: RunningHost, name: str) -> None:
    rh.call(rh.host.scheduler.unload(name))


def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + SETTLE_S
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached: {what}")
        time.sleep(0.02)


def runner_stopped_early(rh: RunningHost, model: str, released_before: int) -> int:
    """Wait for the runner to release its slot after the cancel; the tokens it held then (prompt and generated) —
    far fewer than the 32k context it would have filled had it not stopped."""
    def released() -> list[str]:
        return [line for line in rh.host.scheduler.logs(model).tail(1000) if "stop processing: n_tokens" in line]

    wait_for(lambda: len(released()) > released_before, "llama-server released the slot")
    return int(re.search(r"n_tokens = (\d+)", released()[-1]).group(1))


def releases(rh: RunningHost, model: str) -> int:
    return sum("stop processing: n_tokens" in line for line in rh.host.scheduler.logs(model).tail(1000))


def predictions(recorder: Recorder, after: int) -> list[RequestFinished]:
    return [e for e in recorder.finished[after:] if e.endpoint == "/llm predict"]


def test_readme_flow(node: str, running: RunningHost, recorder: Recorder) -> None:
    unload(running, "tiny")
    seen = len(recorder.finished)
    out = run_js(node, running, "readme")
    assert sorted(out["downloaded"]) == [["tiny", "llm"], ["tiny-embed", "embedding"]]
    assert out["loadedBefore"] == [] and out["loadedAfter"] == ["tiny"] and out["identifier"] == "tiny"
    assert running.host.scheduler.status("tiny").ttl == 90  # model(key, {ttl}) on a model it loaded
    props = httpx.get(running.url() + "/upstream/tiny/props").json()
    assert out["contextLength"] == out["info"]["contextLength"] == props["default_generation_settings"]["n_ctx"]
    assert out["info"]["modelKey"] == "tiny" and out["info"]["type"] == "llm"

    respond, complete, stream = out["respond"], out["complete"], out["stream"]
    runner = predictions(recorder, seen)
    assert [e.completion_tokens for e in runner] == [8, 6, 10] and all(e.status == 200 for e in runner)
    for result, event in zip((respond, complete, stream), runner, strict=True):
        stats = result["stats"]
        assert result["content"]
        assert stats["stopReason"] == "maxPredictedTokensReached"
        assert stats["predictedTokensCount"] == event.completion_tokens
        assert stats["promptTokensCount"] == event.prompt_tokens
        assert stats["totalTokensCount"] == event.prompt_tokens + event.completion_tokens
        assert stats["tokensPerSecond"] == pytest.approx(event.tokens_per_second)
        assert stats["timeToFirstTokenSec"] > 0 and stats["totalTimeSec"] >= stats["timeToFirstTokenSec"]
    assert respond["modelKey"] == "tiny"
    assert "".join(stream["fragments"]) == stream["content"] and len(stream["fragments"]) == 10
    runner_tokens = httpx.post(running.url() + "/upstream/tiny/tokenize", json={"content": "hello world"}).json()
    assert out["tokens"] == runner_tokens["tokens"] and out["tokenCount"] == len(runner_tokens["tokens"])


def test_structured_output(node: str, running: RunningHost) -> None:
    out = run_js(node, running, "structured")
    assert json.loads(out["content"]) in ({"answer": "yes"}, {"answer": "no"})


@pytest.mark.parametrize("scenario", ["cancel", "abort"])
def test_cancel_stops_the_generation_at_the_runner(node: str, running: RunningHost, recorder: Recorder,
                                                   scenario: str) -> None:
    seen = len(recorder.finished)
    before = releases(running, "tiny-long") if state(running, "tiny-long") == "loaded" else 0
    out = run_js(node, running, scenario)
    assert out["stats"]["stopReason"] == "userStopped" and out["stats"]["predictedTokensCount"] >= 2
    wait_for(lambda: bool(predictions(recorder, seen)), "the prediction recorded")
    assert predictions(recorder, seen)[-1].status == 499
    assert runner_stopped_early(running, "tiny-long", before) < 16000
    assert running.host.scheduler.status("tiny-long").in_flight == 0


def test_embedding(node: str, running: RunningHost) -> None:
    out = run_js(node, running, "embedding")
    oai = openai.OpenAI(base_url=running.url("lmstudio_api") + "/v1", api_key="unused", max_retries=0)
    assert out["embedding"] == pytest.approx(oai.embeddings.create(model="tiny-embed", input="hello").data[0].embedding)
    assert out["contextLength"] == 512 and out["loaded"] == ["tiny-embed"]


def test_unload(node: str, running: RunningHost) -> None:
    out = run_js(node, running, "unload")
    assert out["loaded"] == [] and state(running, "tiny") == "unloaded"
    assert 'Cannot find a model with identifier "tiny"' in out["again"]  # the SDK renders the error's displayData


def test_errors(node: str, running: RunningHost) -> None:
    unload(running, "tiny")
    out = run_js(node, running, "errors")
    # the SDK renders each error from its displayData
    assert 'Cannot find a model with path "no-such-model"' in out["unknown"] and "tiny-embed" in out["unknown"]
    assert "Model has wrong domain" in out["wrongDomain"] and "an embedding model" in out["wrongDomain"]
    assert "No model found" in out["noneLoaded"]
    assert out["stillWorks"] == 2


def test_api_keys_as_the_client_passkey(node: str, tmp_path: Path, llama_server_bin: str) -> None:
    model = write_tiny_model(tmp_path / "tiny.gguf")
    config = {"api_keys": ["sekrit"], "plugins": {"llama_server": {"binary": llama_server_bin}},
              "models": {"tiny": {"path": str(model)}}}
    with serve_host(config, plugins=PLUGINS) as rh:
        assert run_js(node, rh, "models", "sekrit") == {"downloaded": ["tiny"]}
        denied = subprocess.run([node, "sdk_flow.mjs", f"ws://127.0.0.1:{rh.port('lmstudio_api')}", "models", "wrong"],
                                cwd=NODE_DIR, capture_output=True, text=True, timeout=60, check=False)
        assert denied.returncode != 0 and "Failed to authenticate" in denied.stderr
        assert "invalid or missing API key" in denied.stderr
