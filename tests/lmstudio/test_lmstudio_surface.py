"""The surface through HTTP without a runner: the plugin loaded by a real host, its app driven by a TestClient.

Everything here answers before any model would start (listings, validation, unknown models, unloading what is not
loaded); inference is covered by the real tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from litestar.testing import TestClient

from llama_host.host import Host
from llama_host_lmstudio_api import Settings, config_schema

MODELS = {
    "qwen": {"path": "/models/lmstudio/qwen2.5-7b-instruct-q4_k_m.gguf", "params": {"ctx_size": 4096},
             "aliases": ["qwen-alias"],
             "metadata": {"architecture": "qwen2", "context_length": 32768, "tools": True, "size": 4_683_073_952,
                          "parameter_count": 7_615_616_512, "name": "Qwen2.5 7B Instruct"}},
    "vision": {"path": "/models/llava-q8_0.gguf", "mmproj": "/models/mmproj-f16.gguf"},
    "embed": {"path": "/models/nomic-embed-f16.gguf", "params": {"embeddings": True}},
    "hidden": {"path": "/models/hidden.gguf", "unlisted": True},
}


@pytest.fixture(scope="module")
def host() -> Host:
    return Host.from_config(data={"port": 18000, "plugins": {"lmstudio_api": {"port": 11234}}, "models": MODELS},
                            only=["lmstudio_api", "llama_server"])


@pytest.fixture
def client(host: Host) -> Iterator[TestClient[Any]]:
    with TestClient(host.build_apps()[11234], base_url="http://127.0.0.1") as c:
        yield c


def test_config_schema_and_surface(host: Host) -> None:
    schema = config_schema()
    body = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    assert body["properties"]["port"]["default"] == 1234
    assert body.get("additionalProperties") is False
    assert msgspec.convert({}, Settings).port == 1234
    surface = next(s for s in host.surfaces if s.name == "lmstudio_api")
    assert surface.port == 11234
    assert 11234 in host.listeners() and host.site.port == 18000  # apart from the core's /api/v1 on the main port


def test_v0_models(client: TestClient[Any]) -> None:
    data = {m["id"]: m for m in client.get("/api/v0/models").json()["data"]}
    assert set(data) == {"qwen", "vision", "embed"}  # unlisted models stay out of the list
    assert data["qwen"] == {
        "id": "qwen", "object": "model", "type": "llm", "publisher": "local", "arch": "qwen2",
        "compatibility_type": "gguf", "quantization": "Q4_K_M", "state": "not-loaded", "max_context_length": 32768,
        "capabilities": ["tool_use"],
        "scheduling": {"pinned": False, "priority": 0, "group": None, "max_concurrent": None},
    }
    assert data["vision"]["type"] == "vlm" and data["vision"]["quantization"] == "Q8_0"
    assert data["embed"]["type"] == "embeddings"
    assert client.get("/api/v0/models/qwen-alias").json()["id"] == "qwen"
    assert client.get("/api/v0/models/hidden").json()["id"] == "hidden"  # still reachable by name


def test_v1_models(client: TestClient[Any]) -> None:
    models = {m["key"]: m for m in client.get("/api/v1/models").json()["models"]}
    qwen = models["qwen"]
    assert qwen["display_name"] == "Qwen2.5 7B Instruct" and qwen["params_string"] == "7.6B"
    assert qwen["size_bytes"] == 4_683_073_952 and qwen["loaded_instances"] == []
    assert qwen["capabilities"] == {"vision": False, "trained_for_tool_use": True}
    assert models["vision"]["capabilities"]["vision"] is True
    assert models["embed"]["type"] == "embedding" and "capabilities" not in models["embed"]
    assert models["embed"]["size_bytes"] == 0  # no such file


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code"),
    [
        ("get", "/api/v0/models/nope", None, 404, "model_not_found"),
        ("post", "/api/v0/chat/completions", {"model": "nope", "messages": []}, 404, "model_not_found"),
        ("post", "/api/v0/completions", {"model": "nope", "prompt": "x"}, 404, "model_not_found"),
        ("post", "/api/v0/embeddings", {"model": "nope", "input": "x"}, 404, "model_not_found"),
        ("post", "/api/v0/chat/completions", {"messages": []}, 400, "invalid_request"),  # no model, no default
        ("post", "/api/v0/chat/completions", {"model": "qwen"}, 400, "invalid_request"),  # no messages
        ("post", "/api/v0/chat/completions", [1, 2], 400, "invalid_request"),
        ("post", "/api/v1/chat", {"model": "qwen"}, 400, "invalid_request"),
        ("post", "/api/v1/chat", {"model": "qwen", "input": [{"type": "audio"}]}, 400, "invalid_request"),
        ("post", "/api/v1/chat", {"model": "qwen", "input": "x", "reasoning": "max"}, 400, "invalid_request"),
        ("post", "/api/v1/chat", {"model": "qwen", "input": "x", "integrations": ["mcp/x"]}, 501, "not_implemented"),
        ("post", "/api/v1/chat", {"model": "qwen", "input": "x", "previous_response_id": "resp_1"}, 400,
         "invalid_request"),
        ("post", "/api/v1/models/load", {"model": "nope"}, 404, "model_not_found"),
        ("post", "/api/v1/models/load", {}, 400, "invalid_request"),
        ("post", "/api/v1/models/unload", {"instance_id": "qwen"}, 404, "model_not_loaded"),
        ("post", "/api/v1/models/unload", {"instance_id": "nope"}, 404, "model_not_found"),
    ],
)
def test_errors_in_openai_shape(client: TestClient[Any], method: str, path: str, body: Any, status: int,
                                code: str) -> None:
    response = client.request(method.upper(), path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code
    assert isinstance(error["message"], str) and error["message"]


def test_unknown_route_and_method(client: TestClient[Any]) -> None:
    assert client.get("/api/v0/nothing").json()["error"]["code"] == "not_found"
    assert client.get("/api/v1/chat").status_code == 405
