"""Several machines in one: llama-host nodes and RPC workers in network namespaces on one bridge (see conftest.py).

Each node is a real ``llama-host`` process (``ip netns exec``); models run in the real llama-server, or, where a test
must kill a node in the middle of long streams, in the fake llama-server (a real stream cut by a real dead node).
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from llama_host.testing import runner_binary
from llama_host.worker import find_rpc_server

pytestmark = [pytest.mark.netns, pytest.mark.real]

FAKE = str(Path(__file__).parents[1] / "fake_llama_server.py")
KEY = "cluster-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO = [{"role": "user", "content": "Say hello"}]
QUIET = {name: {"enabled": False} for name in ("discovery_gguf", "dashboard", "metrics", "whisper_server")}


def wait_for(check, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def rpc_build() -> tuple[str, str]:
    """rpc-server and the llama-server built with it (RPC support): scripts/get-rpc-server."""
    rpc = find_rpc_server()
    if rpc is None:
        runner_binary("rpc-server", "RPC_SERVER", "get-rpc-server")  # fails under CI, skips elsewhere
    server = Path(rpc).with_name("llama-server")
    if not server.is_file():
        pytest.skip(f"no llama-server next to {rpc}: run scripts/get-llama-server")
    return rpc, str(server)


def peers(*hosts, poll: float = 0.5) -> list[dict]:
    return [{"url": h.url, "api_key": KEY, "name": h.node.name, "poll_seconds": poll, "timeout": 2} for h in hosts]


def greedy_tokens(host, model: str) -> list[int]:
    r = host.post(f"/upstream/{model}/completion", headers=AUTH, json={
        "prompt": "The quick brown fox", "n_predict": 24, "temperature": 0, "seed": 42, "return_tokens": True,
        "cache_prompt": False})
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def test_a_tiny_model_split_over_two_rpc_workers_gives_the_same_greedy_tokens(fabric, tiny_model):
    rpc, server = rpc_build()
    w1, w2 = fabric.add("w1"), fabric.add("w2")
    a1, a2 = w1.start_worker(), w2.start_worker()
    front = fabric.add("front").start_host({
        "api_keys": [KEY], "scheduler": {"max_loaded": 2, "startup_timeout": 120},
        "plugins": {**QUIET, "llama_server": {"binary": server}},
        "models": {"split": {"path": str(tiny_model), "rpc": [a1, a2], "params": {"ctx_size": 512, "n_gpu_layers": 99}},
                   "one": {"path": str(tiny_model), "params": {"ctx_size": 512}}}})
    one = greedy_tokens(front, "one")
    split = greedy_tokens(front, "split")
    assert len(one) == 24 and split == one
    logs = "\n".join(front.get("/api/v1/models/split/logs?lines=2000", headers=AUTH).json()["lines"])
    assert f"--rpc {a1},{a2}" in logs
    assert a1 in logs.split("--rpc", 1)[1] and a2 in logs.split("--rpc", 1)[1]
    for worker in (w1, w2):  # each worker served the model's layers
        assert "rpc-server: Accepted client connection" in worker.log("worker.log"), worker.log("worker.log")
    status = front.get("/api/v1/models/split", headers=AUTH).json()
    assert [(w["address"], w["up"]) for w in status["details"]["rpc_workers"]] == [(a1, True), (a2, True)]

    # a worker dies: the model fails naming it; the next request restarts it on the worker still alive
    w2.kill()
    failed = wait_for(lambda: (s := front.get("/api/v1/models/split", headers=AUTH).json())["state"] == "failed"
                      and s)
    assert failed and a2 in failed["error"], failed
    assert greedy_tokens(front, "split") == one
    status = front.get("/api/v1/models/split", headers=AUTH).json()
    assert [(w["address"], w["up"], w["used"]) for w in status["details"]["rpc_workers"]] == [
        (a1, True, True), (a2, False, False)]


def fake(**env: str) -> dict:
    return {"runtime": "command", "cmd": [sys.executable, FAKE, "--port", "${PORT}"], "env": env}


def test_a_peer_killed_under_load_loses_only_its_requests_in_flight(fabric):
    slow = fake(FAKE_CHUNK_DELAY="0.5")
    site = {"api_keys": [KEY], "scheduler": {"max_loaded": 0}, "plugins": QUIET}
    b = fabric.add("b").start_host({**site, "models": {"shared": slow, "only-b": fake()}})
    c = fabric.add("c").start_host({**site, "models": {"shared": slow}})
    front = fabric.add("front").start_host({"plugins": QUIET, "peers": peers(b, c)})
    stats = lambda: {p["name"]: p for p in front.get("/api/v1/peers").json()["peers"]}  # noqa: E731
    assert wait_for(lambda: all(p["up"] for p in stats().values()))

    started = threading.Semaphore(0)

    def ask(_: int) -> str:
        text, begun = "", False
        with httpx.stream("POST", front.url + "/v1/chat/completions", timeout=60,
                          json={"model": "shared", "messages": HELLO, "max_tokens": 12, "stream": True}) as r:
            if r.status_code != 200:
                return f"HTTP {r.status_code}"
            for chunk in r.iter_text():
                if not begun and " t0" in text + chunk:
                    begun = True
                    started.release()  # the first token is out: the request is committed to its peer
                text += chunk
        if '"error"' in text and "went away" in text:
            return "lost"
        return "ok" if text.rstrip().endswith("data: [DONE]") and " t11" in text else text

    pending = [fabric._pool.submit(ask, i) for i in range(6)]
    # kill b only once all six streams are under way (a request whose answer has not begun may be retried on c)
    begun = sum(started.acquire(timeout=30) for _ in range(6))
    assert begun == 6, (begun, stats(), [p.result(60) for p in pending])
    s = stats()
    on_b = s["b"]["in_flight"]
    assert on_b >= 1 and s["c"]["in_flight"] >= 1 and on_b + s["c"]["in_flight"] == 6, s
    b.node.kill()
    results = [p.result(120) for p in pending]
    assert results.count("lost") == on_b and results.count("ok") == 6 - on_b, results
    assert fabric.client_map(ask, list(range(4))) == ["ok"] * 4  # new requests go to the replica still up
    assert wait_for(lambda: not stats()["b"]["up"])

    # b's own model has no replica left: out of the listings, and a 503 naming it
    assert wait_for(lambda: "only-b" not in {m["id"] for m in front.get("/v1/models").json()["data"]})
    r = front.post("/v1/chat/completions", json={"model": "only-b", "messages": HELLO})
    assert r.status_code == 503, r.text
    assert "'only-b'" in r.json()["error"]["message"]


def test_ollama_and_lm_studio_dialects_work_through_a_peer(fabric, tiny_model, llama_server_bin):
    b = fabric.add("b").start_host({
        "api_keys": [KEY], "plugins": {**QUIET, "llama_server": {"binary": llama_server_bin}},
        "models": {"tiny": {"path": str(tiny_model), "params": {"ctx_size": 512}}}})
    front_node = fabric.add("front")
    front = front_node.start_host({"plugins": {**QUIET, "ollama_api": {"port": 11434}, "lmstudio_api": {"port": 1234}},
                                   "peers": peers(b)})
    options = {"temperature": 0, "seed": 7}
    direct = b.post("/v1/chat/completions", headers=AUTH, json={
        "model": "tiny", "messages": HELLO, "max_tokens": 8, **options}).json()["choices"][0]["message"]["content"]

    def with_ollama() -> tuple[list[str], str]:
        with ollama.Client(host=f"http://{front_node.address}:11434") as client:
            names = [m.model for m in client.list().models]
            reply = client.chat(model="tiny", messages=HELLO, options={"num_predict": 8, **options})
            return names, reply.message.content

    names, content = fabric.client(with_ollama)
    assert any(n.split(":")[0] == "tiny" for n in names)
    assert content == direct

    lms = f"http://{front_node.address}:1234"
    listed = fabric.client(lambda: httpx.get(lms + "/api/v0/models", timeout=30).json())
    assert "tiny" in {m["id"] for m in listed["data"]}
    r = fabric.client(lambda: httpx.post(lms + "/api/v0/chat/completions", timeout=60, json={
        "model": "tiny", "messages": HELLO, "max_tokens": 8, **options}))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == direct

    def with_openai() -> str:
        with openai.OpenAI(base_url=front.url + "/v1", api_key="x", max_retries=0) as client:
            stream = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, stream=True,
                                                    temperature=0, seed=7)
            return "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)

    assert fabric.client(with_openai) == direct
    models = {m["name"]: m for m in front.get("/api/v1/models").json()["models"]}
    assert models["tiny"]["runtime"] == "peer"
    assert models["tiny"]["metadata"]["nodes"] == [{"node": "b", "url": b.url, "up": True, "state": "loaded"}]
