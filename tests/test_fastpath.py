"""The lean ASGI path of the OpenAI passthrough routes (llama_host.fastpath) answers exactly as the Litestar routes it
shadows: every check (browser, API key, body limit, body validation, model lookup), the error shapes, the replies
and the metering. Each case runs with ``plugins.openai_api.fast_path`` on and off and the answers are compared."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Response

import fake_llama_server as fake
from llama_host.eventloop import loop_name
from llama_host.fastpath import FastPath, Reply
from llama_host.testing import serve_host, wait_until
from test_fault_matrix import Recorder

KEY = "fast-key"
LIMIT = 4096
PLUGINS = ["openai_api", "llama_server"]
CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
#: (name, method, path, headers, body) — body: a dict (JSON), bytes, or a callable of nothing
CASES: list[tuple[str, str, dict[str, str], Any]] = [
    ("no key", "/v1/chat/completions", {}, CHAT),
    ("wrong key", "/v1/chat/completions", {"authorization": "Bearer nope"}, CHAT),
    ("x-api-key", "/v1/chat/completions", {"x-api-key": KEY}, CHAT),
    ("chat", "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, CHAT),
    ("chat stream", "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, {**CHAT, "stream": True}),
    ("completions", "/v1/completions", {"authorization": f"Bearer {KEY}"},
     {"model": "m", "prompt": "hi", "max_tokens": 2}),
    ("unknown model", "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, {**CHAT, "model": "ghost"}),
    ("no model", "/v1/completions", {"authorization": f"Bearer {KEY}"}, {"prompt": "hi"}),
    ("not JSON", "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, b"{nope"),
    ("empty", "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, b""),
    ("negative count", "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, {**CHAT, "max_tokens": -5}),
    ("too large", "/v1/chat/completions", {"authorization": f"Bearer {KEY}"}, b"{" + b" " * LIMIT + b"}"),
    ("too large, chunked", "/v1/chat/completions", {"authorization": f"Bearer {KEY}"},
     lambda: iter([b"{", b" " * LIMIT, b"}"])),
    ("foreign origin", "/v1/chat/completions", {"authorization": f"Bearer {KEY}", "origin": "https://evil.example"},
     CHAT),
    ("own origin", "/v1/chat/completions", {"authorization": f"Bearer {KEY}", "origin": "http://localhost:3000"},
     CHAT),
    ("foreign host", "/v1/chat/completions", {"authorization": f"Bearer {KEY}", "host": "evil.example"}, CHAT),
    ("embeddings, not served", "/v1/embeddings", {"authorization": f"Bearer {KEY}"}, {"model": "m", "input": "hi"}),
]
#: response headers that differ by nature (dates) or by which path served them
VOLATILE = {"date", "content-length"}


def answers(tmp_path: Path, fast: bool, loop: str = "asyncio") -> tuple[list[tuple[Any, ...]], list[Any]]:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    wrapper = fake.write_wrapper(tmp_path)
    config = {"log_dir": str(tmp_path / "logs"), "api_keys": [KEY], "event_loop": loop,
              "plugins": {"openai_api": {"fast_path": fast, "max_body_bytes": LIMIT}},
              "scheduler": {"max_loaded": 1, "startup_timeout": 30},
              "models": {"m": {"path": str(gguf), "binary": str(wrapper)}}}
    recorder = Recorder()
    out = []
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh, \
            httpx.Client(base_url=rh.url(), timeout=30) as client:
        assert isinstance(rh.host.build_apps()[rh.port()].asgi_handler, FastPath) is fast
        assert loop_name(rh.loop) == loop
        for name, path, headers, body in CASES:
            if isinstance(body, dict):
                r = client.post(path, json=body, headers=headers)
            else:
                r = client.post(path, content=body() if callable(body) else body, headers=headers)
            kept = {k: v for k, v in r.headers.items() if k not in VOLATILE}
            text = r.content
            if b'"id":"chatcmpl' in text or b'"id": "chatcmpl' in text or b'"created"' in text:
                text = b"(a reply of %d events)" % text.count(b"data: ") if b"data: " in text else b"(a reply)"
            out.append((name, r.status_code, kept, text))
        # x-api-key, chat, chat stream, completions, own origin, embeddings: six requests reach the primitive
        finished = wait_until(lambda: [e for e in recorder.requests() if e.kind == "request_finished"][5:] and
                              [e for e in recorder.requests() if e.kind == "request_finished"],
                              "the end-of-request records")
    records = [(e.surface, e.model, e.endpoint, e.status, e.stream, e.completion_tokens) for e in finished]
    return out, records


@pytest.mark.parametrize("fast, loop", [(True, "asyncio"), (True, "uvloop"), (False, "asyncio")],
                         ids=["fast", "fast-uvloop", "litestar"])
def test_fast_path_answers(tmp_path: Path, fast: bool, loop: str) -> None:
    got, records = answers(tmp_path, fast, loop)
    statuses = {name: status for name, status, _, _ in got}
    assert statuses == {
        "no key": 401, "wrong key": 401, "x-api-key": 200, "chat": 200, "chat stream": 200, "completions": 200,
        "unknown model": 404, "no model": 400, "not JSON": 400, "empty": 400, "negative count": 400,
        "too large": 413, "too large, chunked": 413, "foreign origin": 403, "own origin": 200, "foreign host": 421,
        "embeddings, not served": statuses["embeddings, not served"]}
    for name, status, headers, body in got:
        if status >= 400:
            assert body.startswith(b'{"error":{"message":'), (name, body)
            assert headers["content-type"] == "application/json", name
    own = next(h for n, _, h, _ in got if n == "own origin")
    assert own["access-control-allow-origin"] == "http://localhost:3000"
    assert ("openai_api", "m", "chat", 200, True, 3) in records


def test_fast_path_same_as_litestar(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    fast, fast_records = answers(tmp_path / "a", True)
    slow, slow_records = answers(tmp_path / "b", False)
    for a, b in zip(fast, slow, strict=True):
        assert a == b
    assert fast_records == slow_records


def test_a_reply_sets_every_slot_litestars_response_sets() -> None:
    made, reply = Response(content=b"{}", status_code=201, media_type="application/json"), Reply(b"{}", 201,
                                                                                                 "application/json")
    slots = {name for cls in type(made).__mro__ for name in getattr(cls, "__slots__", ())}
    assert slots and {name: getattr(reply, name) for name in slots} == {name: getattr(made, name) for name in slots}
