"""A model spread over RPC workers (``rpc: [host:port, ...]``): its llama-server runs with ``--rpc``, the workers
are checked with a TCP connect before each start and while it runs, and a worker that dies ends the runner with an
error naming it (the next request starts it again on the workers still alive, or fails, per ``rpc_failover``)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from llama_host.errors import RunnerStartError
from llama_host.worker import check_workers

CHECK_SECONDS = 2.0
CHECK_TIMEOUT = 2.0


class RpcWorkers:
    """The workers of one runner: which are used, their last check, and the watch while the runner runs."""

    def __init__(self, model: str, addresses: list[str], failover: str) -> None:
        self.model = model
        self.configured = list(addresses)
        self.failover = failover
        self.used = list(addresses)
        self.state: dict[str, dict[str, Any]] = {a: {"address": a, "up": None, "error": None, "checked_at": None,
                                                     "used": True} for a in addresses}
        self.lost: str | None = None
        self._watch: asyncio.Task | None = None

    def details(self) -> dict[str, Any]:
        return {"rpc_workers": [dict(s) for s in self.state.values()], "rpc_failover": self.failover}

    async def check(self) -> dict[str, str | None]:
        results = await check_workers(self.configured, CHECK_TIMEOUT)
        now = time.time()
        for address, error in results.items():
            self.state[address].update(up=error is None, error=error, checked_at=now)
        return results

    async def choose(self) -> list[str]:
        """Before a start: the workers to use. Raises when none (or, with ``rpc_failover: fail``, not all) answer."""
        results = await self.check()
        dead = [f"{a} ({e})" for a, e in results.items() if e is not None]
        alive = [a for a, e in results.items() if e is None]
        if dead and (self.failover == "fail" or not alive):
            raise RunnerStartError(f"model '{self.model}': RPC worker(s) unreachable: {', '.join(dead)}"
                                   + ("" if alive else " (no worker left)"))
        self.used = alive
        for address, s in self.state.items():
            s["used"] = address in alive
        self.lost = None
        return alive

    def watch(self, on_lost) -> None:
        """While the runner runs: a used worker that stops answering calls ``on_lost(reason)`` once."""

        async def run() -> None:
            while True:
                await asyncio.sleep(CHECK_SECONDS)
                results = await self.check()
                dead = [f"{a} ({results[a]})" for a in self.used if results.get(a) is not None]
                if dead:
                    self.lost = f"RPC worker {', '.join(dead)} is unreachable"
                    await on_lost(self.lost)
                    return

        self.stop_watch()
        self._watch = asyncio.create_task(run())

    def stop_watch(self) -> None:
        if self._watch is not None and self._watch is not asyncio.current_task():
            self._watch.cancel()
        self._watch = None

    async def explain_exit(self) -> str | None:
        """After the process ended on its own: a used worker that is gone is the likely reason."""
        if self.lost:
            return self.lost
        with contextlib.suppress(Exception):
            results = await self.check()
            dead = [f"{a} ({results[a]})" for a in self.used if results.get(a) is not None]
            if dead:
                self.lost = f"RPC worker {', '.join(dead)} is unreachable"
        return self.lost
