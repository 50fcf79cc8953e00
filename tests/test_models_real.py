"""Models on demand with the real llama-server on the tiny model."""

import os
import signal
import threading
import time

import httpx
import openai
import psutil
import pytest

from llama_host import hookimpl
from llama_host.testing import gone, serve_host, tiny_site

pytestmark = pytest.mark.real
PLUGINS = ["openai_api", "llama_server"]
CHAT = [{"role": "user", "content": "hello"}]


_clients = []


@pytest.fixture(autouse=True)
def _close_clients():
    yield
    while _clients:
        _clients.pop().close()


def client(rh, **kw):
    c = openai.OpenAI(base_url=rh.url() + "/v1", api_key="unused", max_retries=0, **kw)
    _clients.append(c)
    return c


def models(rh):
    return {m["name"]: m for m in httpx.get(rh.url() + "/api/v1/models").json()["models"]}


def wait_for(predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def runner_children():
    return [p for p in psutil.Process().children(recursive=True) if "llama-server" in p.name()]


@pytest.fixture(scope="module")
def long_model(tmp_path_factory):
    """A tiny model with a long context: a 30,000-token reply takes seconds, so a test can act mid-stream."""
    from llama_host.tinymodel import write_tiny_model

    return write_tiny_model(tmp_path_factory.mktemp("long") / "long.gguf", context_length=32768)


LONG = {"ctx_size": 32768, "parallel": 1}


class Recorder:
    def __init__(self):
        self.events = []

    @hookimpl
    def track_event(self, event):
        self.events.append((event.kind, getattr(event, "model", None), getattr(event, "reason", None)))

    def index(self, kind, model, reason=None):
        return next(i for i, e in enumerate(self.events) if e[:2] == (kind, model) and reason in (None, e[2]))


def test_first_request_starts_the_runner(tiny_model, llama_server_bin, tmp_path):
    with serve_host(tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path)), PLUGINS) as rh:
        before = models(rh)["tiny"]
        assert before["state"] == "unloaded" and before["pid"] is None and before["in_flight"] == 0
        assert before["memory"] == tiny_model.stat().st_size  # no discovery metadata: the file size alone
        reply = client(rh).chat.completions.create(model="Tiny-Alias", messages=CHAT, max_tokens=5)
        assert reply.usage.completion_tokens == 5
        after = models(rh)["tiny"]
        assert after["state"] == "loaded" and psutil.pid_exists(after["pid"])
        assert after["last_used"] and after["expires_at"] > after["last_used"]
        logs = httpx.get(rh.url() + "/api/v1/models/tiny/logs").json()["lines"]
        assert any("print_timing" in line for line in logs), logs[-5:]
        wait_for((tmp_path / "runners" / "tiny.log").exists, what="the runner's log file")  # written by a thread
        pid = after["pid"]
    assert gone(pid)


def test_concurrent_requests_share_one_process(tiny_model, llama_server_bin, tmp_path):
    with serve_host(tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path)), PLUGINS) as rh:
        results, errors = [], []

        def ask():
            try:
                results.append(client(rh).chat.completions.create(model="tiny", messages=CHAT, max_tokens=3))
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and len(results) == 8
        assert len(runner_children()) == 1


def test_swap_waits_for_in_flight_request(long_model, llama_server_bin, tmp_path):
    site = tiny_site(long_model, llama_server_bin, log_dir=str(tmp_path), scheduler={"max_loaded": 1})
    site["models"]["tiny"]["params"] = LONG
    site["models"]["other"] = {"path": str(long_model), "params": {"ctx_size": 1024}}
    recorder = Recorder()
    with serve_host(site, PLUGINS, extra=[("recorder", recorder)]) as rh:
        c = client(rh)
        stream = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=4000, stream=True,
                                           stream_options={"include_usage": True})
        chunks = iter(stream)
        pieces = [next(chunks)]
        assert models(rh)["tiny"]["in_flight"] == 1
        other = {}
        t = threading.Thread(target=lambda: other.update(
            reply=c.chat.completions.create(model="other", messages=CHAT, max_tokens=2)))
        t.start()
        wait_for(lambda: ("request_started", "other", None) in recorder.events, what="the other request")
        assert models(rh)["tiny"]["state"] == "loaded"  # the first is still streaming: the other waits
        pieces += list(chunks)
        t.join(60)
        # the first stream is complete and intact, and the swap happened only after it ended
        assert pieces[-1].usage.completion_tokens == sum(1 for p in pieces if p.choices and p.choices[0].delta.content)
        assert any(p.choices and p.choices[0].finish_reason for p in pieces)
        assert other["reply"].choices[0].message.content
        finished = recorder.index("request_finished", "tiny")
        assert finished < recorder.index("model_unloaded", "tiny", "evicted") < recorder.index("model_loading", "other")
        state = models(rh)
        assert state["tiny"]["state"] == "unloaded" and state["other"]["state"] == "loaded"


