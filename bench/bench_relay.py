"""Relay overhead: the same requests sent straight to an upstream and through llama-host, in one run.

The upstream is ``bench/fake_upstream.py`` (default: answers as fast as the socket allows, so the relay is what is
measured) or the real llama-server on a generated tiny model (``--upstream llama-server``). llama-host runs as the real
``llama-host serve`` command in its own process with a generated site file whose model ``bench`` points at that upstream
(``--runtime remote``, default: direct and relayed requests hit the same upstream process) or is started by the host
(``--runtime command`` for the fake, ``--runtime llama-server`` for the real server).

Figures, per round (rounds alternate which side goes first):
- non-streaming chat at concurrency 1 and 32: latency p50/p99 direct vs relayed, added latency, requests/s ratio;
- streaming chat: SSE events (chunks)/s ratio and added time to first byte;
- llama-host RSS (peak, sampled every 50 ms under that load) and host CPU time per request.

Targets (issue 4): added p50 ≤ 1 ms and p99 ≤ 3 ms at concurrency 1; streaming ≥ 0.9× direct; host RSS ≤ 100 MB.

Run: ``.venv/bin/python bench/bench_relay.py`` (``--help`` for counts, ``--no-metrics``, ``--upstream llama-server``).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    BENCH_DIR,
    HostProcess,
    PeakRSS,
    chat_body,
    free_port,
    host_python_info,
    keep_freed_memory,
    llama_server_argv,
    llama_server_binary,
    llama_server_params,
    machine_line,
    median,
    percentile,
    plugin_flags,
    stop_process,
    tiny_model,
    wait_http,
    workdir,
)

MODEL = "bench"
CORE_PLUGINS = ("openai_api", "remote_runtime", "command_runtime", "llama_server")
TARGETS = {"p50": 1.0, "p99": 3.0, "stream": 0.9, "rss_mb": 100.0}


#: a request that meets a keep-alive connection the server dropped is sent again, on the next pooled (or a new)
#: connection, up to this many times; the count is reported. llama-server (cpp-httplib) closes a kept connection
#: after a few requests or seconds, so a whole pool (up to the concurrency, 32) can be stale at once
RETRIES = 64


@dataclass
class Run:
    """One measured batch against one target."""

    latencies: list[float] = field(default_factory=list)
    ttfb: list[float] = field(default_factory=list)
    events: int = 0
    reads: int = 0  # body reads by the client (iter_any): events per read shows how the relay batches
    wall: float = 0.0
    errors: int = 0
    retries: int = 0  # stale keep-alive connections retried once (as the relay itself does)
    cpu: float | None = None  # host CPU seconds spent during the batch (relayed runs only)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    @property
    def eps(self) -> float:
        return self.events / self.wall if self.wall else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)


async def _nonstream_worker(session: aiohttp.ClientSession, url: str, body: bytes, todo: list[int], run: Run) -> None:
    headers = {"Content-Type": "application/json"}
    perf = time.perf_counter
    while todo:
        todo.pop()
        t0 = perf()
        for attempt in range(RETRIES + 1):
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if attempt == RETRIES:  # llama-server drops reused keep-alive connections now and then: retry
                    raise
                run.retries += 1
        run.latencies.append(perf() - t0)
        if not ok:
            run.errors += 1


async def _stream_worker(session: aiohttp.ClientSession, url: str, body: bytes, todo: list[int], run: Run) -> None:
    headers = {"Content-Type": "application/json"}
    perf = time.perf_counter
    while todo:
        todo.pop()
        t0 = perf()
        first = None
        events = 0
        last = b""
        for attempt in range(RETRIES + 1):
            try:
                r = await session.post(url, data=body, headers=headers)
                break
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                if attempt == RETRIES:
                    raise
                run.retries += 1
        async with r:
            if r.status != 200:
                run.errors += 1
            async for chunk in r.content.iter_any():
                run.reads += 1
                if first is None:
                    first = perf()
                events += chunk.count(b"\n\n") + (last == b"\n" and chunk[:1] == b"\n")
                last = chunk[-1:]
        run.latencies.append(perf() - t0)
        run.ttfb.append((first or perf()) - t0)
        run.events += events


async def measure(url: str, body: bytes, n: int, concurrency: int, *, stream: bool, warmup: int,
                  host: HostProcess | None = None) -> Run:
    keep_freed_memory()
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=60)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        worker = _stream_worker if stream else _nonstream_worker
        warm = Run()
        todo = list(range(max(warmup, concurrency)))
        await asyncio.gather(*(worker(session, url, body, todo, warm) for _ in range(concurrency)))
        run = Run()
        todo = list(range(n))
        cpu0 = host.cpu_seconds() if host else None
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session, url, body, todo, run) for _ in range(concurrency)))
        run.wall = time.perf_counter() - t0
        if host is not None and cpu0 is not None:
            run.cpu = host.cpu_seconds() - cpu0
        run.errors += warm.errors
        if run.retries:
            print(f"  ({run.retries} request(s) retried on a dropped keep-alive connection: {url})")
        return run


async def measure_alternating(direct_url: str, relay_url: str, body: bytes, n: int, *, stream: bool, warmup: int,
                              host: HostProcess) -> tuple[Run, Run]:
    """Concurrency 1, one request direct then one relayed, ``n`` times each: bursts of noise from other processes on
    the machine hit both sides alike. A side's wall time is the sum of its own request times."""
    keep_freed_memory()
    worker = _stream_worker if stream else _nonstream_worker
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as ds, \
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1), timeout=timeout) as rs:
        warm = Run()
        for _ in range(warmup):
            await worker(ds, direct_url, body, [0], warm)
            await worker(rs, relay_url, body, [0], warm)
        direct, relay = Run(), Run()
        cpu0 = host.cpu_seconds()  # the direct requests cost the host nothing: all its CPU here is the relay's
        for i in range(n):
            if i % 2:
                await worker(ds, direct_url, body, [0], direct)
            await worker(rs, relay_url, body, [0], relay)
            if not i % 2:
                await worker(ds, direct_url, body, [0], direct)
        relay.cpu = host.cpu_seconds() - cpu0
        direct.wall, relay.wall = sum(direct.latencies), sum(relay.latencies)
        direct.errors += warm.errors
        for run, url in ((direct, direct_url), (relay, relay_url)):
            if run.retries:
                print(f"  ({run.retries} request(s) retried on a dropped keep-alive connection: {url})")
        return direct, relay


