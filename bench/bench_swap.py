"""Swap time: switching between two tiny models under ``scheduler.max_loaded: 1``.

Two generated tiny GGUFs (``tiny-a``, ``tiny-b``). Through llama-host (the real ``llama-host serve`` in its own
process): with ``tiny-a`` loaded and idle, time a non-streaming chat request (``max_tokens: 1``) to ``tiny-b`` until its
complete reply; the host must stop ``tiny-a`` (SIGTERM, wait for exit), start ``tiny-b``, wait until it is healthy and
relay. Then back to ``tiny-a``, and so on.

Bare reference, same machine, same run: SIGTERM the running llama-server and wait for its exit, spawn the other one, poll
``/health`` every 5 ms, send the request. Iterations alternate host and bare.

Run: ``.venv/bin/python bench/bench_swap.py -n 20``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_coldstart import host_site  # noqa: E402
from common import (  # noqa: E402
    HostProcess,
    KeptConnection,
    bare_first_reply,
    chat_body,
    host_python_info,
    llama_server_binary,
    machine_line,
    median,
    stats_line,
    stop_process,
    tiny_model,
    workdir,
)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-n", "--iterations", type=int, default=20, help="swaps per side")
    p.add_argument("--ctx-size", type=int, default=1024)
    p.add_argument("--threads", type=int, default=1, help="llama-server --threads, both sides")
    p.add_argument("--llama-server", help="llama-server binary (default: PATH or scripts/get-llama-server's cache)")
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
    with workdir(args.keep) as tmp:
        models = {"tiny-a": tiny_model(tmp / "tiny-a.gguf", "tiny-a"), "tiny-b": tiny_model(tmp / "tiny-b.gguf", "tiny-b")}
        bodies = {name: chat_body(name, max_tokens=1) for name in models}
        site = host_site(binary, models, args.ctx_size, metrics=args.metrics, all_plugins=args.all_plugins,
                         threads=args.threads)
        hosted: list[float] = []
        bare: list[float] = []
        with HostProcess(site, tmp, args.host_pythonpath) as host:
            conn = KeptConnection(host.url)
            status, reply = conn.request("POST", "/v1/chat/completions", bodies["tiny-a"])
            assert status == 200, reply
            current = "tiny-a"
            bare_proc = bare_first_reply(binary, models["tiny-b"], "tiny-b", args.ctx_size, bodies["tiny-b"],
                                         threads=args.threads).proc
            bare_current = "tiny-b"
            try:
                for i in range(args.iterations + 1):  # the first swap of each side is a warm-up
                    for side in (("host", "bare") if i % 2 == 0 else ("bare", "host")):
                        time.sleep(0.2)
                        if side == "host":
                            target = "tiny-b" if current == "tiny-a" else "tiny-a"
                            t0 = time.perf_counter()
                            status, reply = conn.request("POST", "/v1/chat/completions", bodies[target])
                            seconds = time.perf_counter() - t0
                            if status != 200:
                                raise RuntimeError(f"swap to {target} failed: {status} {reply[:300]!r}")
                            current = target
                            if i:
                                hosted.append(seconds)
                        else:
                            target = "tiny-b" if bare_current == "tiny-a" else "tiny-a"
                            old = bare_proc
                            start = bare_first_reply(binary, models[target], target, args.ctx_size, bodies[target],
                                                     poll=args.poll_ms / 1000, threads=args.threads,
                                                     before_spawn=lambda old=old: stop_process(old))
                            seconds, bare_proc = start.seconds, start.proc
                            bare_current = target
                            if i:
                                bare.append(seconds)
            finally:
                stop_process(bare_proc)
            conn.close()
    print(stats_line("bare: stop llama-server A, spawn B → first reply", bare))
    print(stats_line("llama-host, max_loaded 1: request to B while A is loaded → first reply", hosted))
    print(f"host − bare (medians): {(median(hosted) - median(bare)) * 1000:+.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
