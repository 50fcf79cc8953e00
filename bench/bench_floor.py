"""The floor under the host's CPU per relayed request: the same relay with none of the host's work, on this machine.

Two bare relays, each in its own process, forward ``POST`` bodies to ``bench/fake_upstream.py`` through the host's own
runner client (``llama_host.http1``) and answer with the runner's bytes — no routing, keys, browser check, validation,
scheduler, metering:

- ``uvicorn``: uvicorn (httptools, as the host runs it) and a bare ASGI function;
- ``raw``: an ``asyncio.Protocol`` parsing the requests with httptools itself (keep-alive, nothing else).

Each runs on asyncio and on uvloop. Rounds rotate the order; each run is non-streaming chat at ``--concurrency`` and
reports requests/s against the fake directly and the relay's CPU per request. The host's own figure is
``bench_ab.py``'s; the difference is what the host's own work costs (bench/README.md, "The runner hop").

Run: ``.venv/bin/python bench/bench_floor.py`` (``--rounds``, ``-n``, ``--concurrency``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_relay import MODEL, measure, start_upstream  # noqa: E402
from bench_relay import parse_args as relay_defaults  # noqa: E402
from common import chat_body, free_port, machine_line, median, stop_process, wait_http, workdir  # noqa: E402

VARIANTS = ("uvicorn-asyncio", "uvicorn-uvloop", "raw-asyncio", "raw-uvloop")


class Cpu:
    """What ``measure`` reads of a host: its CPU seconds."""

    def __init__(self, pid: int) -> None:
        self._p = psutil.Process(pid)

    def cpu_seconds(self) -> float:
        t = self._p.cpu_times()
        return t.user + t.system


def serve(kind: str, loop: str, upstream: str, port: int) -> None:
    """The relay process (``--serve``): forwards every request's method, path and body, answers with the runner's
    status and body."""
    import httptools

    from llama_host import http1

    pool = http1.Pool()
    json_headers = {"Content-Type": "application/json"}

    async def relay(method: str, path: str, body: bytes) -> tuple[int, bytes]:
        r = await pool.request(method, upstream, path, body, json_headers)
        data = await r.read()
        r.close()
        return r.status, data

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] != "lifespan.shutdown":
                await send({"type": message["type"] + ".complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        parts = []
        while True:
            message = await receive()
            parts.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        status, data = await relay(scope["method"], scope["path"], b"".join(parts))
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(data))]})
        await send({"type": "http.response.body", "body": data})

    class Raw(asyncio.Protocol):
        def connection_made(self, transport):  # type: ignore[no-untyped-def]
            self.transport, self.parser, self.parts, self.url = transport, httptools.HttpRequestParser(self), [], b""

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def on_url(self, url: bytes) -> None:
            self.url = url

        def on_body(self, body: bytes) -> None:
            self.parts.append(body)

        def on_message_complete(self) -> None:
            body, self.parts = b"".join(self.parts), []
            method = self.parser.get_method().decode()
            asyncio.get_running_loop().create_task(self.answer(method, self.url.decode(), body))

        async def answer(self, method: str, path: str, body: bytes) -> None:
            status, data = await relay(method, path, body)
            self.transport.write(b"HTTP/1.1 %d OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
                                 % (status, len(data)) + data)

    if kind == "uvicorn":
        import uvicorn

        uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop=loop, log_level="warning",
                    access_log=False)
        return

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Raw, "127.0.0.1", port)
        await server.serve_forever()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


def start_relay(kind: str, loop: str, upstream: str, stack: contextlib.ExitStack) -> tuple[str, Cpu]:
    """One bare relay process (stopped with ``stack``): its URL and its CPU meter."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, loop, upstream, str(port)],
                            start_new_session=True)
    stack.callback(stop_process, proc)
    wait_http(f"http://127.0.0.1:{port}/health", 30, proc)  # relayed to the fake's /health
    return f"http://127.0.0.1:{port}", Cpu(proc.pid)


async def main_async(args: argparse.Namespace) -> int:
    print(machine_line())
    with workdir(False) as tmp, contextlib.ExitStack() as stack:
        upstream, url = start_upstream(relay_defaults(["--runtime", "remote"]), tmp)
        assert upstream is not None and url is not None
        stack.callback(stop_process, upstream)
        relays: dict[str, tuple[str, Cpu]] = {}
        for variant in VARIANTS:
            kind, loop = variant.split("-")
            relays[variant] = start_relay(kind, loop, url, stack)
        body = chat_body(MODEL, max_tokens=1)
        sides = ["direct", *relays]
        for side in sides:
            await measure((url if side == "direct" else relays[side][0]) + "/v1/chat/completions", body,
                          4 * args.concurrency, args.concurrency, stream=False, warmup=args.concurrency)
        results: dict[str, list[tuple[float, float | None]]] = {side: [] for side in sides}
        for i in range(args.rounds):
            order = sides[i % len(sides):] + sides[:i % len(sides)]
            line = []
            for side in order:
                target, cpu = (url, None) if side == "direct" else relays[side]
                run = await measure(target + "/v1/chat/completions", body, args.n, args.concurrency, stream=False,
                                    warmup=0, host=cpu)  # type: ignore[arg-type]
                if run.errors:
                    raise SystemExit(f"{side}: {run.errors} requests failed")
                per = run.cpu / len(run.latencies) * 1e6 if run.cpu is not None else None
                results[side].append((run.rps, per))
                line.append(f"{side} {run.rps:,.0f}/s" + (f" {per:.0f}us" if per is not None else ""))
            print(f"round {i + 1}: " + " | ".join(line), flush=True)
        print("\n== summary: median over the rounds ==")
        direct = [r for r, _ in results["direct"]]
        for side in relays:
            ratios = [r / d for (r, _), d in zip(results[side], direct, strict=True)]
            cpus = [c for _, c in results[side] if c is not None]
            print(f"{side}: {median([r for r, _ in results[side]]):,.0f} req/s, {median(ratios):.2f}x direct "
                  f"(runs {min(ratios):.2f}-{max(ratios):.2f}); CPU per request {median(cpus):.0f} us "
                  f"(runs {min(cpus):.0f}-{max(cpus):.0f})")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("-n", type=int, default=3000, help="non-streaming requests per run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--serve", nargs=4, metavar=("KIND", "LOOP", "UPSTREAM", "PORT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.serve:
        kind, loop, upstream_url, relay_port = arguments.serve
        serve(kind, loop, upstream_url, int(relay_port))
    else:
        sys.exit(asyncio.run(main_async(arguments)))
