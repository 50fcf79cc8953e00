"""Translation cost of each translated dialect route against the chat passthrough, in one run.

The upstream is ``bench/fake_upstream.py`` (answers as fast as the socket allows) served as a ``remote`` model, so
the host's own work is what is measured: the same chat request goes through

- ``/v1/chat/completions`` (the passthrough: the runner's bytes relayed unchanged, the baseline),
- ``/v1/responses`` (OpenAI Responses: request and every chunk translated),
- ``/v1/messages`` (Anthropic Messages: request and every chunk translated).

Figures per route (rounds alternate the route order): host CPU per non-streamed request (µs, concurrency 4), and for
streams of ``--stream-events`` chunks: upstream chunks per second and host CPU per chunk (µs); each against the
passthrough. llama-host runs as the real ``llama-host serve`` command in its own process.

Run: ``.venv/bin/python bench/bench_dialects.py`` (``--help`` for counts).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    HostProcess,
    free_port,
    host_python_info,
    machine_line,
    median,
    plugin_flags,
    stop_process,
    wait_http,
    workdir,
)

MODEL = "bench"
PLUGINS = ("openai_api", "anthropic_api", "remote_runtime")
ROUTES = ("chat", "responses", "messages")


def body(route: str, *, stream: bool, tokens: int) -> tuple[str, bytes]:
    msg = [{"role": "user", "content": "Hi"}]
    if route == "chat":
        return "/v1/chat/completions", json.dumps({"model": MODEL, "messages": msg, "max_tokens": tokens,
                                                   "stream": stream}).encode()
    if route == "responses":
        return "/v1/responses", json.dumps({"model": MODEL, "input": "Hi", "max_output_tokens": tokens,
                                            "stream": stream, "store": False}).encode()
    return "/v1/messages", json.dumps({"model": MODEL, "messages": msg, "max_tokens": tokens,
                                       "stream": stream}).encode()


async def _requests(session: aiohttp.ClientSession, url: str, data: bytes, todo: list[int], errors: list[int]) -> None:
    while todo:
        todo.pop()
        async with session.post(url, data=data, headers={"Content-Type": "application/json"}) as r:
            await r.read()
            if r.status != 200:
                errors.append(r.status)


async def batch(host: HostProcess, route: str, n: int, concurrency: int, *, stream: bool, tokens: int) -> dict:
    path, data = body(route, stream=stream, tokens=tokens)
    errors: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        warm = list(range(max(10, concurrency)))
        await asyncio.gather(*(_requests(session, host.url + path, data, warm, errors) for _ in range(concurrency)))
        todo = list(range(n))
        cpu0 = host.cpu_seconds()
        t0 = time.perf_counter()
        await asyncio.gather(*(_requests(session, host.url + path, data, todo, errors) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        cpu = host.cpu_seconds() - cpu0
    if errors:
        raise SystemExit(f"{route}: {len(errors)} requests failed (status {errors[0]})")
    return {"wall": wall, "cpu": cpu, "n": n, "chunks": n * tokens if stream else 0}


async def one_round(i: int, host: HostProcess, args: argparse.Namespace) -> dict[str, dict[str, dict]]:
    order = ROUTES if i % 2 == 0 else tuple(reversed(ROUTES))
    out: dict[str, dict[str, dict]] = {}
    for route in order:
        out[route] = {
            "plain": await batch(host, route, args.n, args.concurrency, stream=False, tokens=1),
            "stream": await batch(host, route, args.streams, 1, stream=True, tokens=args.stream_events),
        }
    return out


def report(rounds: list[dict[str, dict[str, dict]]]) -> None:
    def per_request(r: dict) -> float:
        return r["cpu"] / r["n"] * 1e6

    def per_chunk(r: dict) -> float:
        return r["cpu"] / r["chunks"] * 1e6

    def rate(r: dict) -> float:
        return r["chunks"] / r["wall"]

    base_req = median(per_request(x["chat"]["plain"]) for x in rounds)
    base_chunk = median(per_chunk(x["chat"]["stream"]) for x in rounds)
    base_rate = median(rate(x["chat"]["stream"]) for x in rounds)
    print(f"{'route':<12} {'CPU/request':>12} {'added':>9} {'chunks/s':>10} {'vs chat':>8} {'CPU/chunk':>10} {'added':>8}")
    for route in ROUTES:
        req = median(per_request(x[route]["plain"]) for x in rounds)
        chunk = median(per_chunk(x[route]["stream"]) for x in rounds)
        r = median(rate(x[route]["stream"]) for x in rounds)
        print(f"{route:<12} {req:>9.0f} µs {req - base_req:>+6.0f} µs {r:>10.0f} {r / base_rate:>7.2f}x "
              f"{chunk:>7.1f} µs {chunk - base_chunk:>+5.1f} µs")


async def main_async(args: argparse.Namespace) -> int:
    print(machine_line())
    print(f"host: {host_python_info(None)}; fake upstream as fast as the socket allows; metrics plugin "
          f"{'on' if args.metrics else 'off'}; {args.rounds} rounds, medians")
    with workdir(args.keep) as tmp:
        port = free_port()
        upstream = subprocess.Popen([sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--port", str(port),
                                     "--model", MODEL], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=(tmp / "upstream.log").open("wb"), start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{port}/health", 60, upstream)
            site = {"scheduler": {"max_loaded": 1, "ttl": 0},
                    "plugins": plugin_flags(PLUGINS, metrics=args.metrics),
                    "models": {MODEL: {"runtime": "remote", "url": f"http://127.0.0.1:{port}"}}}
            with HostProcess(site, tmp) as host:
                rounds = []
                for i in range(args.rounds):
                    rounds.append(await one_round(i, host, args))
                    print(f"round {i + 1}/{args.rounds} done")
                report(rounds)
        finally:
            stop_process(upstream)
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n", type=int, default=1500, help="non-streamed requests per route and round")
    p.add_argument("--concurrency", type=int, default=4)
    p.add_argument("--streams", type=int, default=20, help="streams per route and round")
    p.add_argument("--stream-events", type=int, default=1000, help="content chunks per stream")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--keep", action="store_true", help="keep the work folder (site file, host log)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
