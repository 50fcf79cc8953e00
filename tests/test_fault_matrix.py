"""One fault matrix through every surface: the request lifecycle is the core's, so every dialect must record the same
status, the same metrics and the same events for the same fault, and tell its client in its own shape.

The real host (every API surface, the llama_server runtime, metrics) in front of ``tests/fake_llama_server.py``, whose
fault modes come from the model's ``env:``. Clients are raw httpx streams so that the test decides when to hang up.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import fake_llama_server as fake
from llama_host.testing import EventRecorder, serve_host, wait_until

PLUGINS = ["openai_api", "ollama_api", "lmstudio_api", "llama_server", "whisper_server", "metrics"]
TOKENS = 4


Recorder = EventRecorder  # the test kit's (llama_host.testing)


@dataclass(frozen=True)
class Dialect:
    """How one surface is called and how it shows the end of a reply and an error."""

    name: str
    surface: str  # the plugin serving it (its port)
    path: str
    body: Callable[[str], dict[str, Any]]
    final: bytes  # the reply is whole once the client has this
    error: bytes  # how an error looks in the stream
    in_stream_start_errors: bool = False  # the stream begins before the model is acquired (LM Studio v1)
    writes_final: bool = True  # the surface writes its own end (a passthrough ends where the runner ended)
    streams: bool = True  # False: a reply in one piece (audio), tried with the faults that are not about streams


MESSAGES = [{"role": "user", "content": "hello"}]
DIALECTS = [
    Dialect("openai", "openai_api", "/v1/chat/completions",
            lambda m: {"model": m, "messages": MESSAGES, "max_tokens": TOKENS, "stream": True},
            b"data: [DONE]", b'data: {"error":{"message":', writes_final=False),
    Dialect("ollama_chat", "ollama_api", "/api/chat",
            lambda m: {"model": m, "messages": MESSAGES, "options": {"num_predict": TOKENS}},
            b'"done":true', b'{"error":"'),
    Dialect("ollama_generate", "ollama_api", "/api/generate",
            lambda m: {"model": m, "prompt": "hello", "options": {"num_predict": TOKENS}},
            b'"done":true', b'{"error":"'),
    Dialect("lmstudio_v0", "lmstudio_api", "/api/v0/chat/completions",
            lambda m: {"model": m, "messages": MESSAGES, "max_tokens": TOKENS, "stream": True},
            b"data: [DONE]", b'data: {"error":{"message":'),
    Dialect("lmstudio_v1", "lmstudio_api", "/api/v1/chat",
            lambda m: {"model": m, "input": "hello", "max_output_tokens": TOKENS, "stream": True},
            b"event: chat.end", b"event: error", in_stream_start_errors=True),
    Dialect("audio", "whisper_server", "/v1/audio/transcriptions", lambda m: {"model": m},
            b'"text":', b'{"error":{"message":', streams=False),
]


@dataclass(frozen=True)
class Fault:
    name: str
    env: Callable[[Path], dict[str, str]]
    status: int  # recorded in request_finished and the metrics
    error: str | None  # a pattern found in the recorded error (None: no error)
    client: str  # "read" (to the end), "hangup_early", "hangup_after_final"
    scheduler: tuple[tuple[str, Any], ...] = ()


FAULTS = [
    Fault("malformed_event", lambda d: {"FAKE_MALFORMED_AFTER": "2"}, 502, "not JSON", "read"),
    # a reply in one piece has no middle: the runner dies before answering (unreachable)
    Fault("crash_mid_stream", lambda d: {"FAKE_CRASH_AFTER": "2"}, 502, "went away|unreachable", "read"),
    Fault("disconnect_before_final", lambda d: {"FAKE_PAUSE_FILE": str(d / "pause")}, 499, "client disconnected",
          "hangup_early"),
    Fault("disconnect_after_final", lambda d: {"FAKE_CHUNK_DELAY": "0.05"}, 200, None, "hangup_after_final"),
    Fault("runner_start_failure", lambda d: {"FAKE_EXIT_AT_START": "3"}, 503, "before becoming ready", "read"),
    Fault("queue_timeout", lambda d: {"FAKE_SLOW_START": "30"}, 503, "was not ready within", "read",
          scheduler=(("queue_timeout", 0.5),)),
    Fault("final_event_without_newline", lambda d: {"FAKE_NO_FINAL_NEWLINE": "1"}, 200, None, "read"),
]


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[len(name):line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def exchange(url: str, dialect: Dialect, fault: Fault, workdir: Path) -> tuple[int, bytes]:
    """Send the request as the fault's client does; returns the HTTP status and the bytes received."""
    pause = workdir / "pause"
    if fault.client == "hangup_early":
        pause.touch()
    got = b""
    if dialect.streams:
        send: dict[str, Any] = {"json": dialect.body("m")}
    else:
        send = {"data": dialect.body("m"), "files": {"file": ("a.wav", b"RIFF" + bytes(64), "audio/wav")}}
    with httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", dialect.path, **send) as r:
            for chunk in r.iter_raw():
                got += chunk
                if fault.client == "hangup_early" and b"t0" in got:  # the stream stalls after its first token
                    break
                if fault.client == "hangup_after_final" and dialect.final in got:
                    break
            status = r.status_code
    return status, got  # a pause file stays until the host has recorded the request: it must see the hang-up first


