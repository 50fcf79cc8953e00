"""A model spread over RPC workers (``rpc: [host:port, ...]``): its llama-server runs with ``--rpc``, the workers
are checked before each start and while it runs, and a worker that dies ends the runner with an error naming it (the
next request starts it again on the workers still alive, or fails, per ``rpc_failover``).

Before a start (and after an exit) a worker is checked with a TCP connect. While llama-server runs it is not:
``rpc-server`` serves one client at a time with a listen backlog of 1, so probes would queue behind llama-server's own
connection and soon time out. Instead the runner's own connection to the worker is read from ``/proc/<pid>/net/tcp``:
established = up; closed by the worker (CLOSE_WAIT) = the worker is gone. Only a worker the runner holds no connection
to is probed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from llama_host.errors import RunnerStartError
from llama_host.worker import check_workers, split_address, tcp_check

ESTABLISHED, CLOSE_WAIT = "01", "08"


def _proc_endpoint(address: str) -> set[str]:
    """``host:port`` as /proc/net/tcp{,6} write remote endpoints (empty for a name: only numeric hosts are matched)."""
    try:
        host, port = split_address(address)
        ip = ipaddress.ip_address(host)
    except ValueError:
        return set()
    out = set()
    v6 = ip if ip.version == 6 else ipaddress.IPv6Address(b"\0" * 10 + b"\xff" * 2 + ip.packed)
    if ip.version == 4:
        out.add(f"{ip.packed[::-1].hex().upper()}:{port:04X}")
    words = [v6.packed[i:i + 4][::-1] for i in range(0, 16, 4)]
    out.add(f"{b''.join(words).hex().upper()}:{port:04X}")
    return out


def connection_states(tables: Iterable[str], addresses: Iterable[str]) -> dict[str, set[str]]:
    """From /proc/net/tcp-style tables: each address → the states of connections to it (``01`` established, ...)."""
    wanted = {endpoint: a for a in addresses for endpoint in _proc_endpoint(a)}
    states: dict[str, set[str]] = {}
    for table in tables:
        for line in table.splitlines()[1:]:
            fields = line.split()
            if len(fields) > 3 and fields[2] in wanted:
                states.setdefault(wanted[fields[2]], set()).add(fields[3])
    return states


def runner_tables(pid: int) -> list[str]:
    tables = []
    for name in ("tcp", "tcp6"):
        with contextlib.suppress(OSError):
            tables.append(Path(f"/proc/{pid}/net/{name}").read_text())
    return tables

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

    def watch(self, pid: Callable[[], int | None], on_lost) -> None:
        """While the runner runs: a used worker that is gone calls ``on_lost(reason)`` once."""

        async def run() -> None:
            while True:
                await asyncio.sleep(CHECK_SECONDS)
                dead = await self._check_running(pid())
                if dead:
                    self.lost = f"RPC worker {', '.join(dead)} is unreachable"
                    await on_lost(self.lost)
                    return

        self.stop_watch()
        self._watch = asyncio.create_task(run())

    async def _check_running(self, pid: int | None) -> list[str]:
        states = connection_states(runner_tables(pid), self.used) if pid else {}
        dead = []
        now = time.time()
        for address in self.used:
            seen = states.get(address, set())
            if ESTABLISHED in seen:
                error = None
            elif CLOSE_WAIT in seen:
                error = "the worker closed the connection"
            else:  # the runner holds no connection to it: ask the worker itself
                error = await tcp_check(address, CHECK_TIMEOUT)
            self.state[address].update(up=error is None, error=error, checked_at=now)
            if error is not None:
                dead.append(f"{address} ({error})")
        return dead

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
