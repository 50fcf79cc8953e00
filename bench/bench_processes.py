"""What several host processes could give at most: ``--processes`` independent hosts (each a ``remote`` model to the
socket-speed fake, so no scheduler state needs sharing: the best case for the option), the client's connections split
evenly over them, against one host and against the fake directly, in rounds whose order rotates.

The issue asks to measure "several processes sharing the listening sockets" before choosing it; sharing the
scheduler's state (``max_loaded``, the queue, leases, one runner per model) would cost more than this, never less.
Run: ``.venv/bin/python bench/bench_processes.py [--processes 2] [--rounds 8] [-n 6000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_relay import CORE_PLUGINS, MODEL, measure, start_upstream  # noqa: E402
from bench_relay import parse_args as relay_defaults  # noqa: E402
from common import HostProcess, chat_body, machine_line, median, plugin_flags, stop_process, workdir  # noqa: E402


async def main_async(args: argparse.Namespace) -> int:
    print(machine_line())
    with workdir() as tmp, contextlib.ExitStack() as stack:
        upstream, upstream_url = start_upstream(relay_defaults(["--runtime", "remote"]), tmp)
        assert upstream is not None and upstream_url is not None
        stack.callback(stop_process, upstream)
        urls = []
        for i in range(args.processes):
            site = {"scheduler": {"max_loaded": 1, "ttl": 0}, "plugins": plugin_flags(CORE_PLUGINS, metrics=True),
                    "models": {MODEL: {"runtime": "remote", "url": upstream_url}}}
            (tmp / f"host{i}").mkdir()
            urls.append(stack.enter_context(HostProcess(site, tmp / f"host{i}")).url + "/v1/chat/completions")
        body, c, n = chat_body(MODEL, max_tokens=1), args.concurrency, args.n
        direct = upstream_url + "/v1/chat/completions"
        for url in (direct, *urls):
            await measure(url, body, 4 * c, c, stream=False, warmup=c)
        sides = {"direct": [direct], "one host": urls[:1], f"{args.processes} hosts": urls}
        rates: dict[str, list[float]] = {side: [] for side in sides}
        for i in range(args.rounds):
            order = list(sides)[i % len(sides):] + list(sides)[:i % len(sides)]
            for side in order:
                targets = sides[side]
                started = time.perf_counter()
                runs = await asyncio.gather(*(measure(url, body, n // len(targets), c // len(targets), stream=False,
                                                      warmup=0) for url in targets))
                if any(run.errors for run in runs):
                    raise SystemExit(f"{side}: requests failed")
                rates[side].append(n // len(targets) * len(targets) / (time.perf_counter() - started))
            print(f"round {i + 1}: " + " | ".join(f"{side} {rates[side][-1]:,.0f}/s" for side in sides), flush=True)
    print(f"\n== non-streaming at concurrency {c}, {n} requests per run: × direct per round, then the median ==")
    for side in list(sides)[1:]:
        ratios = [r / d for r, d in zip(rates[side], rates["direct"], strict=True)]
        print(f"{side}: " + " / ".join(f"{r:.2f}" for r in ratios) + f" (median {median(ratios):.2f})")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("-n", type=int, default=6000, help="requests per run (split evenly over the hosts)")
    p.add_argument("--concurrency", type=int, default=32)
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