def test_ttl_unloads_idle_model(tiny_model, llama_server_bin, tmp_path):
    site = tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path))
    site["models"]["tiny"]["ttl"] = 1
    with serve_host(site, PLUGINS) as rh:
        client(rh).chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
        pid = models(rh)["tiny"]["pid"]
        wait_for(lambda: models(rh)["tiny"]["state"] == "unloaded", what="ttl unload")
        wait_for(lambda: not psutil.pid_exists(pid), what="runner exit")


def test_killed_runner_mid_stream_gives_clean_error_then_recovers(long_model, llama_server_bin, tmp_path):
    site = tiny_site(long_model, llama_server_bin, log_dir=str(tmp_path))
    site["models"]["tiny"]["params"] = LONG
    with serve_host(site, PLUGINS) as rh:
        c = client(rh)
        stream = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=30000, stream=True)
        chunks = iter(stream)
        next(chunks)
        pid = models(rh)["tiny"]["pid"]
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(openai.APIError) as info:
            for _ in chunks:
                pass
        assert "tiny" in str(info.value)
        wait_for(lambda: models(rh)["tiny"]["state"] == "failed", what="failed state")
        assert "exited unexpectedly" in models(rh)["tiny"]["error"]
        reply = c.chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
        assert reply.usage.completion_tokens == 2
        assert models(rh)["tiny"]["pid"] != pid


def test_client_disconnect_releases_lease(long_model, llama_server_bin, tmp_path):
    site = tiny_site(long_model, llama_server_bin, log_dir=str(tmp_path))
    site["models"]["tiny"]["params"] = LONG
    with serve_host(site, PLUGINS) as rh:
        body = {"model": "tiny", "messages": CHAT, "max_tokens": 30000, "stream": True}
        with httpx.stream("POST", rh.url() + "/v1/chat/completions", json=body, timeout=30) as r:
            chunks = r.iter_raw()  # keep the iterator: dropping it would close the stream
            assert next(chunks).startswith(b"data: ")
            assert models(rh)["tiny"]["in_flight"] == 1
        wait_for(lambda: models(rh)["tiny"]["in_flight"] == 0, timeout=5, what="lease released")

        def idle_slots():
            slots = httpx.get(rh.url() + "/upstream/tiny/slots").json()
            return all(not s["is_processing"] for s in slots)

        wait_for(idle_slots, timeout=5, what="llama-server stopped generating")


def test_management_load_unload(tiny_model, llama_server_bin, tmp_path):
    with serve_host(tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path)), PLUGINS) as rh:
        r = httpx.post(rh.url() + "/api/v1/models/tiny/load", timeout=60).json()
        assert r["state"] == "loaded" and r["load_seconds"] > 0
        assert httpx.post(rh.url() + "/api/v1/models/tiny/load").json()["load_seconds"] == 0
        assert httpx.post(rh.url() + "/api/v1/models/tiny/unload").json() == {"model": "tiny", "unloaded": True}
        assert models(rh)["tiny"]["state"] == "unloaded"
        assert httpx.post(rh.url() + "/api/v1/models/nope/load").status_code == 404
        with httpx.stream("GET", rh.url() + "/api/v1/models/tiny/logs/stream", timeout=10) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            first = next(r.iter_lines())
            assert first.startswith("data: ")


def test_host_exit_leaves_no_runner(tiny_model, llama_server_bin, tmp_path):
    with serve_host(tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path)), PLUGINS) as rh:
        client(rh).chat.completions.create(model="tiny", messages=CHAT, max_tokens=2)
        assert len(runner_children()) == 1
    wait_for(lambda: not [p for p in runner_children() if p.status() != psutil.STATUS_ZOMBIE], what="no runner")