@dataclass
class Round:
    c1: tuple[Run, Run]
    c32: tuple[Run, Run]
    stream: tuple[Run, Run]
    first_byte: tuple[Run, Run]
    rss_peak: int


def _pair(direct: Run, relay: Run) -> dict[str, float]:
    return {"d50": direct.p(50) * 1e3, "r50": relay.p(50) * 1e3, "d99": direct.p(99) * 1e3, "r99": relay.p(99) * 1e3,
            "add50": (relay.p(50) - direct.p(50)) * 1e3, "add99": (relay.p(99) - direct.p(99)) * 1e3,
            "rps_d": direct.rps, "rps_r": relay.rps, "ratio": relay.rps / direct.rps if direct.rps else 0.0,
            "cpu_us": (relay.cpu / len(relay.latencies) * 1e6) if relay.cpu is not None and relay.latencies else 0.0}


async def one_round(i: int, args: argparse.Namespace, direct_url: str, host: HostProcess) -> Round:
    relay_url = host.url + "/v1/chat/completions"
    plain = chat_body(MODEL, max_tokens=1)
    streaming = chat_body(MODEL, stream=True, max_tokens=args.stream_events)
    short = chat_body(MODEL, stream=True, max_tokens=args.ttfb_events)
    order = ("direct", "relay") if i % 2 == 0 else ("relay", "direct")

    async def both(body: bytes, n: int, c: int, stream: bool) -> tuple[Run, Run]:
        if c == 1:
            d, r = await measure_alternating(direct_url, relay_url, body, n, stream=stream, warmup=args.warmup,
                                             host=host)
            if d.errors or r.errors:
                raise SystemExit(f"{d.errors} direct / {r.errors} relayed requests failed (see {host.stderr_path})")
            return d, r
        out = {}
        for side in order:
            url = direct_url if side == "direct" else relay_url
            out[side] = await measure(url, body, n, c, stream=stream, warmup=args.warmup,
                                      host=host if side == "relay" else None)
            if out[side].errors:
                raise SystemExit(f"{side}: {out[side].errors} requests failed (see {host.stderr_path})")
        return out["direct"], out["relay"]

    with PeakRSS(host.pid) as rss:
        c1 = await both(plain, args.n1, 1, False)
        c32 = await both(plain, args.n32, args.concurrency, False)
        st = await both(streaming, args.streams, args.stream_concurrency, True)
        fb = await both(short, args.ttfb_n, 1, True)
    return Round(c1, c32, st, fb, rss.peak)


