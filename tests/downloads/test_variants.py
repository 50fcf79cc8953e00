"""Variants (create/copy) are core models: their system prompt and parameters reach the runner from every surface,
and they are kept in managed.yaml next to the site file."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml

from llama_host.catalogue import Catalogue, with_model_defaults
from llama_host.testing import serve_host
from llama_host.types import ModelSpec

REPLY = {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}],
         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


@pytest.fixture
def upstream() -> Iterator[tuple[str, list[dict]]]:
    """An OpenAI-compatible server that records each request body (served as a ``remote`` model)."""
    bodies: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._send({"status": "ok"})

        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self._send(REPLY)

        def _send(self, obj: dict) -> None:
            data = json.dumps(obj).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", bodies
    server.shutdown()
    server.server_close()


def test_variant_system_prompt_and_parameters_reach_the_runner(upstream, tmp_path: Path) -> None:
    url, bodies = upstream
    cfg = {"models_dir": str(tmp_path / "managed"),
           "models": {"base": {"runtime": "remote", "url": url, "health_path": "/health"}}}
    with serve_host(cfg, plugins=["remote_runtime", "openai_api", "ollama_api"]) as rh:
        with httpx.Client(base_url=rh.url("ollama_api"), timeout=30) as c:
            r = c.post("/api/create", json={"model": "terse", "from": "base", "system": "Be terse.",
                                            "parameters": {"temperature": 0.25, "stop": ["END"]}, "stream": False})
            assert r.status_code == 200, r.text
            assert c.post("/api/copy", json={"source": "terse", "destination": "terse-copy"}).status_code == 200
            tags = {m["name"] for m in c.get("/api/tags").json()["models"]}
            assert {"base:latest", "terse:latest", "terse-copy:latest"} <= tags
        with httpx.Client(base_url=rh.url(), timeout=30) as c:
            hello = [{"role": "user", "content": "hi"}]
            for model in ("terse", "terse-copy"):
                assert c.post("/v1/chat/completions", json={"model": model, "messages": hello}).status_code == 200
            c.post("/v1/chat/completions", json={"model": "terse", "temperature": 0.9,
                                                 "messages": [{"role": "system", "content": "Mine."}, *hello]})
            c.post("/v1/chat/completions", json={"model": "base", "messages": hello})
    first, copied, own, plain = bodies
    for body in (first, copied):
        assert body["messages"][0] == {"role": "system", "content": "Be terse."}
        assert body["temperature"] == 0.25 and body["stop"] == ["END"]
    assert own["messages"][0]["content"] == "Mine." and len(own["messages"]) == 2 and own["temperature"] == 0.9
    assert plain["messages"] == [{"role": "user", "content": "hi"}] and "temperature" not in plain


def test_catalogue_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "managed.yaml"
    cat = Catalogue(path)
    cat.set_variant("v", {"from": "base", "system": "S", "parameters": {"num_ctx": 2048, "top_k": 5}})
    cat.record_pull("/m/u/r/r-Q4_K_M.gguf", names=["hf.co/u/r:Q4_K_M"], repo="u/r", quant="Q4_K_M",
                    files=["/m/u/r/r-Q4_K_M.gguf"])
    cat.save()
    assert set(yaml.safe_load(path.read_text())) == {"pulled", "variants"}
    again = Catalogue(path)
    again.load()
    base = ModelSpec(name="base", path="/m/u/r/r-Q4_K_M.gguf", params={"ctx_size": 512})
    configured, found = again.apply({}, [base])
    by_name = {s.name: s for s in found}
    assert by_name["base"].aliases == ["hf.co/u/r:Q4_K_M"]
    assert by_name["v"].params == {"ctx_size": 2048} and by_name["v"].defaults == {"top_k": 5}
    assert by_name["v"].metadata["variant"]["from"] == "base" and by_name["v"].source == "catalogue"
    # a variant whose model is gone is not listed (it returns with its model)
    assert [s.name for s in again.apply({}, [])[1]] == []


def test_with_model_defaults_leaves_other_requests_alone() -> None:
    spec = ModelSpec(name="v", system="S", defaults={"top_k": 3})
    body = {"messages": [{"role": "user", "content": "x"}], "top_k": 9}
    assert with_model_defaults(spec, "/v1/chat/completions", body)["messages"][0]["role"] == "system"
    assert with_model_defaults(spec, "/v1/chat/completions", body)["top_k"] == 9
    assert with_model_defaults(spec, "/v1/embeddings", {"input": "x"}) == {"input": "x"}
    assert with_model_defaults(spec, "/v1/completions", {"prompt": "x"}) == {"prompt": "x", "top_k": 3}
