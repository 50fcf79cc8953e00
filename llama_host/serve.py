"""Serve every listener of a host in one process and one event loop.

Every socket is bound before anything starts (a port in use fails the start before any runner or plugin task runs);
one signal handler stops all servers; a listener that dies stops the rest; open streams get ``shutdown_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

from llama_host.host import Host

log = logging.getLogger(__name__)


class ListenError(Exception):
    pass


def bind_sockets(host: Host) -> dict[int, socket.socket]:
    """Bind and listen on every port of the host; raise ListenError naming each port that cannot be bound."""
    socks: dict[int, socket.socket] = {}
    problems = []
    for port, surfaces in host.listeners().items():
        family = socket.AF_INET6 if ":" in host.site.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # protocol set: asyncio then sets TCP_NODELAY
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host.site.host, port))
            sock.listen(2048)
        except OSError as exc:
            sock.close()
            why = "already in use" if exc.errno == errno.EADDRINUSE else (exc.strerror or str(exc))
            problems.append(f"cannot listen on {host.site.host}:{port} ({', '.join(s.name for s in surfaces)}): {why}")
            continue
        sock.setblocking(False)
        socks[port] = sock
    if problems:
        for sock in socks.values():
            sock.close()
        raise ListenError("; ".join(problems))
    return socks


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # the host installs one handler for all servers
        yield


async def serve(host: Host, *, stop: asyncio.Event | None = None, on_ready: Callable[[dict[int, int]], None] | None = None,
                sockets: dict[int, socket.socket] | None = None, install_signals: bool = True) -> None:
    """Run until ``stop`` is set, SIGINT/SIGTERM arrives, or a listener fails."""
    socks = sockets if sockets is not None else bind_sockets(host)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        async with host.running():
            apps = host.build_apps()
            servers = {port: _Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False,
                                                    timeout_graceful_shutdown=host.site.shutdown_grace,
                                                    timeout_keep_alive=30, server_header=False))
                       for port, app in apps.items()}
            tasks = {asyncio.create_task(s.serve(sockets=[socks[p]]), name=f"listener:{p}"): p
                     for p, s in servers.items()}
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
            try:
                while not all(s.started for s in servers.values()):
                    done = [t for t in tasks if t.done()]
                    if done:
                        break
                    await asyncio.sleep(0.005)
                else:
                    if on_ready:
                        on_ready({p: socks[p].getsockname()[1] for p in socks})
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({stopper, *tasks}, return_when=asyncio.FIRST_COMPLETED)
                failed = [t for t in done if t is not stopper]
                for t in failed:
                    log.error("listener on port %s stopped unexpectedly: %s", tasks[t],
                              t.exception() if not t.cancelled() else "cancelled")
                stopper.cancel()
                log.info("stopping: closing listeners (open streams get %.0fs)", host.site.shutdown_grace)
                host.stopping.set()
                for s in servers.values():
                    s.should_exit = True
                await asyncio.wait(tasks, timeout=host.site.shutdown_grace + 2)
                for s in servers.values():
                    s.force_exit = True
                await asyncio.gather(*tasks, return_exceptions=True)
                if failed:
                    raise ListenError(f"listener on port {tasks[failed[0]]} failed")
            finally:
                if install_signals:
                    for sig in (signal.SIGINT, signal.SIGTERM):
                        loop.remove_signal_handler(sig)
    finally:
        for sock in socks.values():
            sock.close()
