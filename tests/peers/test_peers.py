"""Peers (``peers:``): other llama-host nodes' models in this host's catalogue, routed, balanced and failed over.

The nodes are real llama-host processes (killable with SIGKILL) on loopback, each serving fake llama-servers (fast);
tests/multinode runs real llama-servers across network namespaces.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from llama_host.peers import Candidate, choose
from llama_host.process import free_port
from llama_host.testing import serve_host

FAKE = str(Path(__file__).parents[1] / "fake_llama_server.py")
HELLO = [{"role": "user", "content": "hi"}]
KEY = "node-key"


def fake_model(**env: str) -> dict:
    return {"runtime": "command", "cmd": [sys.executable, FAKE, "--port", "${PORT}"], "env": env}


class Node:
    """A llama-host in its own process (``python -m llama_host.cli``), serving ``models`` on a free port."""

    def __init__(self, tmp: Path, name: str, models: dict, **site) -> None:
        self.port = free_port()
        self.dir = tmp / name
        self.dir.mkdir()
        plugins = {p: {"enabled": False} for p in ("ollama_api", "lmstudio_api", "discovery_gguf", "dashboard",
                                                   "metrics", "whisper_server")}
        config = {"port": self.port, "api_keys": [KEY], "log_dir": str(self.dir / "logs"),
                  "scheduler": {"max_loaded": 0}, "plugins": plugins, "models": models, **site}
        (self.dir / "site.yaml").write_text(yaml.safe_dump(config))
        with open(self.dir / "stderr", "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "llama_host.cli", "--config",
                                          str(self.dir / "site.yaml")],
                                         stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"node {name} did not start: {(self.dir / 'stderr').read_text()[-2000:]}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        """SIGKILL the node's whole process group (the host and its runners)."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.kill()


@pytest.fixture
def nodes(tmp_path):
    started: list[Node] = []

    def start(name: str, models: dict, **site) -> Node:
        node = Node(tmp_path, name, models, **site)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def front_site(tmp_path, *nodes: Node, **extra) -> dict:
    return {"log_dir": str(tmp_path / "front"), "scheduler": {"max_loaded": 1},
            "peers": [{"url": n.url, "api_key": KEY, "name": name, "poll_seconds": 0.5, "timeout": 2}
                      for name, n in nodes], **extra}


def peer_stats(front) -> dict[str, dict]:
    return {p["name"]: p for p in httpx.get(front.url() + "/api/v1/peers").json()["peers"]}


