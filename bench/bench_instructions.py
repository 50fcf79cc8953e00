"""Instructions the host executes per relayed request, counted by callgrind: an A/B that the shared machine's noise
cannot move.

CPU seconds per request (bench_ab.py) vary by ±15% run to run on a shared 2-core VM, more than most single changes to
the hot path save. ``valgrind --tool=callgrind`` counts the host's user-space instructions instead: the same code and
workload give the same count to a few tenths of a percent, whatever else the machine does. Each variant's host runs
under callgrind with counting off; after a warm-up, counting is switched on (``callgrind_control -i on``) for exactly
``-n`` requests at ``--concurrency`` against ``bench/fake_upstream.py`` (a remote model), then off, and the count is
dumped. What it leaves out: the kernel's work (system calls: ~4 per relayed request) and the cost of each
instruction (cache misses); what it changes: valgrind runs the host ~50x slower and its threads one at a time, so more
requests wait per turn of the event loop than at full speed. It ranks variants; CPU seconds (bench_ab.py) still say
what a request costs.

A variant is ``NAME`` or ``NAME:key=value,...`` as in bench_ab.py (site keys, ``pythonpath=DIR``, ``python=PATH``). Run:
``.venv/bin/python bench/bench_instructions.py --variant before:pythonpath=/work/wt/base --variant now``
(needs ``valgrind``: Debian's package).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ab import apply_overrides, parse_variant  # noqa: E402
from bench_relay import CORE_PLUGINS, MODEL, measure, start_upstream  # noqa: E402
from bench_relay import parse_args as relay_defaults  # noqa: E402
from common import HostProcess, chat_body, machine_line, plugin_flags, stop_process, workdir  # noqa: E402


def callgrind_total(out: Path) -> int:
    """The instruction total of callgrind's dump(s) at ``out``."""
    total = 0
    for dump in out.parent.glob(out.name + "*"):
        for line in dump.read_text(errors="replace").splitlines():
            if line.startswith(("summary:", "totals:")):
                total = max(total, int(line.split()[1]))
    return total


async def count(host: HostProcess, out: Path, url: str, body: bytes, n: int, concurrency: int, stream: bool) -> float:
    """Instructions per request (per event when ``stream``) over ``n`` requests."""
    await measure(url, body, 4 * concurrency, concurrency, stream=stream, warmup=concurrency)
    subprocess.run(["callgrind_control", "-i", "on", str(host.pid)], check=True, capture_output=True)
    run = await measure(url, body, n, concurrency, stream=stream, warmup=0)
    subprocess.run(["callgrind_control", "-i", "off", str(host.pid)], check=True, capture_output=True)
    subprocess.run(["callgrind_control", "-d", str(host.pid)], check=True, capture_output=True)
    if run.errors:
        raise SystemExit(f"{run.errors} requests failed")
    return callgrind_total(out) / (run.events if stream else n)


async def main_async(args: argparse.Namespace) -> int:
    if not shutil.which("valgrind"):
        raise SystemExit("bench_instructions: needs valgrind (apt-get install valgrind)")
    print(machine_line())
    print(subprocess.run(["valgrind", "--version"], capture_output=True, text=True).stdout.strip())
    workload = (chat_body(MODEL, stream=True, max_tokens=args.stream_events) if args.stream
                else chat_body(MODEL, max_tokens=1))
    unit = "event" if args.stream else "request"
    with workdir(args.keep) as tmp, contextlib.ExitStack() as stack:
        upstream, upstream_url = start_upstream(relay_defaults(["--runtime", "remote"]), tmp)
        assert upstream is not None and upstream_url is not None
        stack.callback(stop_process, upstream)
        counts: dict[str, list[float]] = {}
        for i in range(args.rounds):
            for text in args.variant if i % 2 == 0 else reversed(args.variant):
                name, overrides, pythonpath, python = parse_variant(text)
                folder = tmp / f"{name}-{i}"
                folder.mkdir()
                out = folder / "callgrind.out"
                site = {"scheduler": {"max_loaded": 1, "ttl": 0}, "plugins": plugin_flags(CORE_PLUGINS, metrics=True),
                        "models": {MODEL: {"runtime": "remote", "url": upstream_url}}}
                prefix = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
                with HostProcess(apply_overrides(site, overrides), folder, pythonpath, prefix=prefix,
                                 python=python) as host:
                    per = await count(host, out, host.url + "/v1/chat/completions", workload, args.n,
                                      args.concurrency, args.stream)
                counts.setdefault(name, []).append(per)
                print(f"round {i + 1} {name}: {per:,.0f} instructions per {unit}", flush=True)
    print(f"\n== instructions per {unit} ({'streams' if args.stream else 'requests'} at concurrency "
          f"{args.concurrency}, {args.n} per count) ==")
    first = min(counts[next(iter(counts))])
    for name, runs in counts.items():
        print(f"{name}: " + " / ".join(f"{r:,.0f}" for r in runs) + f" ({min(runs) / first:.3f}x the first)")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", action="append", required=True, help="NAME[:key=value,...] (repeat)")
    p.add_argument("--rounds", type=int, default=2, help="counts per variant (sides alternate)")
    p.add_argument("-n", type=int, default=2000, help="requests (streams with --stream) per count")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--stream", action="store_true", help="streamed chats; count per event")
    p.add_argument("--stream-events", type=int, default=200)
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