ONE_PIECE_FAULTS = ("crash_mid_stream", "runner_start_failure", "queue_timeout")
CASES = [pytest.param(f, d, id=f"{f.name}-{d.name}") for f in FAULTS for d in DIALECTS
         if d.streams or f.name in ONE_PIECE_FAULTS]


@pytest.mark.parametrize(("fault", "dialect"), CASES)
def test_fault_matrix(tmp_path: Path, fault: Fault, dialect: Dialect) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    wrapper = fake.write_wrapper(tmp_path)
    config = {"log_dir": str(tmp_path / "logs"),
              "scheduler": {"max_loaded": 1, "startup_timeout": 30, "stop_grace": 2, **dict(fault.scheduler)},
              "models": {"m": {"path": str(gguf), "binary": str(wrapper), "env": fault.env(tmp_path),
                               **({} if dialect.streams else {"runtime": "whisper-server"})}}}
    recorder = Recorder()
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh:
        status, got = exchange(rh.url(dialect.surface), dialect, fault, tmp_path)
        finished = wait_until(lambda: [e for e in recorder.requests() if e.kind == "request_finished"],
                              "the end-of-request record")
        (tmp_path / "pause").unlink(missing_ok=True)
        time.sleep(0.1)  # a second record would come now
        kinds = [(e.kind, e.surface, e.model) for e in recorder.requests()]
        metrics = httpx.get(rh.url() + "/metrics", timeout=10).text

    # the same events: one start, one end, with the fault's status and error
    assert kinds == [("request_started", dialect.surface, "m"), ("request_finished", dialect.surface, "m")]
    (end,) = finished
    assert end.status == fault.status, (end.status, end.error, got[-400:])
    if fault.error is None:
        assert end.error is None
    else:
        assert end.error is not None and re.search(fault.error, end.error), end.error
    if fault.name == "final_event_without_newline":  # its usage was read from the event without a newline
        assert end.completion_tokens == TOKENS + 1000
    # the same metrics
    endpoint = end.endpoint
    assert metric(metrics, "llama_host_requests_total", surface=dialect.surface, model="m", endpoint=endpoint,
                  status=str(fault.status)) == 1
    assert metric(metrics, "llama_host_request_errors_total", surface=dialect.surface, model="m") == \
        (1 if fault.status >= 400 else 0)
    # the client is told in its dialect
    if fault.status in (200, 499):
        assert status == 200
        if fault.status == 200 and (dialect.writes_final or fault.name != "final_event_without_newline"):
            assert dialect.final in got
        else:
            assert dialect.final not in got
    elif fault.name in ("runner_start_failure", "queue_timeout") and not dialect.in_stream_start_errors:
        assert status == fault.status
        assert got.startswith(b'{"error":')
    elif not dialect.streams:
        assert status == fault.status and got.startswith(dialect.error), got[-400:]
    else:
        assert status == 200
        assert dialect.error in got, got[-400:]
        assert got.rstrip().endswith(b"}") or dialect.final in got
