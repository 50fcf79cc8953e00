"""Cold-start overhead: first reply of an unloaded model through llama-host, minus bare llama-server.

Both sides serve the same generated tiny GGUF with the same command line (``--ctx-size`` included) and answer the same
non-streaming chat request (``max_tokens: 1``):

- bare: spawn llama-server, poll ``GET /health`` every 5 ms (one kept connection once the port accepts), then send the
  request on that connection; time from spawn to the complete reply;
- host: the real ``llama-host serve`` in its own process, model unloaded (``POST /api/v1/models/tiny/unload``); time from
  sending the request to the host to the complete reply (the host starts llama-server, waits until it is healthy and
  relays the request).

Iterations alternate bare and host so that machine noise hits both alike. Target (issue 21): ≤ 10 ms added (median;
issue 3 asked ≤ 25 ms).

Run: ``.venv/bin/python bench/bench_coldstart.py -n 20``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    HostProcess,
    KeptConnection,
    bare_first_reply,
    chat_body,
    host_python_info,
    llama_server_binary,
    llama_server_params,
    machine_line,
    median,
    percentile,
    plugin_flags,
    stats_line,
    stop_process,
    tiny_model,
    workdir,
)

CORE_PLUGINS = ("openai_api", "llama_server")
TARGET_MS = 10.0


def host_site(binary: str, models: dict[str, Path], ctx_size: int, *, metrics: bool | None,
              all_plugins: bool, max_loaded: int = 1, threads: int = 1) -> dict:
    return {"scheduler": {"max_loaded": max_loaded, "ttl": 0, "startup_timeout": 60},
            "plugins": {**plugin_flags(CORE_PLUGINS, all_plugins=all_plugins, metrics=metrics),
                        "llama_server": {"binary": binary}},
            "models": {name: {"path": str(path), "params": llama_server_params(ctx_size, threads)}
                       for name, path in models.items()}}


def host_cold_reply(conn: KeptConnection, admin: KeptConnection, name: str, body: bytes) -> tuple[float, float]:
    """Unload ``name`` (waits until stopped), then time one request: (seconds to the reply, host's load_seconds)."""
    status, reply = admin.request("POST", f"/api/v1/models/{name}/unload")
    if status != 200:
        raise RuntimeError(f"unload failed: {status} {reply[:200]!r}")
    time.sleep(0.2)  # let the stopped runner's exit settle before timing
    t0 = time.perf_counter()
    status, reply = conn.request("POST", "/v1/chat/completions", body)
    elapsed = time.perf_counter() - t0
    if status != 200:
        raise RuntimeError(f"request through the host failed: {status} {reply[:300]!r}")
    _, info = admin.request("GET", f"/api/v1/models/{name}")
    return elapsed, float(json.loads(info).get("load_seconds") or 0.0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--iterations", type=int, default=20, help="cold starts per side")
    p.add_argument("--ctx-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1, help="llama-server --threads, both sides")
    p.add_argument("--model", type=Path, help="GGUF to start (default: a generated tiny model)")
    p.add_argument("--llama-server", help="llama-server binary (default: PATH or scripts/get-llama-server's cache)")
    p.add_argument("--event-loop", choices=["asyncio", "uvloop", "auto"], default="asyncio", help="the host's loop")
    p.add_argument("--poll-ms", type=float, default=5.0, help="bare side: health poll interval")
    p.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=True,
                   help="enable the metrics plugin (plugins.metrics.enabled)")
    p.add_argument("--all-plugins", action="store_true", help="leave every installed plugin enabled")
    p.add_argument("--host-pythonpath", help="prepend this to the host's PYTHONPATH (e.g. a patched llama_host copy)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (site file, logs)")
    args = p.parse_args(argv)

    print(machine_line())
    binary = llama_server_binary(args.llama_server)
    print(f"llama-server: {binary}\nhost: {host_python_info(args.host_pythonpath)}")
    body = chat_body("tiny", max_tokens=1)
    with workdir(args.keep) as tmp:
        model = args.model or tiny_model(tmp / "tiny.gguf")
        site = host_site(binary, {"tiny": model}, args.ctx_size, metrics=args.metrics, all_plugins=args.all_plugins,
                         threads=args.threads)
        site["event_loop"] = args.event_loop
        bare: list[float] = []
        bare_healthy: list[float] = []
        hosted: list[float] = []
        loads: list[float] = []
        with HostProcess(site, tmp, args.host_pythonpath) as host:
            conn, admin = KeptConnection(host.url), KeptConnection(host.url)
            host_cold_reply(conn, admin, "tiny", body)  # warm caches (page cache, imports on first use)
            stop_process(bare_first_reply(binary, model, "tiny", args.ctx_size, body, threads=args.threads).proc)
            for i in range(args.iterations):
                for side in (("bare", "host") if i % 2 == 0 else ("host", "bare")):
                    if side == "bare":
                        start = bare_first_reply(binary, model, "tiny", args.ctx_size, body, poll=args.poll_ms / 1000,
                                                 threads=args.threads)
                        stop_process(start.proc)
                        bare.append(start.seconds)
                        bare_healthy.append(start.healthy)
                        time.sleep(0.2)
                    else:
                        seconds, load = host_cold_reply(conn, admin, "tiny", body)
                        hosted.append(seconds)
                        loads.append(load)
            conn.close()
            admin.close()
    print(stats_line("bare llama-server spawn → first reply", bare))
    print(stats_line("  of which spawn → first /health 200", bare_healthy))
    print(stats_line("through llama-host (unloaded) → first reply", hosted))
    print(stats_line("  of which the host's load_seconds (spawn → healthy)", loads))
    outside = [h - load - (b - bh) for h, load, b, bh in zip(hosted, loads, bare, bare_healthy, strict=True)]
    print(f"host time outside spawn → healthy, minus bare's healthy → reply (per pair): median "
          f"{median(outside) * 1000:+.1f} ms, p10 {percentile(outside, 10) * 1000:+.1f} ms")
    added = (median(hosted) - median(bare)) * 1000
    per_pair = [(h - b) * 1000 for h, b in zip(hosted, bare, strict=True)]
    print(f"added by llama-host: {added:+.1f} ms (median host − median bare); per alternated pair: median "
          f"{median(per_pair):+.1f} ms, p90 {percentile(per_pair, 90):+.1f} ms")
    print(f"target ≤ {TARGET_MS:.0f} ms added: {'MET' if added <= TARGET_MS else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
