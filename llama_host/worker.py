"""RPC workers: ``llama-host worker`` runs and supervises one llama.cpp ``rpc-server``, and models with ``rpc:`` check
their workers with a TCP connect (``rpc-server`` speaks no HTTP).

``rpc-server`` has no authentication and executes whatever tensors a client sends: bind it to a private network only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from llama_host import reaper
from llama_host.binaries import cache_dir, find_binary

log = logging.getLogger("llama_host.worker")
RESTART_DELAYS = (0.5, 1, 2, 5, 10, 30)  # seconds before restart n (the last one repeats)
STABLE_SECONDS = 60.0  # a worker that ran this long restarts after the first delay again


def find_rpc_server(configured: str | None = None) -> str | None:
    """``configured``, else ``rpc-server`` on PATH, else the one scripts/get-llama-server built next to llama-server."""
    found = find_binary("rpc-server", configured)
    if found or configured:
        return found
    cached = sorted(cache_dir().glob("llama-server-*/rpc-server"), key=lambda p: p.stat().st_mtime)
    return str(cached[-1]) if cached else None


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` too) → (host, port); ValueError when it is not one."""
    host, sep, port = address.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.removeprefix("[").removesuffix("]"), int(port)


async def tcp_check(address: str, timeout: float = 2.0) -> str | None:
    """None when ``address`` accepts a TCP connection within ``timeout``; else why not."""
    try:
        host, port = split_address(address)
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return None
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except (OSError, ValueError) as exc:
        return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


async def check_workers(addresses: Iterable[str], timeout: float = 2.0) -> dict[str, str | None]:
    """Every worker checked at once: address → None (reachable) or the reason it is not."""
    addresses = list(addresses)
    results = await asyncio.gather(*(tcp_check(a, timeout) for a in addresses))
    return dict(zip(addresses, results, strict=True))


@dataclass
class WorkerSupervisor:
    """Runs ``rpc-server`` until stopped, restarting it (with a growing delay) whenever it exits on its own."""

    binary: str
    host: str
    port: int
    threads: int | None = None
    extra: list[str] = field(default_factory=list)
    restarts: int = 0
    _proc: asyncio.subprocess.Process | None = None

    @property
    def argv(self) -> list[str]:
        argv = [self.binary, "--host", self.host, "--port", str(self.port)]
        if self.threads:
            argv += ["--threads", str(self.threads)]
        return argv + self.extra

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            code = await self._run_once(stop)
            if stop.is_set():
                return
            failures = 1 if time.monotonic() - started > STABLE_SECONDS else failures + 1
            delay = RESTART_DELAYS[min(failures, len(RESTART_DELAYS)) - 1]
            self.restarts += 1
            log.error("rpc-server exited with code %s; restarting in %gs", code, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)

    async def _run_once(self, stop: asyncio.Event) -> int | None:
        argv = self.argv
        log.info("starting: %s", " ".join(argv))
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            log.error("cannot start %s: %s", argv[0], exc.strerror or exc)
            return None
        reaper.watch(proc.pid)  # it dies with the worker, however the worker ends
        self._proc = proc
        reader = asyncio.create_task(self._relay_output(proc))
        ended = asyncio.create_task(proc.wait())
        stopping = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({ended, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if not ended.done():
                await self._terminate(proc, ended)
        finally:
            stopping.cancel()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # nothing of the worker outlives it
            reaper.forget(proc.pid)
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(reader, 1.0)
        return proc.returncode

    @staticmethod
    async def _terminate(proc: asyncio.subprocess.Process, ended: asyncio.Task[int], grace: float = 5.0) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(ended), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await ended

    @staticmethod
    async def _relay_output(proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            log.info("rpc-server: %s", line.decode("utf-8", "replace").rstrip())

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.returncode is None else None


async def serve_worker(supervisor: WorkerSupervisor, install_signals: bool = True) -> None:
    """Supervise until SIGTERM or SIGINT (then stop the worker and return)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
    log.warning("rpc-server has no authentication: %s:%d must be reachable from a private network only",
                supervisor.host, supervisor.port)
    await supervisor.run(stop)

