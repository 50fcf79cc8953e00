"""Overhead of the metrics plugin: relay throughput with metrics enabled vs disabled, in one run.

Two ``llama-host serve`` processes point at the same upstream (``bench/fake_upstream.py`` by default, answering as fast
as the socket allows, so the relay and what rides on it are what is measured): one with ``plugins.metrics`` enabled
(default settings: sampling every 5 s, activity in memory), one with it disabled. Every round measures both with the
relay benchmark's own load generator (``bench_relay.measure``), the hosts taking turns in ``--slices`` slices per figure
(a machine shared with other work gives each side the same share of its noise):
- non-streaming chat at concurrency 1 and 32: requests/s, p50 latency and host CPU per request;
- streaming chat: SSE events/s.

Before that, in this process: the cost of one metered request (``host.meter`` → ``RequestStarted`` →
``RequestFinished``, through ``host.emit``) on a host with the metrics plugin and on one without — the figure machine
noise cannot blur.

Target (issue 8): throughput with metrics ≥ 95% of throughput without.
``--events-client`` keeps an ``/api/v1/events`` reader connected to the metrics host (a dashboard left open);
``--activity-db`` also persists the activity log to SQLite.

Run: ``.venv/bin/python bench/bench_metrics.py`` (``--help`` for counts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_relay import CORE_PLUGINS, MODEL, Run, measure, model_spec, start_upstream  # noqa: E402
from bench_relay import parse_args as relay_defaults  # noqa: E402
from common import (  # noqa: E402
    HostProcess,
    chat_body,
    host_python_info,
    machine_line,
    median,
    plugin_flags,
    stop_process,
    workdir,
)

TARGET = 0.95
SIDES = ("on", "off")


def recording_cost(n: int = 20000) -> dict[str, float]:
    """Microseconds per metered request, in-process, on a host with only the metrics plugin vs with none."""
    from llama_host import hookimpl
    from llama_host.host import Host

    class FakeRuntime:
        @staticmethod
        @hookimpl
        def register_runtimes(register):
            register("fake", lambda spec, host: None)

    reply = {"usage": {"prompt_tokens": 12, "completion_tokens": 16}, "choices": [{"finish_reason": "length"}],
             "timings": {"prompt_n": 12, "prompt_ms": 1.0, "predicted_n": 16, "predicted_ms": 2.0,
                         "predicted_per_second": 8000.0}}

    async def one(only: list[str]) -> float:
        with workdir(False) as tmp:
            data = {"log_dir": str(tmp / "logs"), "models": {MODEL: {"runtime": "fake"}}}
            host = Host.from_config(data=data, only=only, extra=[("fake", FakeRuntime)])
            async with host.running():
                best = float("inf")
                for _ in range(5):  # best of 5: the least disturbed batch
                    t0 = time.perf_counter()
                    for _ in range(n // 5):
                        meter = host.meter("openai_api", "chat", MODEL)
                        meter.first_token()
                        meter.observe(reply)
                        meter.finish(200)
                    best = min(best, (time.perf_counter() - t0) / (n // 5) * 1e6)
                return best

    return {"on": asyncio.run(one(["metrics"])), "off": asyncio.run(one([]))}


def site_for(args: argparse.Namespace, relay: argparse.Namespace, tmp: Path, upstream_url: str | None,
             metrics: bool) -> dict:
    plugins = plugin_flags(CORE_PLUGINS, metrics=metrics)
    if metrics and args.activity_db:
        plugins["metrics"] = {**plugins.get("metrics", {}), "activity_db": str(tmp / "activity.db")}
    return {"scheduler": {"max_loaded": 1, "ttl": 0, "startup_timeout": 60}, "plugins": plugins,
            "models": {MODEL: model_spec(relay, tmp, upstream_url)}}


async def read_events(url: str, counter: list[int]) -> None:
    """A dashboard's live stream, read and discarded."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None)) as s, s.get(url) as r:
        async for chunk in r.content.iter_any():
            counter[0] += chunk.count(b"\nevent: ") + chunk.startswith(b"event: ")


def side_of(label: str) -> str:
    return label.rstrip("0123456789")


def merge(into: Run, run: Run) -> None:
    into.latencies += run.latencies
    into.ttfb += run.ttfb
    into.events += run.events
    into.wall += run.wall
    into.errors += run.errors
    into.cpu = (into.cpu or 0.0) + (run.cpu or 0.0)


