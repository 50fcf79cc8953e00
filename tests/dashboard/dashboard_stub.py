"""A stand-in for the host's JSON API, serving the dashboard next to sample data.

It lets the browser tests drive every panel quickly and without llama-server: models whose load takes a moment,
an event stream, logs, metrics with samples, discovery and a chat stream. The real host is tested in
``test_dashboard_real.py``.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn
from litestar import Litestar, Request, get, post
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, NotFoundException
from litestar.handlers import BaseRouteHandler
from litestar.params import FromPath, FromQuery
from litestar.response import Stream

from llama_host_dashboard.routes import StaticAssets, dashboard_handlers

SSE = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
GIB = 1024**3


def sample_models(now: float) -> dict[str, dict[str, Any]]:
    def model(name: str, **kw: Any) -> dict[str, Any]:
        base = dict(name=name, state="unloaded", runtime="llama-server", source="config", aliases=[], memory=0,
                    in_flight=0, pinned=False, unlisted=False, missing=False, ttl=300.0, last_used=None,
                    expires_at=None, loaded_at=None, load_seconds=None, pid=None, error=None, path=None, metadata={})
        base.update(kw)
        md = base["metadata"]
        # what /api/v1/models serves as `facts` (the core's model facts; here the trained context is the one run)
        base["facts"] = {"context_length": md.get("context_length"), "trained_context": md.get("context_length"),
                         "architecture": md.get("architecture"), "quantization": md.get("quantization"),
                         "parameter_count": md.get("parameter_count"), "params": {},
                         "embedding": md.get("architecture") == "nomic-bert", "vision": False, "tools": False,
                         "thinking": False, "file_size": None, "memory": base["memory"]}
        return base

    return {
        "qwen2.5-7b-instruct": model(
            "qwen2.5-7b-instruct", state="loaded", aliases=["qwen", "qwen2.5"], memory=int(5.4 * GIB),
            ttl=600.0, last_used=now - 42, expires_at=now + 558, loaded_at=now - 900, load_seconds=3.8, pid=41234,
            path="/models/qwen2.5-7b-instruct-q4_k_m.gguf",
            metadata={"architecture": "qwen2", "parameter_count": 7_615_616_512, "quantization": "Q4_K_M",
                      "context_length": 32768}),
        "llama-3.2-3b": model(
            "llama-3.2-3b", memory=int(2.3 * GIB), source="discovery_gguf", last_used=now - 7200,
            path="/models/Llama-3.2-3B-Instruct-Q5_K_M.gguf",
            metadata={"architecture": "llama", "parameter_count": 3_212_749_824, "quantization": "Q5_K_M",
                      "context_length": 131072}),
        "nomic-embed": model(
            "nomic-embed", memory=int(0.3 * GIB), pinned=True, ttl=None, aliases=["embed"], group="embedders",
            priority=5, max_concurrent=4,
            path="/models/nomic-embed-text-v1.5.Q8_0.gguf",
            metadata={"architecture": "nomic-bert", "parameter_count": 136_731_648, "quantization": "Q8_0",
                      "context_length": 2048}),
        "broken-model": model(
            "broken-model", state="failed", memory=int(1.1 * GIB), source="discovery_gguf",
            error="llama-server exited with status 1\nlast log lines:\nerror: unknown model architecture: 'foo'",
            path="/models/broken.gguf", metadata={"architecture": "foo"}),
        "old-model": model("old-model", missing=True, source="discovery_gguf", path="/models/gone.gguf"),
        "remote-gpt": model("remote-gpt", runtime="remote", ttl=None, unlisted=True),
    }


class StubHost:
    def __init__(self, *, api_keys: list[str] | None = None, metrics: bool = True, discovery: bool = True,
                 load_delay: float = 0.6) -> None:
        self.api_keys = api_keys or []
        self.metrics = metrics
        self.discovery = discovery
        self.load_delay = load_delay
        self.started = time.time()
        self.models = sample_models(self.started)
        self.queues: set[asyncio.Queue[dict[str, Any]]] = set()
        self.activity: list[dict[str, Any]] = []
        self.seq = 0
        self.logs: dict[str, list[str]] = {name: [] for name in self.models}
        self.logs["qwen2.5-7b-instruct"] = [
            "build: 4500 (abc123) with cc (Debian 12.2.0) for x86_64-linux-gnu",
            "main: loading model", "llama_model_loader: loaded meta data with 29 key-value pairs",
            "llm_load_tensors: CPU buffer size = 4460.45 MiB", "warning: no usable GPU found",
            "main: server is listening on http://127.0.0.1:41234 - starting the main loop",
            "srv  update_slots: all slots are idle",
        ]
        self.log_queues: set[tuple[str, asyncio.Queue[str]]] = set()
        self.requests_seen: list[dict[str, Any]] = []
        #: Set when the server stops, so that open event streams end and the shutdown need not cancel them.
        self.closing = False
        self._seed_activity()

    # --- helpers --------------------------------------------------------------------------------------------------

    def _seed_activity(self) -> None:
        now = time.time()
        surfaces = ["openai_api", "ollama_api", "lmstudio_api"]
        for i in range(40):
            ts = now - 840 + i * 20
            self.seq += 1
            self.activity.append(dict(
                id=self.seq, kind="request_finished", ts=ts, surface=surfaces[i % 3], model="qwen2.5-7b-instruct",
                endpoint="/v1/chat/completions" if i % 3 == 0 else "/api/chat" if i % 3 == 1 else "/api/v0/chat/completions",
                status=200 if i % 11 else 500, duration=0.8 + (i % 7) * 0.3, stream=bool(i % 2), queue_wait=0.0,
                ttft=0.08 + (i % 5) * 0.03, prompt_tokens=30 + i, completion_tokens=60 + (i * 7) % 90,
                tokens_per_second=38.0 + (i % 9), prompt_ms=40.0, predicted_ms=1500.0, stop_reason="stop",
                error=None if i % 11 else "runner crashed"))

    def publish(self, event: dict[str, Any]) -> None:
        event.setdefault("ts", time.time())
        for q in self.queues:
            q.put_nowait(event)

    def log(self, name: str, line: str) -> None:
        self.logs.setdefault(name, []).append(line)
        for model, q in self.log_queues:
            if model == name:
                q.put_nowait(line)

    def status(self, name: str) -> dict[str, Any]:
        model = self.models.get(name)
        if model is None:
            raise NotFoundException(f"model '{name}' not found")
        return model

    def system_sample(self, ts: float) -> dict[str, Any]:
        wave = (ts % 120) / 120
        return {"kind": "system", "ts": ts, "cpu_percent": 18 + 30 * wave, "cpu_count": 16,
                "memory_total": 64 * GIB, "memory_available": int(40 * GIB - 6 * GIB * wave),
                "memory_used": int(24 * GIB + 6 * GIB * wave), "memory_percent": 37.5 + 9 * wave, "swap_used": 0,
                "load_average": [1.2, 1.0, 0.8], "process": {"pid": 1, "cpu_percent": 2.0, "rss": 80_000_000, "threads": 9}}

    def runner_samples(self, ts: float) -> list[dict[str, Any]]:
        wave = (ts % 90) / 90
        return [{"kind": "runner", "model": m["name"], "pid": m["pid"], "ts": ts, "cpu_percent": 120 + 300 * wave,
                 "rss": int(m["memory"] * 0.9), "vms": m["memory"] * 2, "threads": 18, "open_files": 3, "fds": 40,
                 "gpu_memory": None} for m in self.models.values() if m["state"] == "loaded" and m["pid"]]

    def summary(self) -> dict[str, Any]:
        now = time.time()
        done = self.activity
        return {"ts": now, "started_at": self.started,
                "totals": {"requests": len(done), "errors": sum(a["status"] >= 400 for a in done),
                           "in_flight": sum(m["in_flight"] for m in self.models.values()),
                           "prompt_tokens": sum(a["prompt_tokens"] or 0 for a in done),
                           "completion_tokens": sum(a["completion_tokens"] or 0 for a in done),
                           "total_tokens": 0},
                "models": {}, "runners": self.runner_samples(now), "system": self.system_sample(now),
                "stream": {"clients": len(self.queues), "dropped": 0}}

    # --- the app --------------------------------------------------------------------------------------------------

    def app(self) -> Litestar:
        stub = self

        def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:
            if stub.api_keys and connection.headers.get("authorization", "") not in [f"Bearer {k}" for k in stub.api_keys]:
                raise NotAuthorizedException("invalid or missing API key")

        @get("/api/v1/status", guards=[guard])
        async def status() -> dict[str, Any]:
            plugins = [
                {"name": "openai_api", "distribution": "llama-host", "version": "0.1.0", "enabled": True, "loaded": True, "error": None},
                {"name": "ollama_api", "distribution": "llama-host", "version": "0.1.0", "enabled": True, "loaded": True, "error": None},
                {"name": "lmstudio_api", "distribution": "llama-host", "version": "0.1.0", "enabled": False, "loaded": False, "error": None},
                {"name": "llama_server", "distribution": "llama-host", "version": "0.1.0", "enabled": True, "loaded": True, "error": None},
                {"name": "metrics", "distribution": "llama-host", "version": "0.1.0", "enabled": stub.metrics, "loaded": stub.metrics, "error": None},
                {"name": "discovery_gguf", "distribution": "llama-host", "version": "0.1.0", "enabled": stub.discovery, "loaded": stub.discovery, "error": None},
                {"name": "dashboard", "distribution": "llama-host", "version": "0.1.0", "enabled": True, "loaded": True, "error": None},
                {"name": "hello", "distribution": "llama-host-hello", "version": "1.2.0", "enabled": True, "loaded": False,
                 "error": "ImportError: No module named 'hello_plugin'"},
            ]
            return {"version": "0.1.0", "uptime": time.time() - stub.started, "plugins": plugins,
                    "listeners": [{"host": "127.0.0.1", "port": 8000, "surfaces": ["core", "openai_api", "dashboard", "metrics"]},
                                  {"host": "127.0.0.1", "port": 11434, "surfaces": ["ollama_api", "openai_api"]}],
                    "models": [{"name": m["name"], "state": m["state"]} for m in stub.models.values()]}

        @get("/api/v1/config", guards=[guard])
        async def config() -> dict[str, Any]:
            return {"host": "127.0.0.1", "port": 8000, "api_keys": ["***"] if stub.api_keys else [], "log_level": "info",
                    "log_dir": "logs", "default_model": None,
                    "scheduler": {"max_loaded": 1, "memory_budget": "20GiB", "ttl": 300, "startup_timeout": 120},
                    "plugins": {"ollama_api": {"port": 11434}, "lmstudio_api": {"enabled": False},
                                "discovery_gguf": {"dirs": ["~/models"]}},
                    "models": {"qwen2.5-7b-instruct": {"path": "/models/qwen2.5-7b-instruct-q4_k_m.gguf",
                                                       "aliases": ["qwen"], "ttl": 600, "params": {"ctx_size": 16000}}}}

        @get("/api/v1/models", guards=[guard])
        async def models() -> dict[str, Any]:
            return {"models": list(stub.models.values())}

        @post("/api/v1/models/{name:str}/load", guards=[guard], status_code=200)
        async def load(name: FromPath[str]) -> dict[str, Any]:
            model = stub.status(name)
            if model["state"] == "loaded":
                return {"model": name, "state": "loaded", "load_seconds": 0.0}
            model.update(state="loading", error=None)
            stub.publish({"kind": "model_loading", "model": name})
            stub.log(name, f"main: loading model '{name}'")
            await asyncio.sleep(stub.load_delay)
            now = time.time()
            model.update(state="loaded", pid=50000 + len(name), loaded_at=now, load_seconds=stub.load_delay,
                         last_used=now, expires_at=now + (model["ttl"] or 300))
            stub.log(name, "main: server is listening - starting the main loop")
            stub.publish({"kind": "model_loaded", "model": name, "load_seconds": stub.load_delay, "pid": model["pid"]})
            return {"model": name, "state": "loaded", "load_seconds": stub.load_delay}

        @post("/api/v1/models/{name:str}/unload", guards=[guard], status_code=200)
        async def unload(name: FromPath[str]) -> dict[str, Any]:
            model = stub.status(name)
            was = model["state"] == "loaded"
            model.update(state="unloaded", pid=None, expires_at=None, loaded_at=None, in_flight=0)
            if was:
                stub.publish({"kind": "model_unloaded", "model": name, "reason": "requested"})
            return {"model": name, "unloaded": was}

        @get("/api/v1/models/{name:str}/logs", guards=[guard])
        async def logs(name: FromPath[str]) -> dict[str, Any]:
            stub.status(name)
            return {"model": name, "lines": stub.logs.get(name, [])[-200:]}

        @get("/api/v1/models/{name:str}/logs/stream", guards=[guard])
        async def log_stream(name: FromPath[str]) -> Stream:
            stub.status(name)

            async def lines() -> AsyncIterator[bytes]:
                q: asyncio.Queue[str] = asyncio.Queue()
                entry = (name, q)
                stub.log_queues.add(entry)
                try:
                    for line in stub.logs.get(name, [])[-200:]:
                        yield f"data: {json.dumps(line)}\n\n".encode()
                    while not stub.closing:
                        try:
                            line = await asyncio.wait_for(q.get(), 0.2)
                        except TimeoutError:
                            continue
                        yield f"data: {json.dumps(line)}\n\n".encode()
                finally:
                    stub.log_queues.discard(entry)

            return Stream(lines(), media_type="text/event-stream", headers=SSE)

        handlers: list[Any] = [status, config, models, load, unload, logs, log_stream]

        @get("/api/v1/metrics", guards=[guard])
        async def metrics() -> dict[str, Any]:
            return stub.summary()

        @get("/api/v1/activity", guards=[guard])
        async def activity(limit: FromQuery[int] = 100) -> dict[str, Any]:
            return {"activity": list(reversed(stub.activity))[:limit]}

        @get("/api/v1/events", guards=[guard])
        async def events() -> Stream:
            async def stream() -> AsyncIterator[bytes]:
                q: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
                stub.queues.add(q)
                try:
                    yield f"event: snapshot\ndata: {json.dumps(stub.summary())}\n\n".encode()
                    last_sample = 0.0
                    while not stub.closing:
                        try:
                            event = await asyncio.wait_for(q.get(), 0.2)
                        except TimeoutError:
                            now = time.time()
                            if now - last_sample < 1.0:
                                continue
                            last_sample = now
                            for sample in [stub.system_sample(now), *stub.runner_samples(now)]:
                                yield f"event: {sample['kind']}\ndata: {json.dumps(sample)}\n\n".encode()
                            continue
                        yield f"event: {event['kind']}\ndata: {json.dumps(event)}\n\n".encode()
                finally:
                    stub.queues.discard(q)

            return Stream(stream(), media_type="text/event-stream", headers=SSE)

        if self.metrics:
            handlers += [metrics, activity, events]

        @post("/api/v1/discovery/rescan", guards=[guard], status_code=200)
        async def rescan() -> dict[str, Any]:
            stub.models["new-model"] = sample_models(time.time())["llama-3.2-3b"] | {"name": "new-model", "last_used": None}
            stub.publish({"kind": "models_changed", "added": ["new-model"], "changed": ["llama-3.2-3b"], "missing": ["old-model"]})
            return {"added": ["new-model"], "changed": ["llama-3.2-3b"], "missing": ["old-model"],
                    "errors": ["/models/bad.gguf: not a GGUF file"]}

        if self.discovery:
            handlers.append(rescan)

        @post("/v1/chat/completions", guards=[guard])
        async def chat(request: Request) -> Stream:
            body = await request.json()
            stub.requests_seen.append(body)
            name = body["model"]
            model = stub.status(name)
            words = ["Hello", " from", " the", " stub", " host", "!", " You", " said", ":", " ",
                     body["messages"][-1]["content"][:40]]

            async def chunks() -> AsyncIterator[bytes]:
                started = time.time()
                model["in_flight"] += 1
                if model["state"] != "loaded":
                    model.update(state="loaded", pid=60000, load_seconds=0.1)
                    stub.publish({"kind": "model_loaded", "model": name, "load_seconds": 0.1, "pid": 60000})
                for word in words:
                    await asyncio.sleep(0.05)
                    chunk = {"id": "c1", "object": "chat.completion.chunk", "created": int(started), "model": name,
                             "choices": [{"index": 0, "delta": {"content": word}, "finish_reason": None}]}
                    yield f"data: {json.dumps(chunk)}\n\n".encode()
                final = {"id": "c1", "object": "chat.completion.chunk", "created": int(started), "model": name,
                         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                         "timings": {"predicted_n": len(words), "predicted_per_second": 41.5, "prompt_ms": 12.0}}
                yield f"data: {json.dumps(final)}\n\n".encode()
                usage = {"id": "c1", "object": "chat.completion.chunk", "created": int(started), "model": name,
                         "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": len(words), "total_tokens": 12 + len(words)}}
                yield f"data: {json.dumps(usage)}\n\ndata: [DONE]\n\n".encode()
                model["in_flight"] -= 1
                now = time.time()
                model.update(last_used=now, expires_at=now + (model["ttl"] or 300))
                stub.seq += 1
                entry = dict(id=stub.seq, kind="request_finished", ts=now, surface="openai_api", model=name,
                             endpoint="/v1/chat/completions", status=200, duration=now - started, stream=True,
                             queue_wait=0.0, ttft=0.05, prompt_tokens=12, completion_tokens=len(words),
                             tokens_per_second=41.5, prompt_ms=12.0, predicted_ms=300.0, stop_reason="stop", error=None)
                stub.activity.append(entry)
                stub.publish(dict(entry))

            return Stream(chunks(), media_type="text/event-stream", headers=SSE)

        handlers.append(chat)
        return Litestar(route_handlers=[*dashboard_handlers(StaticAssets.load()), *handlers], logging_config=None)


@contextmanager
def serve_stub(stub: StubHost) -> Iterator[str]:
    """Run the stub on a free loopback port in a thread; yields its base URL."""
    config = uvicorn.Config(stub.app(), host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("the stub host did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stub.closing = True
        server.should_exit = True
        thread.join(10)
