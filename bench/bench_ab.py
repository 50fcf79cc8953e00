"""A/B of host variants under load, interleaved run by run: which option lowers the host's CPU per request.

Starts ``bench/fake_upstream.py`` (as fast as the socket allows) once and one ``llama-host serve`` per variant, all
pointing at it (remote runtime, metrics plugin on unless a variant turns it off). Every round runs each workload once
against the upstream directly and once through each variant, in an order that rotates round by round, so the noise of
a shared machine falls on every side alike. Each run is printed (requests or events per second, the host's CPU per
request or per event); the summary gives every run's value per side, then the median, and the median CPU per request
(or event) of the client (this process) and of the fake upstream on each side: the three share the machine's cores, so
what the host makes the others spend (more wakeups, less batching) counts too.

A variant is ``NAME`` or ``NAME:key=value,key=value``: dotted site keys (``event_loop=asyncio``,
``plugins.metrics.enabled=false``; values read as YAML), ``pythonpath=DIR`` (run that host from a patched copy) and
``python=PATH`` (run it on another interpreter: a venv's python with llama-host installed).

Run: ``.venv/bin/python bench/bench_ab.py --variant asyncio:event_loop=asyncio --variant uvloop:event_loop=uvloop``
(``--workload nonstream`` / ``stream`` / ``both``, ``--rounds``, ``-n``, ``--concurrency``). ``--floor`` adds
bench_floor.py's bare relay (an ``asyncio.Protocol`` on uvloop through the same runner client, none of the host's work)
as one more side and gives each host's CPU as a multiple of the floor's in the same round: what the host's own work
costs, measured under the same state of the machine as the floor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_floor import start_relay  # noqa: E402
from bench_relay import CORE_PLUGINS, MODEL, measure, start_upstream  # noqa: E402
from bench_relay import parse_args as relay_defaults  # noqa: E402
from common import (  # noqa: E402
    HostProcess,
    chat_body,
    host_python_info,
    machine_line,
    median,
    plugin_flags,
    ratio_summary,
    stop_process,
    workdir,
)

FLOOR = "floor"  # the side of ``--floor``


class Variant(NamedTuple):
    name: str
    overrides: dict[str, Any]  # dotted site keys
    pythonpath: str | None  # a patched copy of llama_host
    python: str  # the interpreter the host runs on (a venv's python with llama-host installed)


def parse_variant(text: str) -> Variant:
    name, _, rest = text.partition(":")
    overrides: dict[str, Any] = {}
    pythonpath = None
    python = sys.executable
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key == "pythonpath":
            pythonpath = value
        elif key == "python":
            python = value
        else:
            overrides[key] = yaml.safe_load(value)
    return Variant(name, overrides, pythonpath, python)


def apply_overrides(site: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    for key, value in overrides.items():
        node = site
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return site


async def main_async(args: argparse.Namespace) -> int:
    print(machine_line())
    with workdir(args.keep) as tmp, contextlib.ExitStack() as stack:
        upstream, upstream_url = start_upstream(relay_defaults(["--runtime", "remote"]), tmp)
        assert upstream is not None and upstream_url is not None
        stack.callback(stop_process, upstream)
        hosts: dict[str, HostProcess] = {}
        for text in args.variant:
            name, overrides, pythonpath, python = parse_variant(text)
            site = {"scheduler": {"max_loaded": 1, "ttl": 0},
                    "plugins": plugin_flags(CORE_PLUGINS, metrics=True),
                    "models": {MODEL: {"runtime": "remote", "url": upstream_url}}}
            (tmp / name).mkdir()
            host = HostProcess(apply_overrides(site, overrides), tmp / name, pythonpath, python=python)
            hosts[name] = stack.enter_context(host)
            print(f"variant {name}: {overrides or 'defaults'} — {host_python_info(pythonpath, python)} — "
                  f"pid {host.pid}")
        async with aiohttp.ClientSession() as s:
            for host in hosts.values():
                async with s.post(f"{host.url}/api/v1/models/{MODEL}/load") as r:
                    assert r.status == 200, await r.text()
        urls = {"direct": upstream_url, **{n: h.url for n, h in hosts.items()}}
        meters: dict[str, Any] = dict(hosts)  # what measure() reads the CPU of, per side
        if args.floor:  # bench_floor.py's bare relay (an asyncio.Protocol on uvloop), a side like the hosts
            urls[FLOOR], meters[FLOOR] = start_relay("raw", "uvloop", upstream_url, stack)
        sides = list(urls)
        workloads = {"nonstream": ("nonstream", chat_body(MODEL, max_tokens=1), args.n, args.concurrency, False),
                     "stream": ("stream", chat_body(MODEL, stream=True, max_tokens=args.stream_events), args.streams,
                                args.stream_concurrency, True)}
        chosen = [workloads[w] for w in (("nonstream", "stream") if args.workload == "both" else (args.workload,))]
        for _, body, _, c, stream in chosen:  # warm every side
            for side in sides:
                await measure(urls[side] + "/v1/chat/completions", body, 4 * c, c, stream=stream, warmup=c)
        results: dict[tuple[str, str], list[tuple[float, float | None]]] = {}
        others: dict[tuple[str, str], list[tuple[float, float]]] = {}  # client and fake CPU per unit
        client, fake = psutil.Process(), psutil.Process(upstream.pid)

        def cpu_of(p: psutil.Process) -> float:
            t = p.cpu_times()
            return t.user + t.system

        for i in range(args.rounds):
            order = sides[i % len(sides):] + sides[:i % len(sides)]
            for label, body, n, c, stream in chosen:
                line = []
                for side in order:
                    host = meters.get(side)
                    before = cpu_of(client), cpu_of(fake)
                    run = await measure(urls[side] + "/v1/chat/completions", body, n, c, stream=stream, warmup=0,
                                        host=host)
                    spent = cpu_of(client) - before[0], cpu_of(fake) - before[1]
                    if run.errors:
                        raise SystemExit(f"{side}: {run.errors} requests failed")
                    rate = run.eps if stream else run.rps
                    units = run.events if stream else len(run.latencies)
                    cpu = run.cpu / units * 1e6 if run.cpu is not None and units else None
                    results.setdefault((label, side), []).append((rate, cpu))
                    others.setdefault((label, side), []).append((spent[0] / max(units, 1) * 1e6,
                                                                 spent[1] / max(units, 1) * 1e6))
                    line.append(f"{side} {rate:,.0f}/s" + (f" {cpu:.0f}us" if cpu is not None else ""))
                print(f"round {i + 1} {label}: " + " | ".join(line), flush=True)
        print("\n== summary: each run, then the median ==")
        for label, *_ in chosen:
            unit = "events" if label == "stream" else "requests"
            direct = [r for r, _ in results[(label, "direct")]]
            for side in sides:
                runs = results[(label, side)]
                rates = " / ".join(f"{r:,.0f}" for r, _ in runs)
                ratios = " / ".join(f"{r / d:.2f}" for (r, _), d in zip(runs, direct, strict=True))
                cpus = [c for _, c in runs if c is not None]
                cpu_text = (f"; host CPU us per {unit[:-1]}: " + " / ".join(f"{c:.0f}" for c in cpus)
                            + f" (median {median(cpus):.0f})") if cpus else ""
                print(f"{label} {side}: {unit}/s {rates} (median {median([r for r, _ in runs]):,.0f}); "
                      f"vs direct {ratios}{cpu_text}; client / fake CPU us per {unit[:-1]}: "
                      f"{median([c for c, _ in others[(label, side)]]):.0f} / "
                      f"{median([f for _, f in others[(label, side)]]):.0f} (medians)")
                if side != "direct":
                    print(f"{label} {side} vs direct, per round: "
                          + ratio_summary([r / d for (r, _), d in zip(runs, direct, strict=True)], args.target))
            if FLOOR in meters:
                floor = [c for _, c in results[(label, FLOOR)]]
                for side in hosts:
                    times = [c / f for (_, c), f in zip(results[(label, side)], floor, strict=True) if c and f]
                    print(f"{label} {side}: host CPU per {unit[:-1]} = " + " / ".join(f"{t:.2f}" for t in times)
                          + f" x the floor's in the same round (median {median(times):.2f}x)")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--variant", action="append", required=True, help="NAME[:key=value,...] (repeat)")
    p.add_argument("--workload", choices=["nonstream", "stream", "both"], default="nonstream")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("-n", type=int, default=2000, help="non-streaming requests per run")
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--streams", type=int, default=16, help="streams per run")
    p.add_argument("--stream-events", type=int, default=1000)
    p.add_argument("--stream-concurrency", type=int, default=8)
    p.add_argument("--floor", action="store_true",
                   help="also run bench_floor.py's bare relay as a side: each host's CPU as a multiple of its CPU")
    p.add_argument("--target", type=float, default=0.7, help="count the rounds at or above this ratio to direct")
    p.add_argument("--keep", action="store_true")
    return p.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main_async(parse_args())))