def wait_for(check, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def test_choose_prefers_fewest_in_flight_then_loaded():
    a, b = Candidate("a", 0, loaded=True, order=1), Candidate("b", 0, loaded=False, order=0)
    assert choose([a, b]) is a  # both idle: the loaded one
    assert choose([Candidate("a", 1, True, 0), b]).node == "a"  # a tie (an unload counts one): loaded wins
    assert choose([Candidate("a", 2, True, 0), b]).node == "b"  # busy enough: the other replica loads
    assert choose([Candidate("a", 1, True, 1), Candidate("c", 0, True, 2)]).node == "c"
    assert choose([Candidate("a", 0, True, 1), Candidate("c", 0, True, 0)]).node == "c"  # then peers: order
    assert choose([]) is None


def test_peer_models_join_the_catalogue_and_every_dialect_works_through_a_peer(tmp_path, nodes):
    b = nodes("b", {"shared": fake_model(), "only-b": {**fake_model(), "aliases": ["bee"]}})
    c = nodes("c", {"shared": fake_model()})
    local = {"here": fake_model()}
    with serve_host({**front_site(tmp_path, ("B", b), ("C", c)), "models": local},
                    ["openai_api", "ollama_api", "lmstudio_api", "command_runtime"]) as front:
        models = {m["name"]: m for m in httpx.get(front.url() + "/api/v1/models").json()["models"]}
        assert set(models) == {"here", "shared", "only-b"}
        assert models["here"]["runtime"] == "command"
        assert models["only-b"]["runtime"] == "peer" and models["only-b"]["aliases"] == ["bee"]
        assert [(n["node"], n["up"]) for n in models["shared"]["metadata"]["nodes"]] == [("B", True), ("C", True)]
        assert [n["node"] for n in models["only-b"]["metadata"]["nodes"]] == ["B"]
        # listed by every dialect
        ids = {m["id"] for m in httpx.get(front.url() + "/v1/models").json()["data"]}
        assert {"here", "shared", "only-b"} <= ids
        with front.client("ollama_api") as c_ollama:
            tags = {m["name"] for m in c_ollama.get("/api/tags").json()["models"]}
            assert any(t.startswith("only-b") for t in tags) and any(t.startswith("shared") for t in tags)
            r = c_ollama.post("/api/chat", json={"model": "bee", "messages": HELLO, "stream": False,
                                                 "options": {"num_predict": 3}})
            assert r.status_code == 200, r.text
            assert r.json()["message"]["content"] == " t0 t1 t2"
            r = c_ollama.post("/api/generate", json={"model": "only-b", "prompt": "hi", "stream": True,
                                                     "options": {"num_predict": 4}})
            assert r.status_code == 200, r.text
            assert "".join(yaml.safe_load(line)["response"] for line in r.text.splitlines()) == " t0 t1 t2 t3"
        with front.client("lmstudio_api") as c_lms:
            listed = {m["id"] for m in c_lms.get("/api/v0/models").json()["data"]}
            assert {"shared", "only-b"} <= listed
            r = c_lms.post("/api/v0/chat/completions", json={"model": "only-b", "messages": HELLO, "max_tokens": 2})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["message"]["content"] == " t0 t1"
        with openai.OpenAI(base_url=front.url() + "/v1", api_key="x", max_retries=0) as client:
            stream = client.chat.completions.create(model="only-b", messages=HELLO, max_tokens=3, stream=True)
            assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == " t0 t1 t2"
        # the request really ran on B: its own model list says loaded, and the front counted it
        on_b = {m["name"]: m["state"] for m in httpx.get(b.url + "/api/v1/models",
                                                          headers={"Authorization": f"Bearer {KEY}"}).json()["models"]}
        assert on_b["only-b"] == "loaded"
        stats = peer_stats(front)
        assert stats["B"]["up"] and stats["B"]["requests"] == 4 and stats["B"]["failures"] == 0
        assert stats["C"]["requests"] == 0 and stats["B"]["in_flight"] == 0


def test_replicas_are_balanced_by_requests_in_flight(tmp_path, nodes):
    slow = fake_model(FAKE_CHUNK_DELAY="0.4")
    b, c = nodes("b", {"shared": slow}), nodes("c", {"shared": slow})
    with serve_host(front_site(tmp_path, ("B", b), ("C", c)), ["openai_api", "metrics"]) as front:
        for node in (b, c):  # loaded on both, and seen so by the front: the choice is by requests in flight alone
            r = httpx.post(node.url + "/api/v1/models/shared/load", headers={"Authorization": f"Bearer {KEY}"},
                           timeout=60)
            assert r.status_code == 200, r.text
        assert wait_for(lambda: all(p["models"].get("shared") == "loaded" for p in peer_stats(front).values()))

        def ask(_: int) -> str:
            """A stream: the fake runner paces streamed tokens only, so the eight requests overlap."""
            r = httpx.post(front.url() + "/v1/chat/completions", timeout=30,
                           json={"model": "shared", "messages": HELLO, "max_tokens": 6, "stream": True})
            assert r.status_code == 200, r.text
            events = [json.loads(line[6:]) for line in r.text.splitlines()
                      if line.startswith("data: {")]
            return "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            replies = list(pool.map(ask, range(8)))
        assert replies == [" t0 t1 t2 t3 t4 t5"] * 8
        stats = peer_stats(front)
        assert stats["B"]["requests"] + stats["C"]["requests"] == 8
        assert 3 <= stats["B"]["requests"] <= 5, stats  # in-flight balancing: neither node took (nearly) all


def test_a_killed_peer_loses_only_its_requests_in_flight_and_its_models_become_unavailable(tmp_path, nodes):
    slow = fake_model(FAKE_CHUNK_DELAY="0.5")
    b = nodes("b", {"shared": slow, "only-b": fake_model()})
    c = nodes("c", {"shared": slow})
    with serve_host(front_site(tmp_path, ("B", b), ("C", c)), ["openai_api", "metrics"]) as front:
        started = threading.Semaphore(0)

        def ask(_: int) -> str:
            """A streamed request: "ok" when it ended whole, "lost" when it ended with an error event."""
            text, begun = "", False
            with httpx.stream("POST", front.url() + "/v1/chat/completions", timeout=30,
                              json={"model": "shared", "messages": HELLO, "max_tokens": 10, "stream": True}) as r:
                if r.status_code != 200:
                    return f"HTTP {r.status_code}"
                for chunk in r.iter_text():
                    text += chunk
                    if not begun and " t0" in text:
                        begun = True
                        started.release()  # the first token is out: the request is committed to its peer
            if '"error"' in text and "went away" in text:
                return "lost"
            return "ok" if text.rstrip().endswith("data: [DONE]") and " t9" in text else text

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            first = [pool.submit(ask, i) for i in range(6)]
            # kill B only once all six streams are under way (a request not yet answered may be retried on C)
            assert sum(started.acquire(timeout=30) for _ in range(6)) == 6, peer_stats(front)
            stats = peer_stats(front)
            on_b = stats["B"]["in_flight"]
            assert on_b >= 1 and on_b + stats["C"]["in_flight"] == 6, stats
            b.kill()
            codes = [f.result() for f in first]
            after = list(pool.map(ask, range(4)))  # new requests all go to C
        assert codes.count("lost") == on_b and codes.count("ok") == 6 - on_b, codes
        assert after == ["ok"] * 4
        assert wait_for(lambda: not peer_stats(front)["B"]["up"])
        models = wait_for(lambda: {m["name"]: m for m in httpx.get(front.url() + "/api/v1/models").json()["models"]
                                   if m["missing"]}.get("only-b"))
        assert models and models["metadata"]["nodes"][0]["up"] is False
        ids = {m["id"] for m in httpx.get(front.url() + "/v1/models").json()["data"]}
        assert ids == {"shared"}  # only-b left the listings
        r = httpx.post(front.url() + "/v1/chat/completions", json={"model": "only-b", "messages": HELLO})
        assert r.status_code == 503, r.text
        assert "only-b" in r.json()["error"]["message"] and "B" in r.json()["error"]["message"]
        # per-peer metrics in the Prometheus exposition
        metrics = httpx.get(front.url() + "/metrics").text
        assert 'llama_host_peer_up{peer="B"} 0.0' in metrics and 'llama_host_peer_up{peer="C"} 1.0' in metrics
        stats = peer_stats(front)
        assert f'llama_host_peer_requests_total{{peer="C"}} {float(stats["C"]["requests"])}' in metrics
        assert stats["B"]["failures"] >= on_b
        assert f'llama_host_peer_failures_total{{peer="B"}} {float(stats["B"]["failures"])}' in metrics


def test_a_request_to_a_peer_that_died_between_polls_fails_over(tmp_path, nodes):
    b, c = nodes("b", {"shared": fake_model()}), nodes("c", {"shared": fake_model()})
    site = front_site(tmp_path, ("B", b), ("C", c))
    for peer in site["peers"]:
        peer["poll_seconds"] = 3600  # only the request can notice
    with serve_host(site, ["openai_api"]) as front:
        b.kill()
        for _ in range(3):
            r = httpx.post(front.url() + "/v1/chat/completions", json={"model": "shared", "messages": HELLO,
                                                                        "max_tokens": 1})
            assert r.status_code == 200, r.text
        stats = peer_stats(front)
        assert not stats["B"]["up"] and stats["B"]["failures"] >= 1 and stats["C"]["requests"] == 3


def test_a_peer_with_a_wrong_key_is_down_with_the_reason(tmp_path, nodes):
    b = nodes("b", {"m": fake_model()})
    site = front_site(tmp_path, ("B", b))
    site["peers"][0]["api_key"] = "wrong"
    with serve_host(site, ["openai_api"]) as front:
        stats = peer_stats(front)
        assert stats["B"]["up"] is False and "401" in stats["B"]["error"]
        assert httpx.get(front.url() + "/api/v1/models").json()["models"] == []
