"""Host CPU of the request lifecycle alone: the core primitive (``llama_host.request.run`` with the OpenAI surface's
``Passthrough``) against the lifecycle it replaced (``Relay.passthrough`` of the commit before it), in process, with
no sockets: the scheduler, the relay's ``open`` and the runner's response are in-memory stand-ins, so what is timed
is metering, lease, status check, SSE checking/metering, error classification and the end record (and, for the
Ollama figures, the translation of each event to NDJSON: 1000 events one per read, or 20 per read).

Run it on this checkout and on the older one (``--compare DIR``: a checkout of the commit before, its plugins
importable the same way) — the two run as subprocesses, alternating round by round so that both see the same load.

Run: ``.venv/bin/python bench/bench_request.py [--compare /path/to/old/checkout] [--rounds 7]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EVENT = (b'data: {"choices":[{"finish_reason":null,"index":0,"delta":{"content":" tok"}}],"created":1733100000,'
         b'"id":"chatcmpl-0123456789","model":"bench","system_fingerprint":"b1-abc","object":"chat.completion.chunk"}'
         b"\n\n")
LAST = (b'data: {"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1733100000,"id":"chatcmpl-0",'
        b'"model":"bench","object":"chat.completion.chunk","timings":{"prompt_n":5,"predicted_n":8,'
        b'"predicted_per_second":500.0,"prompt_ms":1.0,"predicted_ms":16.0}}\n\ndata: [DONE]\n\n')
REPLY = json.dumps({"id": "x", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "length",
                    "message": {"role": "assistant", "content": " t0 t1 t2 t3"}}],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
                    "timings": {"predicted_per_second": 500.0}}).encode()


# --- in-memory stand-ins -----------------------------------------------------------------------------------------


class Content:
    """aiohttp's StreamReader: ``iter_any()`` is an iterator object, not an async generator."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def iter_any(self) -> Any:
        return ChunkIterator(self.chunks)

    def at_eof(self) -> bool:
        return True

    def exception(self) -> None:
        return None


class ChunkIterator:
    def __init__(self, chunks: list[bytes]) -> None:
        self._it = iter(chunks)

    def __aiter__(self) -> ChunkIterator:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._it)
        except StopIteration:
            raise StopAsyncIteration from None


class FakeResponse:
    def __init__(self, chunks: list[bytes] | None, body: bytes = b"") -> None:
        self.status = 200
        self.content_type = "text/event-stream" if chunks is not None else "application/json"
        self.headers = {"Content-Type": self.content_type}
        self.content = Content(chunks or [])
        self._body = body

    async def read(self) -> bytes:
        return self._body

    def release(self) -> None:
        pass

    def close(self) -> None:
        pass


class Lease:
    queue_wait = 0.0
    load_seconds = 0.0

    def release(self) -> None:
        pass


class Scheduler:
    entries: dict[str, Any] = {}  # no model is loading: no loading progress

    async def acquire(self, name: str, ttl: Any = None, load_params: Any = None) -> Lease:
        return Lease()


class Host:
    def __init__(self) -> None:
        self.scheduler = Scheduler()
        self.events = 0
        self.relay: Any = None
        self.response: Any = None

    def emit(self, event: Any) -> None:
        self.events += 1

    def meter(self, surface: str, endpoint: str, model: str, stream: bool = False) -> Any:  # the commit before
        from llama_host.proxy import RequestMeter

        return RequestMeter(self, surface, endpoint, model, stream)  # type: ignore[arg-type]


async def consume(response: Any) -> int:
    iterator = getattr(response, "iterator", None)
    if iterator is None:
        return len(response.content)
    n = 0
    async for chunk in iterator:
        n += len(chunk)
    return n


