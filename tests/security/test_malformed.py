"""Hostile bodies on all three ports: a 4xx in the dialect's shape, never a 5xx, at most one log line, no traceback.

The bodies here are the ones the host itself must refuse (before a model is looked up or started); the model they
name is configured but could never start, so a body the host wrongly let through shows as a 503, not as a pass.
"""

from __future__ import annotations

import logging

import httpx
import pytest

from llama_host.testing import serve_host

from security_kit import site

MAX_BODY = 2**20
#: The host's own loggers (the test's httpx client logs too; uvicorn's access log is off in the host).
HOST_LOGGERS = ("llama_host", "uvicorn.error", "litestar", "asyncio")
CHAT = b'"messages": [{"role": "user", "content": "hi"}]'
#: (listener, path, dialect, what the body is: chat / prompt / load)
ENDPOINTS = [
    ("core", "/v1/chat/completions", "openai", "chat"),
    ("core", "/v1/completions", "openai", "prompt"),
    ("core", "/v1/embeddings", "openai", "input"),
    ("ollama_api", "/api/chat", "ollama", "chat"),
    ("ollama_api", "/api/generate", "ollama", "prompt"),
    ("ollama_api", "/api/embed", "ollama", "input"),
    ("ollama_api", "/api/show", "ollama", "name"),
    ("ollama_api", "/v1/chat/completions", "openai", "chat"),
    ("lmstudio_api", "/api/v0/chat/completions", "openai", "chat"),
    ("lmstudio_api", "/api/v0/completions", "openai", "prompt"),
    ("lmstudio_api", "/api/v1/chat", "openai", "input"),
    ("lmstudio_api", "/api/v1/models/load", "openai", "load"),
    ("lmstudio_api", "/v1/chat/completions", "openai", "chat"),
]


def fields(kind: str) -> bytes:
    return {"chat": CHAT, "prompt": b'"prompt": "hi"', "input": b'"input": "hi"', "name": b'"name": "ghost"',
            "load": b'"context_length": 64'}[kind]


def bodies(kind: str, dialect: str) -> dict[str, bytes]:
    f = fields(kind)
    if dialect == "openai":
        counts, big = b'"max_tokens": -5', b'"max_tokens": 1e400, "temperature": 1e400'
    else:  # Ollama's numbers live in options (num_predict -1 and -2 mean "no limit" and "fill the context" there)
        counts, big = b'"options": {"num_ctx": -5}', b'"options": {"num_predict": 1e400, "num_ctx": 1e400}'
    out = {
        "deep array": b"[" * 1200 + b"]" * 1200,
        "deep array, unclosed": b"[" * 1200,
        "deep object": b'{"a":' * 1200 + b"1" + b"}" * 1200,
        "deep object, unclosed": b'{"a":' * 5000,
        "deep field": b'{"model": "ghost", ' + f + b', "x": ' + b"[" * 1200 + b"]" * 1200 + b"}",
        "number out of range": b'{"model": "ghost", ' + f + b", " + big + b"}",
        "integer out of range": b'{"model": "ghost", ' + f + b", " + big.replace(b"1e400", b"1" + b"0" * 400) + b"}",
        "negative count": b'{"model": "ghost", ' + f + b", " + counts + b"}",
        "model of the wrong type": b'{"model": 5, ' + f + b"}",
        "model null": b'{"model": null, ' + f + b"}",
        "invalid UTF-8": b'{"model": "gh\xff\xfeost", ' + f + b"}",
        "lone surrogate": b'{"model": "\\ud800", ' + f + b"}",
        "empty": b"",
        "white space": b"  \n ",
        "array": b"[1, 2]",
        "string": b'"x"',
        "number": b"1",
        "null": b"null",
        "not JSON": b"hello",
        "truncated": b'{"model": "ghost", ',
        "trailing garbage": b'{"model": "ghost"} x',
        "too large": b'{"model": "ghost", "prompt": "' + b"a" * (10_000_001 if dialect == "ollama" else 11 * 2**20)
                     + b'"}',
    }
    if kind == "load":  # LM Studio's load reads model and context_length only
        out["negative count"] = b'{"model": "ghost", "context_length": -5}'
    if kind == "name":  # Ollama's show reads the name only: numbers elsewhere are not its business
        for name in ("number out of range", "integer out of range", "negative count"):
            del out[name]
    return out


def shaped(r: httpx.Response, dialect: str) -> bool:
    try:
        error = r.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    if dialect == "ollama":
        return isinstance(error, str) and bool(error)
    return isinstance(error, dict) and bool(error.get("message")) and bool(error.get("type"))


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    config = site(tmp_path_factory.mktemp("malformed"))
    config["plugins"]["openai_api"] = {"max_body_bytes": MAX_BODY}
    with serve_host(config, ["openai_api", "ollama_api", "lmstudio_api", "llama_server"]) as rh:
        yield rh


@pytest.mark.parametrize("surface, path, dialect, kind", ENDPOINTS, ids=[f"{e[0]}{e[1]}" for e in ENDPOINTS])
def test_hostile_bodies_get_a_4xx_in_the_dialect(host, caplog, surface, path, dialect, kind):
    caplog.set_level(logging.DEBUG)
    problems = []
    with host.client(surface, timeout=60) as client:
        for name, body in bodies(kind, dialect).items():
            caplog.clear()
            r = client.post(path, content=body, headers={"Content-Type": "application/json"})
            records = [rec for rec in caplog.records if rec.levelno >= logging.INFO and rec.name.startswith(HOST_LOGGERS)]
            expected = 413 if name == "too large" else None
            if not 400 <= r.status_code < 500 or (expected and r.status_code != expected):
                problems.append(f"{name}: {r.status_code} {r.text[:200]}")
            elif not shaped(r, dialect):
                problems.append(f"{name}: not in the {dialect} shape: {r.text[:200]}")
            if len(records) > 1 or any(rec.exc_info or "Traceback" in rec.getMessage() for rec in records):
                problems.append(f"{name}: {len(records)} log lines: {[rec.getMessage()[:100] for rec in records]}")
    assert not problems, "\n".join(problems)


def test_the_body_limit_is_enforced_by_declared_length_too(host):
    """A client that announces a huge body is refused before it is read."""
    with host.client(timeout=30) as client:
        r = client.post("/v1/chat/completions", content=b"{" + b" " * (MAX_BODY + 10) + b"}",
                        headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