def report_round(i: int, r: Round, args: argparse.Namespace) -> None:
    a, b = _pair(*r.c1), _pair(*r.c32)
    d, s = r.stream
    print(f"\n-- round {i + 1} --")
    print(f"non-stream c=1   ({args.n1} req): direct p50 {a['d50']:.3f} p99 {a['d99']:.3f} ms | relayed p50 "
          f"{a['r50']:.3f} p99 {a['r99']:.3f} ms | added p50 {a['add50']:+.3f} p99 {a['add99']:+.3f} ms | "
          f"{a['rps_d']:.0f} vs {a['rps_r']:.0f} req/s = {a['ratio']:.2f}x | host CPU {a['cpu_us']:.0f} us/req")
    print(f"non-stream c={args.concurrency:<3}({args.n32} req): direct p50 {b['d50']:.3f} p99 {b['d99']:.3f} ms | relayed "
          f"p50 {b['r50']:.3f} p99 {b['r99']:.3f} ms | added p50 {b['add50']:+.3f} p99 {b['add99']:+.3f} ms | "
          f"{b['rps_d']:.0f} vs {b['rps_r']:.0f} req/s = {b['ratio']:.2f}x | host CPU {b['cpu_us']:.0f} us/req")
    sratio = s.eps / d.eps if d.eps else 0.0
    per_event = (s.cpu / s.events * 1e6) if s.cpu is not None and s.events else 0.0
    print(f"stream c={args.stream_concurrency} ({args.streams} x {args.stream_events} events): direct "
          f"{d.eps:,.0f} ev/s | relayed {s.eps:,.0f} ev/s = {sratio:.2f}x | host CPU {per_event:.1f} us/event | "
          f"events {d.events} vs {s.events}, {d.events / max(d.reads, 1):.0f} vs {s.events / max(s.reads, 1):.0f} "
          f"per client read")
    fd, fr = r.first_byte
    print(f"first byte ({args.ttfb_n} streams of {args.ttfb_events} events, c=1): direct p50 "
          f"{percentile(fd.ttfb, 50) * 1e3:.3f} p99 {percentile(fd.ttfb, 99) * 1e3:.3f} ms | relayed p50 "
          f"{percentile(fr.ttfb, 50) * 1e3:.3f} p99 {percentile(fr.ttfb, 99) * 1e3:.3f} ms | added p50 "
          f"{(percentile(fr.ttfb, 50) - percentile(fd.ttfb, 50)) * 1e3:+.3f} ms")
    print(f"host RSS peak under load: {r.rss_peak / 2**20:.1f} MB")


