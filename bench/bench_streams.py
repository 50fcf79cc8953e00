"""Many requests held open at once: host RSS per open stream, and per request queued for a model that loads.

``--mode streams``: ``bench/fake_upstream.py`` paced slowly (``--gap-ms`` between events, ``--events`` per stream) is
the host's remote model; ``N`` streaming chat requests are opened together (from ``--clients`` processes, each an
aiohttp client with its own connections) and held until they complete. Each stream is two sockets in the host (client
and runner side). Figures per ``N``: host RSS idle (after a warm-up), RSS once every stream has its first event, peak,
the difference per stream, and how many completed with every event.

``--mode queue``: the model is started by the host (command runtime) and takes ``--start-delay`` seconds to listen; a
burst of ``N`` non-streaming requests waits for it (``scheduler.max_queue`` is raised above ``N`` unless
``--max-queue`` is given). Figures: RSS per queued request, and the statuses (200 / 503).

``--tracemalloc``: the host runs under ``bench/host_tracemalloc.py`` and the top allocation sites of the difference
(idle → all open) are printed, per stream. The file descriptor limit is raised to the hard limit
(``resource.setrlimit``); the host and upstream inherit it.

Run: ``.venv/bin/python bench/bench_streams.py --streams 1000,3000,8000``; ``--mode queue --streams 1000,4000``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import resource
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    HostProcess,
    PeakRSS,
    chat_body,
    free_port,
    host_python_info,
    machine_line,
    plugin_flags,
    stop_process,
    wait_http,
    workdir,
)

MODEL = "bench"
PLUGINS = ("openai_api", "remote_runtime", "command_runtime")


# --- the client processes -----------------------------------------------------------------------------------------

async def client_main(url: str, n: int, stream: bool, events: int) -> None:
    """``n`` requests at once; prints ``open`` once each has its first byte, then ``done`` with the counts."""
    import aiohttp

    body = chat_body(MODEL, stream=stream, max_tokens=events)
    opened = 0
    statuses: dict[int, int] = {}
    complete = errors = 0
    all_open = asyncio.Event()

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal opened, complete, errors
        try:
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                statuses[r.status] = statuses.get(r.status, 0) + 1
                got = b""
                first = True
                async for chunk in r.content.iter_any():
                    if first:
                        first = False
                        opened += 1
                        if opened == n:
                            all_open.set()
                    got = (got + chunk)[-64:]
                if first:
                    opened += 1
                    if opened == n:
                        all_open.set()
                if r.status == 200 and (not stream or got.rstrip().endswith(b"data: [DONE]")):
                    complete += 1
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
            errors += 1
            opened += 1
            if opened == n:
                all_open.set()

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        tasks = [asyncio.create_task(one(session)) for _ in range(n)]
        waiter = asyncio.create_task(all_open.wait())
        await asyncio.wait({waiter, asyncio.gather(*tasks)}, return_when=asyncio.FIRST_COMPLETED)
        print(json.dumps({"open": opened}), flush=True)
        await asyncio.gather(*tasks)
    print(json.dumps({"done": True, "complete": complete, "errors": errors,
                      "statuses": {str(k): v for k, v in statuses.items()}}), flush=True)


# --- the run ------------------------------------------------------------------------------------------------------

def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class TracedHost(HostProcess):
    """The host under bench/host_tracemalloc.py (SIGUSR1: a snapshot)."""

    def start(self, timeout: float = 60.0) -> HostProcess:
        import subprocess

        import psutil

        self._stderr = self.stderr_path.open("wb")
        env = {**os.environ, **self.env, "LLAMA_HOST_TRACEMALLOC_DIR": str(self.workdir)}
        self.proc = subprocess.Popen([sys.executable, str(BENCH_DIR / "host_tracemalloc.py"), "serve", "--config",
                                      str(self.config)], stdin=subprocess.DEVNULL, stdout=self._stderr,
                                     stderr=subprocess.STDOUT, cwd=str(self.workdir), env=env,
                                     start_new_session=True)
        self._ps = psutil.Process(self.proc.pid)
        wait_http(self.url + "/api/v1/health", timeout, self.proc)
        return self

    def snapshot(self) -> Path:
        before = set(self.workdir.glob("snapshot-*.pickle"))
        assert self.proc is not None
        self.proc.send_signal(signal.SIGUSR1)
        for _ in range(600):
            new = set(self.workdir.glob("snapshot-*.pickle")) - before
            if new:
                path = new.pop()
                size = -1
                while size != path.stat().st_size:  # written in one go; wait until it stops growing
                    size = path.stat().st_size
                    time.sleep(0.5)
                return path
            time.sleep(0.1)
        raise RuntimeError("no tracemalloc snapshot")


def top_diff(a: Path, b: Path, n: int, per: int) -> None:
    import tracemalloc

    with a.open("rb") as fa, b.open("rb") as fb:
        first, second = pickle.load(fa), pickle.load(fb)
    assert isinstance(first, tracemalloc.Snapshot) and isinstance(second, tracemalloc.Snapshot)
    stats = second.compare_to(first, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"  tracemalloc: {total / 2**20:.1f} MiB more Python memory ({total / per / 1024:.1f} KiB per request); "
          f"top sites (bytes per request, blocks per request):")
    for s in stats[:n]:
        frame = s.traceback[0]
        where = f"{frame.filename.split('site-packages/')[-1].split('/wt/perf/')[-1]}:{frame.lineno}"
        print(f"    {s.size_diff / per:8.0f} B  {s.count_diff / per:5.1f}  {where}")


async def run_one(args: argparse.Namespace, n: int, tmp: Path) -> dict:
    upstream = None
    port = free_port()
    gap_us = args.gap_ms * 1000
    fake = [sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--model", MODEL, "--event-gap-us", str(gap_us)]
    if args.mode == "streams":
        import subprocess

        upstream = subprocess.Popen([*fake, "--port", str(port)], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=(tmp / "upstream.log").open("wb"),
                                    start_new_session=True)
        wait_http(f"http://127.0.0.1:{port}/health", 30, upstream)
        model = {"runtime": "remote", "url": f"http://127.0.0.1:{port}"}
    else:
        model = {"runtime": "command", "cmd": [*fake, "--port", "${PORT}", "--start-delay", str(args.start_delay)]}
    scheduler = {"max_loaded": 1, "ttl": 0, "startup_timeout": args.start_delay + 60}
    if args.max_queue is not None:
        scheduler["max_queue"] = args.max_queue
    elif args.mode == "queue":
        scheduler["max_queue"] = n + 10
    site = {"scheduler": scheduler, "plugins": plugin_flags(PLUGINS, metrics=args.metrics),
            "models": {MODEL: model}, "event_loop": args.event_loop}
    (tmp / str(n)).mkdir()
    cls = TracedHost if args.tracemalloc else HostProcess
    env = {"PORT": "${PORT}"}
    try:
        with cls(site, tmp / str(n), None, env) as host:
            url = host.url + "/v1/chat/completions"
            if args.mode == "streams":  # warm: one short stream
                await asyncio.to_thread(_warm, url)
            time.sleep(1.0)
            idle = host.rss()
            snap0 = host.snapshot() if isinstance(host, TracedHost) else None
            clients = []
            share = [n // args.clients + (1 if i < n % args.clients else 0) for i in range(args.clients)]
            t0 = time.perf_counter()
            with PeakRSS(host.pid, 0.1) as peak:
                for k in share:
                    clients.append(await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "--client", url, "--client-n", str(k), "--mode", args.mode,
                        "--events", str(args.events), stdout=asyncio.subprocess.PIPE))
                opened = 0
                for c in clients:
                    assert c.stdout is not None
                    opened += json.loads(await c.stdout.readline())["open"]
                t_open = time.perf_counter() - t0
                if args.mode == "queue":
                    await asyncio.sleep(0.5)
                open_rss = host.rss()
                snap1 = host.snapshot() if isinstance(host, TracedHost) else None
                results = []
                for c in clients:
                    assert c.stdout is not None
                    results.append(json.loads(await c.stdout.readline()))
                    await c.wait()
            wall = time.perf_counter() - t0
            statuses: dict[str, int] = {}
            for r in results:
                for k, v in r["statuses"].items():
                    statuses[k] = statuses.get(k, 0) + v
            out = {"n": n, "idle": idle, "open": open_rss, "peak": peak.peak, "opened": opened, "t_open": t_open,
                   "wall": wall, "complete": sum(r["complete"] for r in results),
                   "errors": sum(r["errors"] for r in results), "statuses": statuses}
            if snap0 is not None and snap1 is not None:
                top_diff(snap0, snap1, args.top, n)
            return out
    finally:
        if upstream is not None:
            stop_process(upstream)


def _warm(url: str) -> None:
    import urllib.request

    req = urllib.request.Request(url, data=chat_body(MODEL, stream=True, max_tokens=2),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        r.read()


async def main_async(args: argparse.Namespace) -> int:
    hard = raise_fd_limit()
    print(machine_line())
    print(f"host: {host_python_info()}; event_loop {args.event_loop}; fd limit {hard}; mode {args.mode}; "
          f"{args.clients} client processes; " + (f"{args.events} events per stream, one per {args.gap_ms:g} ms"
                                                    if args.mode == "streams" else
                                                    f"model start delay {args.start_delay:g} s"))
    ok = True
    with workdir(args.keep) as tmp:
        for n in args.streams:
            r = await run_one(args, n, tmp)
            per = (r["open"] - r["idle"]) / n
            what = "stream" if args.mode == "streams" else "queued request"
            print(f"N={n}: RSS idle {r['idle'] / 2**20:.1f} MB, all open {r['open'] / 2**20:.1f} MB "
                  f"(+{per / 1024:.1f} KB per {what}), peak {r['peak'] / 2**20:.1f} MB; all open after "
                  f"{r['t_open']:.1f} s, done after {r['wall']:.1f} s; complete {r['complete']}/{n}, errors "
                  f"{r['errors']}, statuses {r['statuses']}", flush=True)
            ok &= r["complete"] == n
    return 0 if ok else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--mode", choices=["streams", "queue"], default="streams")
    p.add_argument("--streams", default="1000,3000,8000", help="comma-separated counts of requests held at once")
    p.add_argument("--clients", type=int, default=4, help="client processes")
    p.add_argument("--events", type=int, default=40, help="events per stream")
    p.add_argument("--gap-ms", type=float, default=1000.0, help="ms between two events of a stream")
    p.add_argument("--start-delay", type=float, default=8.0, help="queue mode: seconds the model takes to listen")
    p.add_argument("--max-queue", type=int, help="queue mode: scheduler.max_queue (default: above N)")
    p.add_argument("--event-loop", default="auto", choices=["auto", "uvloop", "asyncio"])
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--tracemalloc", action="store_true", help="run the host under tracemalloc and diff")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--keep", action="store_true")
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--client-n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.streams = [int(x) for x in args.streams.split(",")]
    return args


if __name__ == "__main__":
    a = parse_args()
    if a.client:
        raise_fd_limit()
        asyncio.run(client_main(a.client, a.client_n, a.mode == "streams", a.events))
    else:
        sys.exit(asyncio.run(main_async(a)))
