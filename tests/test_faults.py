"""Fault injection: the real host (openai_api + llama_server plugins) in front of the fake llama-server.

Each fault is a mode of ``tests/fake_llama_server.py`` chosen by a model's ``env:``; the client is the official OpenAI
SDK (``max_retries=0`` so every error reaches the test). No test asserts on durations: waits are bounded (client
timeouts, process waits) so a hang fails instead of passing slowly.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml

import fake_llama_server as fake
from llama_host.errors import QueueTimeout
from llama_host.process import free_port
from llama_host.testing import EventRecorder, gone, serve_host, wait_until

PLUGINS = ["openai_api", "llama_server"]
HELLO = [{"role": "user", "content": "hello"}]


# --- helpers ---------------------------------------------------------------------------------------------------------


Recorder = EventRecorder  # the test kit's (llama_host.testing)


def fake_processes(wrapper: Path) -> list[psutil.Process]:
    """Running fakes started from ``wrapper`` (any parent)."""
    out = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(wrapper) in " ".join(p.info["cmdline"] or ()):
                out.append(p)
    return out


@pytest.fixture
def fake_bin(tmp_path: Path) -> Iterator[Path]:
    wrapper = fake.write_wrapper(tmp_path)
    yield wrapper
    leftovers = fake_processes(wrapper)
    for p in leftovers:
        with contextlib.suppress(psutil.Error):
            p.kill()
    assert not leftovers, f"runner processes left behind: {[p.pid for p in leftovers]}"


@pytest.fixture
def gguf(tmp_path: Path) -> Path:
    path = tmp_path / "fake.gguf"
    path.write_bytes(b"GGUF" + bytes(60))  # the fake never reads it; the runtime only checks that it exists
    return path


@pytest.fixture
def model(gguf: Path, fake_bin: Path, tmp_path: Path) -> Callable[..., dict[str, Any]]:
    def make(name: str, memory: str | None = None, pinned: bool = False, **env: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {"path": str(gguf), "binary": str(fake_bin),
                                "env": {"FAKE_STARTS_FILE": str(tmp_path / f"starts-{name}"),
                                        **{k: str(v) for k, v in env.items()}}}
        if memory:
            spec["memory"] = memory
        if pinned:
            spec["pinned"] = True
        return spec

    return make


def starts(tmp_path: Path, name: str) -> list[int]:
    return fake.read_starts(tmp_path / f"starts-{name}")


def site(tmp_path: Path, models: dict[str, Any], **scheduler: Any) -> dict[str, Any]:
    return {"log_dir": str(tmp_path / "logs"), "models": models,
            "scheduler": {"max_loaded": 1, "startup_timeout": 30, "stop_grace": 2, **scheduler}}


@contextlib.contextmanager
def client_for(url: str, timeout: float = 30) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=timeout) as client:
        yield client


def chat(client: openai.OpenAI, model: str, max_tokens: int = 4) -> str:
    reply = client.chat.completions.create(model=model, messages=HELLO, max_tokens=max_tokens)
    return reply.choices[0].message.content


def error_message(exc: openai.APIStatusError) -> str:
    return exc.response.json()["error"]["message"]


# --- loading -----------------------------------------------------------------------------------------------------------


def test_slow_start_requests_wait_and_share_one_process(tmp_path, model, fake_bin):
    ready = tmp_path / "ready"
    recorder = Recorder()
    config = site(tmp_path, {"slow": model("slow", FAKE_READY_FILE=ready)})
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh, client_for(rh.url()) as client, \
            ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(chat, client, "slow", 3 + i) for i in range(4)]
        # Every request is waiting while the model loads; only then does the load finish.
        wait_until(lambda: recorder.kinds().count(("request_started", "slow")) == 4, "4 requests started")
        assert rh.host.scheduler.status("slow").state == "loading"
        wait_until(lambda: starts(tmp_path, "slow"), "the runner to start")
        assert len(fake_processes(fake_bin)) == 1
        ready.touch()
        assert [f.result() for f in futures] == [fake.reply_text(3 + i) for i in range(4)]
        assert len(starts(tmp_path, "slow")) == 1
        assert len(fake_processes(fake_bin)) == 1
        assert recorder.kinds("slow").count(("model_loading", "slow")) == 1


def test_slow_start_with_a_delay(tmp_path, model):
    config = site(tmp_path, {"slow": model("slow", FAKE_SLOW_START=0.5)})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        assert chat(client, "slow", 5) == fake.reply_text(5)
        assert rh.host.scheduler.status("slow").state == "loaded"


def test_never_healthy_fails_after_startup_timeout_with_log_lines(tmp_path, model, fake_bin):
    config = site(tmp_path, {"stuck": model("stuck", FAKE_NEVER_HEALTHY=1)}, startup_timeout=4)
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        with pytest.raises(openai.InternalServerError) as info:
            chat(client, "stuck")
        assert info.value.status_code == 503
        message = error_message(info.value)
        assert "'stuck'" in message and "startup timeout" in message
        assert "fake never-healthy mode: loading forever" in message  # the runner's last log lines
        assert rh.host.scheduler.status("stuck").state == "failed"
        assert all(gone(pid) for pid in starts(tmp_path, "stuck"))


def test_exit_at_start_fails_at_once_with_stderr(tmp_path, model):
    config = site(tmp_path, {"broken": model("broken", FAKE_EXIT_AT_START=3,
                                             FAKE_EXIT_MESSAGE="gguf_init: invalid magic characters 'XXXX'")},
                  startup_timeout=120)
    with serve_host(config, PLUGINS) as rh, client_for(rh.url(), timeout=20) as client:  # 20 s < startup_timeout
        with pytest.raises(openai.InternalServerError) as info:
            chat(client, "broken")
        assert info.value.status_code == 503
        message = error_message(info.value)
        assert "'broken'" in message and "code 3" in message
        assert "gguf_init: invalid magic characters 'XXXX'" in message


def test_port_taken_at_start_is_retried_on_another_port(tmp_path, model):
    config = site(tmp_path, {"m": model("m", FAKE_PORT_TAKEN_ONCE=tmp_path / "taken")})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        assert chat(client, "m") == fake.reply_text(4)
        assert len(starts(tmp_path, "m")) == 2
        assert rh.host.scheduler.status("m").state == "loaded"
        assert any("couldn't bind HTTP server socket" in line for line in rh.host.scheduler.logs("m").tail(50))


def test_a_huge_log_line_does_not_stall_the_runner(tmp_path, model):
    config = site(tmp_path, {"chatty": model("chatty", FAKE_LOG_LINE_BYTES=4 * 2**20)})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        assert chat(client, "chatty") == fake.reply_text(4)
        lines = httpx.get(rh.url() + "/api/v1/models/chatty/logs", timeout=10).json()["lines"]
        assert any(line.startswith("main: server is listening") for line in lines)  # the lines after it arrived
        assert max(len(line) for line in lines) < 16384


def test_repeated_start_failures_back_off(tmp_path, model):
    config = site(tmp_path, {"broken": model("broken", FAKE_EXIT_AT_START=1)})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        with pytest.raises(openai.InternalServerError) as first:
            chat(client, "broken")
        assert "next try" not in error_message(first.value)
        with pytest.raises(openai.InternalServerError) as second:
            chat(client, "broken")
        assert second.value.status_code == 503
        message = error_message(second.value)
        assert "next try in" in message and "fake exit at start" in message
        assert int(second.value.response.headers["retry-after"]) >= 1
        assert len(starts(tmp_path, "broken")) == 2
        assert rh.host.scheduler.status("broken").state == "failed"


# --- while serving -----------------------------------------------------------------------------------------------------


def test_crash_mid_stream_ends_with_an_error_and_the_next_request_recovers(tmp_path, model):
    config = site(tmp_path, {"crashy": model("crashy", FAKE_CRASH_AFTER=2, FAKE_CRASH_MARKER=tmp_path / "crashed")})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        received = []
        stream = client.chat.completions.create(model="crashy", messages=HELLO, max_tokens=8, stream=True)
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    received.append(chunk.choices[0].delta.content)
        assert "".join(received) == fake.reply_text(2)
        assert "'crashy'" in info.value.message and "went away" in info.value.message
        # A request sent in the instant between the runner closing its sockets and its exit being visible still goes
        # to the dead port (502); reported to the lead. Once the host has seen the exit, the next request recovers.
        wait_until(lambda: rh.host.scheduler.status("crashy").state == "failed", "the host to see the crash")
        stream = client.chat.completions.create(model="crashy", messages=HELLO, max_tokens=8, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == fake.reply_text(8)
        pids = starts(tmp_path, "crashy")
        assert len(pids) == 2 and pids[1] != pids[0]
        assert rh.host.scheduler.status("crashy").pid == pids[1]
        wait_until(lambda: gone(pids[0]), "the crashed runner to be reaped")


def test_complete_streams_are_recorded_as_complete(tmp_path, model):
    """The SDK closes its response as soon as it reads [DONE]: that is a whole reply, not a client disconnect."""
    recorder = Recorder()
    config = site(tmp_path, {"m": model("m", FAKE_CHUNK_DELAY=0.02)})  # the body ends after the SDK has closed
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh, client_for(rh.url()) as client:
        for _ in range(20):
            stream = client.chat.completions.create(model="m", messages=HELLO, max_tokens=3, stream=True)
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == fake.reply_text(3)
        def finished_requests() -> list[Any]:
            return [e for e in list(recorder.events) if e.kind == "request_finished"]

        wait_until(lambda: len(finished_requests()) == 20, "20 finished requests")
        finished = finished_requests()
        assert [(e.status, e.error) for e in finished] == [(200, None)] * 20
        assert all(e.completion_tokens == 3 and e.stop_reason == "length" for e in finished)


@pytest.mark.parametrize("linger", [None, 60], ids=["plain", "child-left-behind"])
def test_crash_during_a_plain_request_is_a_clean_error_and_recovers(tmp_path, model, linger):
    """With ``linger`` the crashing runner leaves a child holding its log pipe: the child must not outlive it."""
    env = {"FAKE_CRASH_LINGER": linger} if linger else {}
    config = site(tmp_path, {"crashy": model("crashy", FAKE_CRASH_AFTER=0, FAKE_CRASH_MARKER=tmp_path / "crashed",
                                             **env)})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        with pytest.raises(openai.InternalServerError) as info:
            chat(client, "crashy")
        assert info.value.status_code == 502
        assert info.value.response.json()["error"]["code"] == "runner_crashed"
        assert "'crashy'" in error_message(info.value)
        wait_until(lambda: rh.host.scheduler.status("crashy").state == "failed", "the host to see the crash")
        assert chat(client, "crashy") == fake.reply_text(4)
        pids = starts(tmp_path, "crashy")
        assert len(pids) == 2
        assert rh.host.scheduler.status("crashy").state == "loaded"
        # Nothing of the crashed runner survives it, not even a child it left behind (same process group).
        wait_until(lambda: not group_members(pids[0]), "the crashed runner's process group to be empty", timeout=10)


def test_a_request_right_after_a_crash_recovers(tmp_path, model):
    config = site(tmp_path, {"crashy": model("crashy", FAKE_CRASH_AFTER=0, FAKE_CRASH_MARKER=tmp_path / "crashed",
                                             FAKE_CRASH_EXIT_DELAY=3)})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        with pytest.raises(openai.InternalServerError):
            chat(client, "crashy")
        assert chat(client, "crashy") == fake.reply_text(4)  # at once: its port is closed, the process still there
        assert len(starts(tmp_path, "crashy")) == 2


def group_members(pgid: int) -> list[int]:
    out = []
    for p in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                out.append(p.pid)
    return out


def test_legacy_error_line_reaches_the_sdk_as_an_error(tmp_path, model):
    config = site(tmp_path, {"legacy": model("legacy", FAKE_LEGACY_ERROR=1)})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        stream = client.chat.completions.create(model="legacy", messages=HELLO, max_tokens=8, stream=True)
        with pytest.raises(openai.APIError) as info:
            for _ in stream:
                pass
        assert "fake legacy error mid-stream" in info.value.message
        # A raw client sees the error as an OpenAI error event: `data: {"error": ...}`.
        body = {"model": "legacy", "messages": HELLO, "max_tokens": 8, "stream": True}
        text = httpx.post(rh.url() + "/v1/chat/completions", json=body, timeout=30).text
        assert 'data: {"error":{"message":"fake legacy error mid-stream","type":"server_error"' in text
        assert "\nerror:" not in text


def test_runner_ignoring_sigterm_is_killed_after_stop_grace(tmp_path, model, fake_bin):
    recorder = Recorder()
    config = site(tmp_path, {"stubborn": model("stubborn", FAKE_IGNORE_SIGTERM=1)}, stop_grace=0.5)
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh:
        rh.call(rh.host.scheduler.load("stubborn"))
        pid = rh.host.scheduler.status("stubborn").pid
        assert pid and not gone(pid)
        assert rh.call(rh.host.scheduler.unload("stubborn"), timeout=30) is True
        assert gone(pid)
        assert rh.host.scheduler.status("stubborn").state == "unloaded"
        assert ("model_unloaded", "stubborn") in recorder.kinds()
        assert fake_processes(fake_bin) == []


# --- limits ------------------------------------------------------------------------------------------------------------


def test_swap_waits_for_the_in_flight_stream(tmp_path, model):
    pause = tmp_path / "pause"
    pause.touch()
    recorder = Recorder()
    config = site(tmp_path, {"first": model("first", FAKE_PAUSE_FILE=pause), "second": model("second")}, max_loaded=1)
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh, client_for(rh.url()) as client, \
            ThreadPoolExecutor(2) as pool:
        got_first_token = threading.Event()

        def stream_first() -> tuple[str, str | None]:
            parts, finish = [], None
            for chunk in client.chat.completions.create(model="first", messages=HELLO, max_tokens=12, stream=True):
                for choice in chunk.choices:
                    parts.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
                    if choice.delta.content:
                        got_first_token.set()
            return "".join(parts), finish

        first = pool.submit(stream_first)
        assert got_first_token.wait(30)
        second = pool.submit(chat, client, "second", 5)
        wait_until(lambda: ("request_started", "second") in recorder.kinds(), "the second request to arrive")
        # The second model cannot load while the first one streams.
        assert rh.host.scheduler.status("first").in_flight == 1
        assert rh.host.scheduler.status("second").state == "unloaded"
        assert not second.done()
        pause.unlink()

        assert first.result(30) == (fake.reply_text(12), "length")  # complete and intact
        assert second.result(30) == fake.reply_text(5)
        finished = recorder.index("request_finished", "first", status=200)
        evicted = recorder.index("model_unloaded", "first", reason="evicted")
        loading = recorder.index("model_loading", "second")
        assert recorder.index("request_started", "second") < finished < evicted < loading
        assert rh.host.scheduler.status("first").state == "unloaded"


def test_a_waiting_swap_is_not_starved_by_new_requests_for_the_loaded_model(tmp_path, model):
    pause = tmp_path / "pause"
    pause.touch()
    recorder = Recorder()
    config = site(tmp_path, {"first": model("first", FAKE_PAUSE_FILE=pause), "second": model("second")}, max_loaded=1)
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh, client_for(rh.url()) as client, \
            ThreadPoolExecutor(3) as pool:
        def stream_first() -> str:
            stream = client.chat.completions.create(model="first", messages=HELLO, max_tokens=4, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

        early = pool.submit(stream_first)
        wait_until(lambda: rh.host.scheduler.status("first").in_flight == 1, "the first stream to be in flight")
        second = pool.submit(chat, client, "second", 3)
        wait_until(lambda: ("request_started", "second") in recorder.kinds(), "the swap request to arrive")
        late = pool.submit(stream_first)  # arrives after the swap request
        wait_until(lambda: recorder.kinds().count(("request_started", "first")) == 2, "the late request to arrive")
        pause.unlink()
        assert early.result(30) == late.result(30) == fake.reply_text(4)
        assert second.result(30) == fake.reply_text(3)
        late_finished = [i for i, e in enumerate(recorder.events) if e.kind == "request_finished" and e.model == "first"][1]
        assert recorder.index("model_loading", "second") < late_finished  # served in arrival order


def test_memory_budget_evicts_lru_idle_and_never_the_pinned(tmp_path, model):
    recorder = Recorder()
    models = {"pinned": model("pinned", memory="1GiB", pinned=True),
              **{name: model(name, memory="1GiB") for name in ("a", "b", "c")}}
    config = site(tmp_path, models, max_loaded=0, memory_budget="3GiB")
    with serve_host(config, PLUGINS, extra=[("recorder", recorder)]) as rh, client_for(rh.url()) as client:
        def loaded() -> set[str]:
            return {s.name for s in rh.host.scheduler.statuses() if s.state == "loaded"}

        for name in ("pinned", "a", "b"):
            chat(client, name)
        assert loaded() == {"pinned", "a", "b"}
        chat(client, "a")  # b is now the least recently used idle model (pinned is older, but pinned)
        chat(client, "c")
        assert loaded() == {"pinned", "a", "c"}
        chat(client, "b")  # now a is the least recently used
        assert loaded() == {"pinned", "c", "b"}
        evictions = [e.model for e in recorder.events if e.kind == "model_unloaded"]
        assert evictions == ["b", "a"]
        assert all(e.reason == "evicted" for e in recorder.events if e.kind == "model_unloaded")
        assert len(starts(tmp_path, "pinned")) == 1


def test_the_idle_time_counts_from_the_last_request(tmp_path, model):
    """One idle timer per model (set when the first request ended): a later request moves the deadline, the timer
    finds it moved and waits for the rest, and a shorter per-request ttl replaces it."""
    config = site(tmp_path, {"m": {**model("m"), "ttl": 1.2}})
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        status = rh.host.scheduler.status
        chat(client, "m")
        time.sleep(0.8)
        chat(client, "m")
        last = time.monotonic()
        time.sleep(0.8)  # past the first request's deadline, within the second's
        assert status("m").state == "loaded"
        wait_until(lambda: status("m").state == "unloaded", timeout=10, what="idle unload")
        assert time.monotonic() - last > 1.1

        async def hold(ttl: float | None) -> None:
            (await rh.host.scheduler.acquire("m", ttl=ttl)).release()

        rh.call(hold(None))  # loaded again, unloaded 1.2 s after this ...
        rh.call(hold(0.2))  # ... unless a shorter per-request ttl (LM Studio's, Ollama's keep_alive) says sooner
        shorter = time.monotonic()
        wait_until(lambda: status("m").state == "unloaded", timeout=10, what="idle unload")
        assert time.monotonic() - shorter < 1.0


def test_model_larger_than_the_budget_is_a_clear_error(tmp_path, model):
    models = {"small": model("small", memory="1GiB"), "huge": model("huge", memory="10GiB")}
    config = site(tmp_path, models, max_loaded=0, memory_budget="3GiB")
    with serve_host(config, PLUGINS) as rh, client_for(rh.url(), timeout=20) as client:
        chat(client, "small")
        with pytest.raises(openai.InternalServerError) as info:
            chat(client, "huge")
        assert info.value.status_code == 503
        assert info.value.response.json()["error"]["code"] == "model_too_large"
        message = error_message(info.value)
        assert "'huge'" in message and "budget" in message and "3.00 GiB" in message
        assert starts(tmp_path, "huge") == []
        assert rh.host.scheduler.status("small").state == "loaded"  # nothing was evicted for a hopeless load


def test_pinned_models_filling_the_budget_is_a_clear_error(tmp_path, model):
    models = {"p1": model("p1", memory="1GiB", pinned=True), "p2": model("p2", memory="1GiB", pinned=True),
              "other": model("other", memory="1GiB")}
    config = site(tmp_path, models, max_loaded=0, memory_budget="2GiB")
    with serve_host(config, PLUGINS) as rh, client_for(rh.url(), timeout=20) as client:
        chat(client, "p1")
        chat(client, "p2")
        with pytest.raises(openai.InternalServerError) as info:
            chat(client, "other")
        assert info.value.status_code == 503
        message = error_message(info.value)
        assert "'other'" in message and "pinned" in message and "p1" in message and "p2" in message


def test_queue_timeout_while_loading_gives_503_with_retry_after(tmp_path, model):
    config = site(tmp_path, {"slow": model("slow", FAKE_READY_FILE=tmp_path / "never")}, queue_timeout=0.5)
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        with pytest.raises(openai.InternalServerError) as info:
            chat(client, "slow")
        assert info.value.status_code == 503
        assert info.value.response.json()["error"]["code"] == "queue_timeout"
        assert "'slow'" in error_message(info.value)
        assert int(info.value.response.headers["retry-after"]) >= 1


def test_queue_timeout_while_waiting_for_room(tmp_path, model):
    pause = tmp_path / "pause"
    pause.touch()
    config = site(tmp_path, {"busy": model("busy", FAKE_PAUSE_FILE=pause), "other": model("other")},
                  max_loaded=1, queue_timeout=0.5)
    with serve_host(config, PLUGINS) as rh, client_for(rh.url()) as client:
        with contextlib.suppress(QueueTimeout):  # a slow machine may take longer than queue_timeout: it goes on
            rh.call(rh.host.scheduler.load("busy"))
        wait_until(lambda: rh.host.scheduler.status("busy").state == "loaded", "busy to load")
        stream = client.chat.completions.create(model="busy", messages=HELLO, max_tokens=4, stream=True)
        chunks = iter(stream)
        next(chunks)  # the stream is open and in flight
        with pytest.raises(openai.InternalServerError) as info:
            chat(client, "other")
        assert info.value.response.json()["error"]["code"] == "queue_timeout"
        assert "retry-after" in info.value.response.headers
        pause.unlink()
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == fake.reply_text(4)
        assert rh.host.scheduler.status("other").state == "unloaded"


# --- the real CLI ------------------------------------------------------------------------------------------------------


def cli_config(tmp_path: Path, models: dict[str, Any], keep: tuple[str, ...] = ("openai_api", "llama_server"),
               **extra: Any) -> Path:
    """A site file enabling only ``keep`` among the installed plugins, on a free main port."""
    plugins = {ep.name: {"enabled": False} for ep in md.entry_points(group="llama_host") if ep.name not in keep}
    data = {"port": free_port(), "log_dir": str(tmp_path / "logs"), "plugins": plugins, "models": models,
            "scheduler": {"max_loaded": 1, "startup_timeout": 30, "stop_grace": 2}, **extra}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


@contextlib.contextmanager
def running_cli(config: Path, tmp_path: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    """``llama-host --config CONFIG`` in a subprocess, yielded once its health endpoint answers."""
    port = yaml.safe_load(config.read_text())["port"]
    url = f"http://127.0.0.1:{port}"
    log = (tmp_path / "cli.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_host.cli", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        def healthy() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"llama-host exited with {proc.returncode}:\n{(tmp_path / 'cli.log').read_text()}")
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url + "/api/v1/health", timeout=2).status_code == 200
            return False

        wait_until(healthy, "llama-host to answer /api/v1/health", timeout=60)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)
        log.close()


@pytest.mark.parametrize("runner_ignores_sigterm", [False, True], ids=["runner-obeys", "runner-ignores-sigterm"])
def test_sigterm_during_an_open_stream_exits_0_and_leaves_no_runner(tmp_path, model, fake_bin, runner_ignores_sigterm):
    pause = tmp_path / "pause"
    pause.touch()  # the stream stays open until the host stops
    env = {"FAKE_IGNORE_SIGTERM": 1} if runner_ignores_sigterm else {}
    config = cli_config(tmp_path, {"tiny": model("tiny", FAKE_PAUSE_FILE=pause, **env)}, shutdown_grace=2)
    with running_cli(config, tmp_path) as (proc, url):
        body = {"model": "tiny", "messages": HELLO, "max_tokens": 4, "stream": True}
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=30) as response:
            lines = response.iter_lines()
            assert next(line for line in lines if '"content": " t0"' in line)
            pids = starts(tmp_path, "tiny")
            assert len(pids) == 1 and not gone(pids[0])
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=2 + 2 + 15)  # shutdown_grace + stop_grace + a few seconds; a hang fails here
            with contextlib.suppress(httpx.HTTPError):
                for _ in lines:
                    pass
        assert code == 0, (tmp_path / "cli.log").read_text()
        assert gone(pids[0])
        assert fake_processes(fake_bin) == []


def test_sigkill_of_the_host_leaves_no_runner(tmp_path, model, fake_bin):
    config = cli_config(tmp_path, {"tiny": model("tiny")})
    with running_cli(config, tmp_path) as (proc, url):
        assert httpx.post(url + "/api/v1/models/tiny/load", timeout=30).status_code == 200
        pid = httpx.get(url + "/api/v1/models/tiny", timeout=10).json()["pid"]
        assert pid == starts(tmp_path, "tiny")[0] and not gone(pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        wait_until(lambda: gone(pid), f"runner {pid} to die with its host (llama_host.reaper)", timeout=10)
    assert fake_processes(fake_bin) == []


