"""Cost of ``Host.emit`` (``track_event``, on every request's hot path) through the plugin manager, against the
loop over ``get_hookimpls()`` that called ``impl.function`` itself (the commit before), with 0, 1 and 3 observers.

Run: ``.venv/bin/python bench/bench_hooks.py [-n 200000]``
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import pluggy

from llama_host import hookimpl, hookspecs
from llama_host.types import RequestFinished


class Observer:
    def __init__(self) -> None:
        self.n = 0

    @hookimpl
    def track_event(self, event: Any) -> None:
        self.n += 1


def manager(observers: int) -> pluggy.PluginManager:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for i in range(observers):
        pm.register(Observer(), name=f"observer{i}")
    return pm


def through_pluggy(pm: pluggy.PluginManager):
    call = pm.hook.track_event

    def emit(event: Any) -> None:
        try:
            call(host=None, event=event)
        except Exception:
            pass

    return emit


def by_hand(pm: pluggy.PluginManager):  # what the host did before
    def emit(event: Any) -> None:
        for impl in pm.hook.track_event.get_hookimpls():
            try:
                impl.function(**{k: v for k, v in (("host", None), ("event", event)) if k in impl.argnames})
            except Exception:
                pass

    return emit


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    event = RequestFinished(surface="s", model="m", endpoint="e", status=200, duration=0.1)
    print(f"µs per emit (median of {args.rounds} rounds of {args.n}; the two ways alternate):")
    for observers in (0, 1, 3):
        pm = manager(observers)
        ways = {"pm.hook.track_event": through_pluggy(pm), "impl.function loop": by_hand(pm)}
        times: dict[str, list[float]] = {k: [] for k in ways}
        for r in range(args.rounds):
            for name in (list(ways) if r % 2 == 0 else list(reversed(ways))):
                emit = ways[name]
                t0 = time.perf_counter()
                for _ in range(args.n):
                    emit(event)
                times[name].append((time.perf_counter() - t0) / args.n * 1e6)
        print(f"  {observers} observers: " + "  ".join(f"{k} {statistics.median(v):.2f}" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
