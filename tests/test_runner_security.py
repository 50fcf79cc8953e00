"""Runners are reachable only through the host (issue 13, item 2).

Against the real llama-server: a per-runner key that only the host knows and sends; without it every route but the
health check answers 401; CORS allows no foreign page; the key is in no log, API answer or command line. Against the
real whisper-server (no key option): every route lives under a secret prefix. With the fake llama-server: the key
file's permissions and the fallback for a llama-server too old for ``--api-key-file``.
"""

from __future__ import annotations

import logging
import struct
import wave
from pathlib import Path

import httpx
import psutil
import pytest

import fake_llama_server as fake
from llama_host.process import redact_argv
from llama_host.testing import serve_host, tiny_site

HELLO = [{"role": "user", "content": "hello"}]
FOREIGN = "http://evil.example"
#: Routes of llama-server a request without the key must not get through (401), some of them not even enabled.
GUARDED = [("POST", "/v1/chat/completions"), ("POST", "/chat/completions"), ("POST", "/v1/completions"),
           ("POST", "/completion"), ("POST", "/v1/embeddings"), ("POST", "/tokenize"), ("POST", "/detokenize"),
           ("POST", "/apply-template"), ("GET", "/props"), ("POST", "/props"), ("GET", "/slots"), ("GET", "/metrics"),
           ("GET", "/v1/models"), ("GET", "/models"), ("GET", "/api/tags"), ("GET", "/lora-adapters"),
           ("POST", "/infill"), ("GET", "/index.html")]
#: What llama-server leaves public when it has a key (README, "Runners are reachable only through the host").
PUBLIC = ["/health", "/v1/health"]


def key_of(runner) -> str:
    return runner.headers["Authorization"].removeprefix("Bearer ")


def everything_shown(rh, name: str) -> str:
    """What the host shows of a model and itself: the management API's answers, as text."""
    with rh.client(timeout=30) as http:
        return "\n".join(http.get(path).text for path in (
            "/api/v1/status", "/api/v1/config", "/api/v1/models", f"/api/v1/models/{name}",
            f"/api/v1/models/{name}/logs?lines=1000"))