def make_call(stream_chunks: list[bytes] | None):
    """A coroutine factory: one request through the lifecycle of the llama_host importable here."""
    from llama_host.proxy import Upstream

    host = Host()

    async def open_(lease, method, path, **kw):
        return Upstream(FakeResponse(stream_chunks, REPLY) if stream_chunks is not None else FakeResponse(None, REPLY),
                        "bench")

    try:
        from llama_host.request import run
        from llama_host_openai_api import Passthrough

        class Relay:
            open = staticmethod(open_)

        host.relay = Relay()

        async def call() -> int:
            ex = Passthrough("bench", "chat", "/v1/chat/completions", b"{}", stream=stream_chunks is not None)
            return await consume(await run(host, ex))
    except ImportError:  # the commit before: Relay.passthrough
        from llama_host.proxy import Relay as OldRelay

        relay = OldRelay(host)  # type: ignore[arg-type]
        relay.open = open_  # type: ignore[method-assign]

        async def call() -> int:
            response = await relay.passthrough(None, surface="openai_api", endpoint="chat", path="/v1/chat/completions",
                                               body=b"{}", model_name="bench", stream=stream_chunks is not None)
            return await consume(response)

    return call


def make_ollama_call(stream_chunks: list[bytes]):
    """One Ollama ``/api/chat`` stream through the lifecycle: every event parsed and translated to NDJSON."""
    from llama_host.proxy import Upstream
    from llama_host.types import ModelSpec
    from llama_host_ollama_api import controller as ctl
    from llama_host_ollama_api import translate as tr

    host = Host()

    async def open_(lease, method, path, **kw):
        return Upstream(FakeResponse(stream_chunks, REPLY), "bench")

    class Relay:
        open = staticmethod(open_)

    host.relay = Relay()
    spec = ModelSpec(name="bench", runtime="remote")
    body = {"model": "bench", "messages": [], "stream": True}

    async def call() -> int:
        response = await ctl._complete(host, spec, "bench", "chat", "/v1/chat/completions", body, None, {},
                                       time.monotonic_ns(), stream_type=tr.ChatStream, reply=tr.chat_reply)
        return await consume(response)

    return call


def measure(n: int) -> dict[str, float]:
    """µs of CPU per request: non-streamed, a short stream (one chunk), a long stream (1000 chunks)."""
    out = {}
    loop = asyncio.new_event_loop()
    for name, chunks, count in (("plain", None, n), ("stream_1", [EVENT * 8 + LAST], n),
                                ("stream_1000", [EVENT] * 1000 + [LAST], max(1, n // 200)),
                                ("ollama_1000", [EVENT] * 1000 + [LAST], max(1, n // 200)),
                                ("ollama_1000x20", [EVENT * 20] * 50 + [LAST], max(1, n // 200))):
        call = make_ollama_call(chunks) if name.startswith("ollama") else make_call(chunks)
        for _ in range(min(200, count)):
            loop.run_until_complete(call())

        async def many() -> None:
            for _ in range(count):
                await call()

        t0 = time.process_time()
        loop.run_until_complete(many())
        out[name] = (time.process_time() - t0) / count * 1e6
    loop.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("-n", type=int, default=20000, help="requests per figure and round")
    p.add_argument("--compare", type=Path, help="a checkout of the commit before (its .venv/bin/python is used)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(measure(args.n)))
        return 0
    sides = {"this": (sys.executable, Path(__file__).resolve())}
    if args.compare:
        sides["before"] = (str(args.compare / ".venv" / "bin" / "python"), args.compare / "bench" / "bench_request.py")
        if not sides["before"][1].exists():
            sides["before"] = (sides["before"][0], Path(__file__).resolve())
    results: dict[str, list[dict[str, float]]] = {k: [] for k in sides}
    for r in range(args.rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for side in order:
            python, script = sides[side]
            env = {**os.environ, "PYTHONPATH": ""}
            cwd = args.compare if side == "before" else Path(__file__).resolve().parents[1]
            res = subprocess.run([python, str(Path(__file__).resolve()), "--child", "-n", str(args.n)],
                                 capture_output=True, text=True, env=env, cwd=cwd, check=True)
            results[side].append(json.loads(res.stdout))
    print(f"{args.rounds} rounds, {args.n} requests per figure, CPU µs per request (median):")
    for name in ("plain", "stream_1", "stream_1000", "ollama_1000", "ollama_1000x20"):
        line = f"  {name:12}"
        meds = {}
        for side in sides:
            meds[side] = statistics.median(x[name] for x in results[side])
            line += f"  {side} {meds[side]:9.1f}"
        if "before" in meds:
            line += f"  added {meds['this'] - meds['before']:+8.1f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
