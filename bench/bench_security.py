"""What the browser check costs per request: the middleware around a do-nothing ASGI app, driven directly (no
sockets), with the headers an SDK, a browser on the dashboard and a foreign page send.

Run: .venv/bin/python bench/bench_security.py [--n 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import time

from llama_host.errors import HostError
from llama_host.security import BrowserPolicy, browser_guard

SDK = [(b"host", b"127.0.0.1:8000"), (b"accept-encoding", b"gzip, deflate"), (b"connection", b"keep-alive"),
       (b"accept", b"application/json"), (b"content-type", b"application/json"), (b"user-agent", b"OpenAI/Python 1.99"),
       (b"x-stainless-lang", b"python"), (b"x-stainless-package-version", b"1.99.0"), (b"x-stainless-os", b"Linux"),
       (b"x-stainless-arch", b"x64"), (b"x-stainless-runtime", b"CPython"), (b"authorization", b"Bearer k"),
       (b"content-length", b"120")]
BROWSER = [*SDK, (b"origin", b"http://127.0.0.1:8000"), (b"sec-fetch-site", b"same-origin"),
           (b"sec-fetch-mode", b"cors"), (b"referer", b"http://127.0.0.1:8000/ui/")]
FOREIGN = [*SDK, (b"origin", b"http://evil.example"), (b"sec-fetch-site", b"cross-site")]


async def bench(headers: list[tuple[bytes, bytes]], n: int, guarded: bool) -> float:
    async def app(scope, receive, send):
        return None

    policy = BrowserPolicy("127.0.0.1")
    handler = browser_guard(policy)(app) if guarded else app
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers}

    async def noop(*_):
        return None

    started = time.perf_counter()
    for _ in range(n):
        try:
            await handler(scope, noop, noop)
        except HostError:
            pass
    return (time.perf_counter() - started) / n * 1e6


async def main(n: int) -> None:
    print(f"{'request':<28}{'bare µs':>10}{'guarded µs':>12}{'added µs':>10}")
    for name, headers in (("SDK (no Origin)", SDK), ("dashboard (own origin)", BROWSER), ("foreign page (403)", FOREIGN)):
        bare = min([await bench(headers, n, False) for _ in range(3)])
        guarded = min([await bench(headers, n, True) for _ in range(3)])
        print(f"{name:<28}{bare:>10.2f}{guarded:>12.2f}{guarded - bare:>10.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=200_000)
    asyncio.run(main(parser.parse_args().n))
