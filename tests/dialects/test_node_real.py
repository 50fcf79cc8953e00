"""The Node OpenAI SDK (``responses.create``) and the Vercel AI SDK's default OpenAI provider (``openai(model)``,
which speaks the Responses API) against the real llama-server on the tiny model, through ``node``.

The packages are installed by ``scripts/setup`` (``npm ci`` in ``tests/node-dialects``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from llama_host.testing import serve_host, tiny_site
from llama_host.testing import EventRecorder as Recorder

pytestmark = pytest.mark.real
NODE_DIR = Path(__file__).resolve().parent.parent / "node-dialects"


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "openai").is_dir():
        message = "node or tests/node-dialects/node_modules missing: run scripts/setup"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return node


def test_node_openai_sdk_and_ai_sdk_default_provider(tiny_model, llama_server_bin, tmp_path):
    node = _node()
    site = tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path / "logs"))
    recorder = Recorder()
    with serve_host(site, ["openai_api", "llama_server"], extra=[("recorder", recorder)]) as rh:
        done = subprocess.run([node, "dialects.mjs", rh.url(), "tiny"], cwd=NODE_DIR, capture_output=True,
                              text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["sdk"]["id"].startswith("resp_") and out["sdk"]["text"] and out["sdk"]["status"] == "incomplete"
    assert out["sdk"]["usage"]["output_tokens"] == 5
    types = out["sdkStream"]["types"]
    assert types[0] == "response.created" and types[-1] == "response.incomplete"
    assert "response.output_text.delta" in types and out["sdkStream"]["deltas"]
    assert out["sdkFollowUp"]["previous"] == out["sdk"]["id"] and out["sdkFollowUp"]["inputTokens"] > 0
    assert out["sdkTools"]["tools"] == ["get_weather"]
    assert out["aiGenerate"]["text"] and out["aiGenerate"]["finishReason"] == "length"
    assert out["aiGenerate"]["usage"]["outputTokens"] == 5
    assert out["aiStream"]["text"] and out["aiStream"]["finishReason"] == "length"
    # every request above went through /v1/responses (the AI SDK's default provider speaks it too)
    endpoints = [e.endpoint for e in recorder.events if e.kind == "request_finished"]
    assert endpoints == ["responses"] * 6