def summary(rounds: list[Round], args: argparse.Namespace, idle_rss: int) -> bool:
    c1 = [_pair(*r.c1) for r in rounds]
    c32 = [_pair(*r.c32) for r in rounds]
    sratio = [r.stream[1].eps / r.stream[0].eps for r in rounds]
    sttfb = [(median(r.first_byte[1].ttfb) - median(r.first_byte[0].ttfb)) * 1e3 for r in rounds]
    rss = [r.rss_peak / 2**20 for r in rounds]

    def span(xs: list[float], fmt: str) -> str:
        return " / ".join(format(x, fmt) for x in xs)

    checks = [
        ("added p50 at c=1 (ms)", [x["add50"] for x in c1], lambda v: v <= TARGETS["p50"], f"<= {TARGETS['p50']}"),
        ("added p99 at c=1 (ms)", [x["add99"] for x in c1], lambda v: v <= TARGETS["p99"], f"<= {TARGETS['p99']}"),
        ("streaming events/s ratio", sratio, lambda v: v >= TARGETS["stream"], f">= {TARGETS['stream']}"),
        ("host RSS peak (MB)", rss, lambda v: v <= TARGETS["rss_mb"], f"<= {TARGETS['rss_mb']:.0f}"),
    ]
    print(f"\n== summary over {len(rounds)} rounds (each value: round 1 / round 2 / ...) ==")
    print(f"req/s ratio c=1:  {span([x['ratio'] for x in c1], '.2f')}")
    print(f"req/s ratio c={args.concurrency}: {span([x['ratio'] for x in c32], '.2f')}   "
          f"(added p50 {span([x['add50'] for x in c32], '+.2f')} ms, p99 {span([x['add99'] for x in c32], '+.2f')} ms)")
    print(f"added time to first byte (stream, p50): {span(sttfb, '+.3f')} ms")
    print(f"host CPU per request c=1: {span([x['cpu_us'] for x in c1], '.0f')} us; idle RSS after warm-up "
          f"{idle_rss / 2**20:.1f} MB")
    ok_all = True
    for name, values, ok, target in checks:
        passed = sum(ok(v) for v in values)
        fmt = ".1f" if "RSS" in name else (".2f" if "ratio" in name else "+.3f")
        verdict = "MET" if passed == len(values) else ("MISSED" if passed == 0 else f"met in {passed}/{len(values)}")
        ok_all &= passed == len(values)
        print(f"target {name:<26} {target:<8}: {span(values, fmt):<32} {verdict}")
    return ok_all


def start_upstream(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen | None, str | None]:
    """The upstream the benchmark starts itself (``--runtime remote``); None when the host starts it."""
    if args.runtime != "remote":
        return None, None
    port = free_port()
    if args.upstream == "fake":
        cmd = [sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--port", str(port), "--model", MODEL,
               "--event-gap-us", str(args.fake_gap_us)]
    else:
        model = args.model or tiny_model(tmp / "tiny.gguf")
        cmd = llama_server_argv(llama_server_binary(args.llama_server), model, port, MODEL, args.ctx_size, args.threads)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=(tmp / "upstream.log").open("wb"), start_new_session=True)
    wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
    return proc, f"http://127.0.0.1:{port}"


def model_spec(args: argparse.Namespace, tmp: Path, upstream_url: str | None) -> dict:
    if args.runtime == "remote":
        return {"runtime": "remote", "url": upstream_url}
    if args.runtime == "command":
        return {"runtime": "command",
                "cmd": [sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--port", "${PORT}", "--model", MODEL,
                        "--event-gap-us", str(args.fake_gap_us)]}
    model = args.model or tiny_model(tmp / "tiny.gguf")
    return {"path": str(model), "params": llama_server_params(args.ctx_size, args.threads)}


def runner_url(host: HostProcess) -> str:
    """The base URL of the runner the host started (its child process's ``--port``)."""
    for child in psutil.Process(host.pid).children(recursive=True):
        argv = child.cmdline()
        if "--port" in argv:
            return f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    raise RuntimeError("no runner process with --port found under the host")