async def one_round(i: int, args: argparse.Namespace, hosts: dict[str, HostProcess]) -> dict[str, dict[str, Run]]:
    """Each figure in ``args.slices`` slices, the two hosts taking turns slice by slice, so that a burst of load
    from elsewhere on the machine falls on both sides alike."""
    plain = chat_body(MODEL, max_tokens=1)
    streaming = chat_body(MODEL, stream=True, max_tokens=args.stream_events)
    out: dict[str, dict[str, Run]] = {"c1": {}, "c32": {}, "stream": {}}
    for name, body, n, c, stream in (("c1", plain, args.n1, 1, False), ("c32", plain, args.n32, args.concurrency, False),
                                     ("stream", streaming, args.streams, 1, True)):
        out[name] = {side: Run() for side in SIDES}
        names = list(hosts)
        for k in range(args.slices):
            for label in (names if (i + k) % 2 == 0 else names[::-1]):
                host = hosts[label]
                run = await measure(host.url + "/v1/chat/completions", body, max(1, n // args.slices), c,
                                    stream=stream, warmup=args.warmup if k == 0 else c, host=host)
                if run.errors:
                    raise SystemExit(f"metrics {label}: {run.errors} requests failed (see {host.stderr_path})")
                merge(out[name][side_of(label)], run)
    return out


def per_request_cpu(run: Run) -> float:
    return run.cpu / len(run.latencies) * 1e6 if run.cpu is not None and run.latencies else 0.0


def report_round(i: int, r: dict[str, dict[str, Run]], args: argparse.Namespace) -> dict[str, float]:
    ratios = {}
    print(f"\n-- round {i + 1} --")
    for name, label in (("c1", "non-stream c=1"), ("c32", f"non-stream c={args.concurrency}")):
        on, off = r[name]["on"], r[name]["off"]
        ratios[name] = on.rps / off.rps
        print(f"{label:<17}: on {on.rps:,.0f} req/s p50 {on.p(50) * 1e3:.3f} ms CPU {per_request_cpu(on):.0f} us/req"
              f" | off {off.rps:,.0f} req/s p50 {off.p(50) * 1e3:.3f} ms CPU {per_request_cpu(off):.0f} us/req"
              f" | ratio {ratios[name]:.3f}")
    on, off = r["stream"]["on"], r["stream"]["off"]
    ratios["stream"] = on.eps / off.eps
    def per_event(run: Run) -> float:
        return run.cpu / run.events * 1e6 if run.cpu is not None and run.events else 0.0

    print(f"{'stream c=1':<17}: on {on.eps:,.0f} ev/s CPU {per_event(on):.1f} us/event | off {off.eps:,.0f} ev/s "
          f"CPU {per_event(off):.1f} us/event | ratio {ratios['stream']:.3f}")
    return ratios


async def main_async(args: argparse.Namespace) -> int:
    print(machine_line())
    print(f"upstream: bench_relay's fake (remote runtime); events client: {'yes' if args.events_client else 'no'};"
          f" activity db: {'yes' if args.activity_db else 'no'}")
    print(f"host: {host_python_info()}")
    with workdir(args.keep) as tmp:
        # bench_relay's defaults: its fake upstream, started here, with both hosts pointing at it (remote runtime).
        relay = relay_defaults([])
        upstream, upstream_url = start_upstream(relay, tmp)
        readers: list[asyncio.Task] = []
        events = [0]
        try:
            with contextlib.ExitStack() as stack:
                hosts = {}
                for pair in range(1, args.pairs + 1):
                    for side in SIDES:
                        folder = tmp / f"{side}{pair}"
                        folder.mkdir()
                        hosts[f"{side}{pair}"] = stack.enter_context(
                            HostProcess(site_for(args, relay, folder, upstream_url, side == "on"), folder))
                for label, host in hosts.items():
                    side = side_of(label)
                    async with aiohttp.ClientSession() as s, s.post(f"{host.url}/api/v1/models/{MODEL}/load") as r:
                        if r.status != 200:
                            raise SystemExit(f"metrics {label}: loading the model failed: {r.status} {await r.text()}")
                    async with aiohttp.ClientSession() as s, s.get(f"{host.url}/api/v1/metrics") as r:
                        if (r.status == 200) != (side == "on"):
                            raise SystemExit(f"metrics {label}: GET /api/v1/metrics answered {r.status}")
                    await measure(host.url + "/v1/chat/completions", chat_body(MODEL), 200, 4, stream=False, warmup=50)
                if args.events_client:
                    readers += [asyncio.create_task(read_events(host.url + "/api/v1/events", events))
                                for label, host in hosts.items() if side_of(label) == "on"]
                print("hosts: " + "  ".join(f"{label} {host.url} (pid {host.pid})" for label, host in hosts.items()))
                ratios = []
                for i in range(args.rounds):
                    ratios.append(report_round(i, await one_round(i, args, hosts), args))
        finally:
            for task in readers:
                task.cancel()
            if upstream is not None:
                stop_process(upstream)
    if args.events_client:
        print(f"\nevents read by the /api/v1/events client: {events[0]:,}")
    print(f"\n== summary over {args.rounds} rounds: throughput with metrics / without (round 1 / 2 / ...) ==")
    ok = True
    for name, label in (("c1", "non-stream c=1"), ("c32", f"non-stream c={args.concurrency}"), ("stream", "stream")):
        values = [r[name] for r in ratios]
        met = median(values) >= TARGET
        ok &= met
        print(f"{label:<17}: {' / '.join(f'{v:.3f}' for v in values)}  median {median(values):.3f}  "
              f"target >= {TARGET}: {'MET' if met else 'MISSED'}")
    return 0 if ok or not args.strict else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n1", type=int, default=2000, help="non-streaming requests at concurrency 1, per host and round")
    p.add_argument("--n32", type=int, default=4000, help="non-streaming requests at --concurrency")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--streams", type=int, default=20, help="streaming requests per host and round")
    p.add_argument("--stream-events", type=int, default=1000, help="content chunks per stream (max_tokens)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--slices", type=int, default=10, help="turns the hosts take within each figure of a round")
    p.add_argument("--pairs", type=int, default=1,
                   help="host processes per side (2+ shows how much two identical hosts differ on this machine)")
    p.add_argument("--events-client", action="store_true", help="keep an /api/v1/events reader on the metrics host")
    p.add_argument("--activity-db", action="store_true", help="persist the activity log to SQLite on the metrics host")
    p.add_argument("--strict", action="store_true", help="exit 1 when the target is missed")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cost = recording_cost()
    print(f"recording cost per metered request (in-process, best of 5): with metrics {cost['on']:.1f} us, without "
          f"{cost['off']:.1f} us -> metrics adds {cost['on'] - cost['off']:.1f} us")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
