"""Streaming chat through the Ollama surface vs the same request through the OpenAI surface: chunk throughput.

The OpenAI surface relays llama-server's SSE bytes as they are; the Ollama surface parses every event, translates it
and writes one NDJSON line per token. This measures what that translation costs: chunks per second received by the
client through each surface, and the host's CPU time per chunk, for the same model and the same request.

Upstreams:
- ``fake``: bench/fake_upstream.py, which writes the stream as fast as the socket allows (a ``remote`` model), so the
  host is the bottleneck: the worst case for the translation.
- ``real``: the real llama-server on the tiny model (5-8k tokens/s on 2 CPU cores).

Run: ``python bench/bench_ollama.py`` (``--upstream fake|real|both``, ``--tokens``, ``--rounds``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    HostProcess,
    free_port,
    llama_server_binary,
    machine_line,
    median,
    plugin_flags,
    stop_process,
    workdir,
)

PROMPT = [{"role": "user", "content": "Tell me a long story."}]


def start_fake(folder: Path) -> tuple[subprocess.Popen, str]:
    port_file = folder / "fake.port"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("fake_upstream.py")), "--port", "0",
                             "--port-file", str(port_file)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while not port_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the fake upstream did not start")
        time.sleep(0.02)
    return proc, f"http://127.0.0.1:{port_file.read_text().strip()}"


def site(models: dict[str, Any], runtime_plugin: str, extra_plugins: dict[str, Any] | None = None) -> dict[str, Any]:
    plugins = plugin_flags(["openai_api", "ollama_api", runtime_plugin], metrics=False)
    plugins["ollama_api"] = {"port": free_port()}
    plugins.update(extra_plugins or {})
    return {"scheduler": {"max_loaded": 1, "ttl": 0}, "plugins": plugins, "models": models}


def stream_once(http: httpx.Client, url: str, body: dict[str, Any], sep: bytes) -> tuple[int, float, bytes]:
    """(events received, seconds from request to last byte, the last bytes)."""
    events = 0
    tail = b""
    t0 = time.perf_counter()
    with http.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise SystemExit(f"{url}: HTTP {r.status_code}: {r.read()[:300]!r}")
        for data in r.iter_raw():
            events += (tail[-1:] + data).count(sep) if sep == b"\n\n" else data.count(sep)
            tail = (tail + data)[-4096:]
    return events, time.perf_counter() - t0, tail


def measure(host: HostProcess, model: str, tokens: int, rounds: int) -> dict[str, dict[str, float]]:
    ollama_url = f"http://127.0.0.1:{host.site['plugins']['ollama_api']['port']}/api/chat"
    openai_url = host.url + "/v1/chat/completions"
    openai_body = {"model": model, "messages": PROMPT, "max_tokens": tokens, "temperature": 0, "stream": True,
                   "stream_options": {"include_usage": True}}
    ollama_body = {"model": model, "messages": PROMPT, "options": {"num_predict": tokens, "temperature": 0}}
    cases = {"openai": (openai_url, openai_body, b"\n\n"), "ollama": (ollama_url, ollama_body, b"\n")}
    results: dict[str, dict[str, list[float]]] = {name: {"rate": [], "events": [], "upstream": []}
                                                   for name in cases}
    # CPU time is summed over the rounds: the kernel counts it in clock ticks (10 ms), too coarse for one request.
    cpu_total = dict.fromkeys(cases, 0.0)
    events_total = dict.fromkeys(cases, 0)
    with httpx.Client(timeout=120) as http:
        for name, (url, body, sep) in cases.items():  # warm up: load the model, fill the pools
            stream_once(http, url, body, sep)
        for _ in range(rounds):
            for name, (url, body, sep) in cases.items():  # interleaved, so drift hits both alike
                cpu0 = host.cpu_seconds()
                events, seconds, tail = stream_once(http, url, body, sep)
                cpu = host.cpu_seconds() - cpu0
                if name == "ollama":
                    last = json.loads(tail.rstrip(b"\n").rsplit(b"\n", 1)[-1])
                    assert last.get("done") is True, last
                    upstream = last["eval_count"] / (last["eval_duration"] / 1e9)
                else:
                    timings = [json.loads(line[6:])["timings"] for line in tail.split(b"\n")
                               if line.startswith(b"data: {") and b'"timings"' in line]
                    upstream = timings[-1]["predicted_per_second"] if timings else float("nan")
                results[name]["upstream"].append(upstream)
                results[name]["rate"].append(events / seconds)
                cpu_total[name] += cpu
                events_total[name] += events
                results[name]["events"].append(events)
    out = {name: {k: median(v) for k, v in r.items() if v} for name, r in results.items()}
    for name in cases:
        out[name]["cpu_us"] = cpu_total[name] / max(1, events_total[name]) * 1e6
    return out


def report(label: str, tokens: int, rounds: int, res: dict[str, dict[str, float]], runner: bool) -> None:
    """``runner``: show the generation speed llama-server reports (its ``timings``) for the same requests."""
    o, a = res["ollama"], res["openai"]
    print(f"\n{label}: {tokens} tokens per request, median of {rounds} rounds")
    print(f"  {'surface':<8} {'chunks/s':>10} {'host CPU µs/chunk':>18} {'chunks':>7}"
          + (f" {'runner tokens/s':>16}" if runner else ""))
    for name, r in (("openai", a), ("ollama", o)):
        print(f"  {name:<8} {r['rate']:>10.0f} {r['cpu_us']:>18.1f} {r['events']:>7.0f}"
              + (f" {r['upstream']:>16.0f}" if runner else ""))
    print(f"  ratio ollama/openai chunk throughput: {o['rate'] / a['rate']:.2f} "
          f"(translation cost {max(0.0, 1 - o['rate'] / a['rate']) * 100:.0f}%)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", choices=["fake", "real", "both"], default="both")
    p.add_argument("--tokens", type=int, default=2000, help="tokens (chunks) per streamed reply")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--llama-server", help="path of llama-server (default: $LLAMA_SERVER, PATH, the build cache)")
    a = p.parse_args(argv)
    print(machine_line())
    if a.upstream in ("fake", "both"):
        with workdir() as folder:
            fake, url = start_fake(folder)
            try:
                models = {"fake": {"runtime": "remote", "url": url}}
                with HostProcess(site(models, "remote_runtime"), folder) as host:
                    report("fake upstream (as fast as the socket allows)", a.tokens, a.rounds,
                           measure(host, "fake", a.tokens, a.rounds), runner=False)
            finally:
                stop_process(fake)
    if a.upstream in ("real", "both"):
        binary = llama_server_binary(a.llama_server)
        from llama_host.tinymodel import write_tiny_model

        with workdir() as folder:
            model = write_tiny_model(folder / "tiny.gguf")
            models = {"tiny": {"path": str(model), "params": {"ctx_size": a.tokens + 512}}}
            with HostProcess(site(models, "llama_server", {"llama_server": {"binary": binary}}), folder) as host:
                report("real llama-server, tiny model", a.tokens, a.rounds, measure(host, "tiny", a.tokens, a.rounds),
                       runner=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