async def main_async(args: argparse.Namespace) -> int:
    print(machine_line())
    paced = f", {args.fake_gap_us:g} us between events" if args.upstream == "fake" and args.fake_gap_us else ""
    print(f"upstream: {args.upstream}{paced} ({args.runtime} runtime); metrics plugin "
          f"{'on' if args.metrics else 'off'}; {'all installed plugins' if args.all_plugins else 'minimal plugins'}")
    print(f"host: {host_python_info(args.host_pythonpath)}")
    with workdir(args.keep) as tmp:
        if args.upstream == "llama-server" and args.runtime == "command":
            raise SystemExit("--runtime command starts the fake; use --runtime llama-server or remote for llama-server")
        if args.upstream == "fake" and args.runtime == "llama-server":
            raise SystemExit("--runtime llama-server needs --upstream llama-server")
        upstream, upstream_url = start_upstream(args, tmp)
        site = {"scheduler": {"max_loaded": 1, "ttl": 0, "startup_timeout": 60},
                "plugins": plugin_flags(CORE_PLUGINS, all_plugins=args.all_plugins, metrics=args.metrics),
                "models": {MODEL: model_spec(args, tmp, upstream_url)}}
        if args.runtime == "llama-server":
            site["plugins"]["llama_server"] = {"binary": llama_server_binary(args.llama_server)}
        try:
            # The site file expands ${VAR} from the environment everywhere, cmd included: PORT='${PORT}' keeps the
            # command runtime's own ${PORT} placeholder intact through that expansion.
            env = {"PORT": "${PORT}"} if args.runtime == "command" else None
            with HostProcess(site, tmp, args.host_pythonpath, env) as host:
                async with aiohttp.ClientSession() as s, s.post(f"{host.url}/api/v1/models/{MODEL}/load") as r:
                    if r.status != 200:
                        raise SystemExit(f"loading the model failed: {r.status} {await r.text()}")
                base = upstream_url or runner_url(host)
                direct_url = base + "/v1/chat/completions"
                print(f"direct: {direct_url}  relayed: {host.url}/v1/chat/completions  host pid {host.pid}")
                await measure(host.url + "/v1/chat/completions", chat_body(MODEL), 200, 4, stream=False, warmup=50)
                idle_rss = host.rss()
                print(f"host RSS after warm-up: {idle_rss / 2**20:.1f} MB")
                rounds = []
                for i in range(args.rounds):
                    rounds.append(await one_round(i, args, direct_url, host))
                    report_round(i, rounds[-1], args)
                ok = summary(rounds, args, idle_rss)
        finally:
            if upstream is not None:
                stop_process(upstream)
    return 0 if ok or not args.strict else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="every figure is measured this many times")
    p.add_argument("--n1", type=int, default=2000, help="non-streaming requests at concurrency 1")
    p.add_argument("--n32", type=int, default=4000, help="non-streaming requests at --concurrency")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--streams", type=int, default=40, help="streaming requests per side")
    p.add_argument("--stream-events", type=int, default=1000, help="content chunks per stream (max_tokens)")
    p.add_argument("--stream-concurrency", type=int, default=1)
    p.add_argument("--ttfb-n", type=int, default=500, help="short streams for the time-to-first-byte figure")
    p.add_argument("--ttfb-events", type=int, default=16, help="content chunks per short stream")
    p.add_argument("--warmup", type=int, default=50, help="requests before each measured batch")
    p.add_argument("--upstream", choices=["fake", "llama-server"], default="fake")
    p.add_argument("--runtime", choices=["remote", "command", "llama-server"], default="remote",
                   help="remote: the bench starts the upstream, the host points at it; command/llama-server: the host "
                        "starts it")
    p.add_argument("--fake-gap-us", type=float, default=0.0,
                   help="fake upstream: pause between stream events (0 = as fast as the socket allows)")
    p.add_argument("--model", type=Path, help="GGUF for --upstream llama-server (default: a generated tiny model)")
    p.add_argument("--ctx-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1, help="llama-server --threads (--upstream llama-server)")
    p.add_argument("--llama-server", help="llama-server binary (default: PATH or scripts/get-llama-server's cache)")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                   help="enable the metrics plugin (plugins.metrics.enabled)")
    p.add_argument("--all-plugins", action="store_true", help="leave every installed plugin enabled")
    p.add_argument("--host-pythonpath", help="prepend this to the host's PYTHONPATH (e.g. a patched llama_host copy)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    p.add_argument("--keep", action="store_true", help="keep the work folder (site file, host log)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.upstream == "llama-server" and args.stream_events == 1000:
        args.stream_events = 200  # the tiny model generates ~5-8k tokens/s
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