@pytest.mark.real
def test_a_llama_server_runner_answers_only_the_host(tiny_model, llama_server_bin, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    logs = tmp_path / "logs"
    with serve_host(tiny_site(tiny_model, llama_server_bin), ["openai_api", "llama_server"], log_dir=logs) as rh, \
            rh.client(timeout=60) as http:
        # Through the host: the relay, the raw passthrough and the health checks send the key.
        reply = http.post("/v1/chat/completions", json={"model": "tiny", "messages": HELLO, "max_tokens": 2})
        assert reply.status_code == 200, reply.text
        for path in ("props", "slots"):
            assert http.get(f"/upstream/tiny/{path}").status_code == 200
        runner = rh.host.scheduler.entries["tiny"].runner
        key = key_of(runner)
        assert len(key) >= 32

        with httpx.Client(base_url=runner.base_url, timeout=30) as direct:
            for method, path in GUARDED:
                for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-Api-Key": "wrong"}):
                    r = direct.request(method, path, headers=headers, json={})
                    assert r.status_code == 401, (method, path, headers, r.status_code, r.text[:200])
            for path in PUBLIC:
                assert direct.get(path).status_code == 200
            assert direct.get("/").status_code == 404  # the web UI's page is public, and switched off (--no-ui)
            assert direct.get("/props", headers={"Authorization": f"Bearer {key}"}).status_code == 200

            # CORS: no foreign page is allowed, neither on the preflight nor on a public route.
            preflight = direct.options("/v1/chat/completions", headers={
                "Origin": FOREIGN, "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type"})
            for r in (preflight, direct.get("/health", headers={"Origin": FOREIGN})):
                allowed = r.headers.get("access-control-allow-origin", "")
                assert allowed not in (FOREIGN, "*"), allowed
                assert r.headers.get("access-control-allow-credentials", "false") != "true"

        # The key is nowhere the host shows or writes things, nor on the runner's command line.
        cmdline = psutil.Process(runner.pid).cmdline()
        assert key not in " ".join(cmdline)
        key_file = cmdline[cmdline.index("--api-key-file") + 1]
        assert not Path(key_file).exists() and not Path(key_file).parent.exists()  # removed once read
        shown = everything_shown(rh, "tiny")
        assert "tiny" in shown and key not in shown
        assert "--api-key-file" in shown  # the starting line is shown ...
    assert key not in caplog.text
    for file in logs.rglob("*"):
        if file.is_file():
            assert key not in file.read_text(errors="replace"), file


@pytest.mark.real
def test_a_whisper_server_runner_answers_only_under_its_secret_prefix(whisper_server_bin, tmp_path):
    from llama_host_whisper_server.tinymodel import write_tiny_whisper_model

    model = write_tiny_whisper_model(tmp_path / "tiny-whisper.bin")
    audio = tmp_path / "silence.wav"
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(struct.pack("<h", 0) * 16000)
    site = {"plugins": {"whisper_server": {"binary": whisper_server_bin}},
            "models": {"whisper-tiny": {"runtime": "whisper-server", "path": str(model), "params": {"threads": 1}}}}
    with serve_host(site, ["whisper_server"], log_dir=tmp_path / "logs") as rh, rh.client(timeout=60) as http:
        with audio.open("rb") as f:
            r = http.post("/v1/audio/transcriptions", files={"file": ("a.wav", f, "audio/wav")},
                          data={"model": "whisper-tiny"})
        assert r.status_code == 200, r.text
        runner = rh.host.scheduler.entries["whisper-tiny"].runner
        root = "/".join(runner.base_url.split("/")[:3])
        secret = runner.base_url.removeprefix(root)
        assert len(secret) > 24
        with httpx.Client(base_url=root, timeout=30) as direct, audio.open("rb") as f:
            wav = f.read()
            for path in ("/health", "/v1/audio/transcriptions", "/inference", "/load", "/", "/index.html"):
                assert direct.get(path).status_code == 404
                assert direct.post(path, files={"file": ("a.wav", wav, "audio/wav")}).status_code == 404
            assert direct.get(secret + "/health").status_code == 200
        shown = everything_shown(rh, "whisper-tiny")
        assert "--request-path ***" in shown and secret not in shown
    for file in (tmp_path / "logs").rglob("*"):
        if file.is_file():
            assert secret not in file.read_text(errors="replace"), file


# --- with the fake llama-server (no real binary needed) --------------------------------------------------------------


@pytest.fixture
def fake_model(tmp_path: Path):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    binary = fake.write_wrapper(tmp_path)

    def make(**env: object) -> dict:
        return {"path": str(gguf), "binary": str(binary), "env": {k: str(v) for k, v in env.items()}}

    return make


def test_the_key_file_is_private_and_the_fake_enforces_the_key(tmp_path, fake_model):
    report = tmp_path / "key-report"
    site = {"models": {"m": fake_model(FAKE_KEY_REPORT=report)}}
    with serve_host(site, ["openai_api", "llama_server"]) as rh, rh.client(timeout=30) as http:
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "max_tokens": 2})
        assert r.status_code == 200, r.text
        assert report.read_text() == "600 700"  # the file, its folder
        runner = rh.host.scheduler.entries["m"].runner
        assert httpx.post(runner.base_url + "/v1/chat/completions", json={"messages": HELLO}).status_code == 401


def test_a_llama_server_too_old_for_the_key_file_gets_the_key_on_its_command_line(tmp_path, fake_model, caplog):
    site = {"models": {"m": fake_model(FAKE_OLD_FLAGS=1)}}
    with serve_host(site, ["openai_api", "llama_server"]) as rh, rh.client(timeout=30) as http:
        r = http.post("/v1/chat/completions", json={"model": "m", "messages": HELLO, "max_tokens": 2})
        assert r.status_code == 200, r.text
        runner = rh.host.scheduler.entries["m"].runner
        key = key_of(runner)
        assert key in psutil.Process(runner.pid).cmdline()  # the one place it cannot be kept from
        assert httpx.get(runner.base_url + "/v1/models").status_code == 401
        shown = everything_shown(rh, "m")
        assert "--api-key ***" in shown and key not in shown
    assert "too old for --api-key-file" in caplog.text and key not in caplog.text


def test_redact_argv():
    argv = ["llama-server", "--api-key", "k1", "--api-key=k2", "--hf-token", "t", "--request-path", "/p", "--port", "1"]
    assert redact_argv(argv) == ["llama-server", "--api-key", "***", "--api-key=***", "--hf-token", "***",
                                 "--request-path", "***", "--port", "1"]
    assert redact_argv(["x", "--api-key"]) == ["x", "--api-key"]


def test_a_users_own_key_flag_is_redacted_too(tmp_path, fake_model):
    model = fake_model()
    model["args"] = ["--api-key", "users-own-secret"]
    with serve_host({"models": {"m": model}}, ["openai_api", "llama_server"]) as rh, rh.client(timeout=30) as http:
        assert http.post("/api/v1/models/m/load").status_code == 200
        shown = everything_shown(rh, "m")
        assert "users-own-secret" not in "\n".join(rh.host.scheduler.logs("m").lines)
        assert "--api-key ***" in shown
