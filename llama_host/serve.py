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
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from llama_host.config import LimitSettings
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
        # the protocol is set: asyncio then sets TCP_NODELAY
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
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


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the limits it lacks (uvicorn 0.54 has them for h11 only, or not at all): a
    deadline for a request's line and headers (slowloris; uvicorn times out idle keep-alive connections only, not a
    connection that sends a byte now and then) and limits on header count and size (httptools accepts any number).
    The limits are class attributes: :func:`protocol_class` makes a subclass per site."""

    header_timeout = 10.0
    max_headers = 100
    max_header_bytes = 64 * 2**10

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._header_count = self._header_bytes = 0
        self._refused = self._partial = False
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, with a 431 (instead of its 400 and warning) when a header limit stopped the parser.
        if self._refused:
            return
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused:
                log.warning("request refused with 431 from %s: more than %d header fields or %d bytes of headers",
                            self.client[0] if self.client else "?", self.max_headers, self.max_header_bytes)
                self._reply_and_close(431, "request header fields too large")
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_count = self._header_bytes = 0
        self._partial = True
        self._arm_header_timer()

    def on_url(self, url: bytes) -> None:
        self._header_bytes += len(url)
        if self._header_bytes > self.max_header_bytes:
            self._refuse()
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        self._header_count += 1
        if self._header_bytes > self.max_header_bytes or self._header_count > self.max_headers:
            self._refuse()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm_header_timer()
        self._partial = False
        super().on_headers_complete()

    def _refuse(self) -> None:
        self._refused = True
        raise ValueError("header limit")  # stops the parser: data_received answers 431

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_expired)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self._partial:  # a request began but its headers never completed
            log.debug("closing a connection from %s: request headers not received within %.0fs",
                      self.client[0] if self.client else "?", self.header_timeout)
            self._reply_and_close(408, "request headers not received in time")
        else:
            self.transport.close()

    def _reply_and_close(self, status: int, message: str) -> None:
        body = message.encode()
        self.transport.write(b"".join([
            STATUS_LINE[status], b"content-type: text/plain; charset=utf-8\r\n",
            b"content-length: ", str(len(body)).encode(), b"\r\n", b"connection: close\r\n\r\n", body]))
        self._refused = True  # what the client still sends is read and dropped
        if self.transport.can_write_eof():
            # Closing with unread input would reset the connection and the client might never see the answer:
            # half-close, drop what still comes, close when the client does (eof_received) or after a second.
            self.transport.write_eof()
            self.loop.call_later(1.0, self.transport.close)
        else:
            self.transport.close()


def protocol_class(limits: LimitSettings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class enforcing ``limits`` (uvicorn instantiates it once per connection)."""
    return type("SiteHttpToolsProtocol", (LimitedHttpToolsProtocol,), {
        "header_timeout": limits.header_timeout, "max_headers": limits.max_headers,
        "max_header_bytes": limits.max_header_bytes})


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the host installs one handler for all servers
        yield


async def serve(host: Host, *, stop: asyncio.Event | None = None,
                on_ready: Callable[[dict[int, int]], None] | None = None,
                sockets: dict[int, socket.socket] | None = None, install_signals: bool = True) -> None:
    """Run until ``stop`` is set, SIGINT/SIGTERM arrives, or a listener fails."""
    socks = sockets if sockets is not None else bind_sockets(host)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    try:
        async with host.running():
            apps = host.build_apps()
            limits = host.site.limits
            servers = {port: _Server(uvicorn.Config(app, log_config=None, lifespan="off", access_log=False,
                                                    http=protocol_class(limits),
                                                    # no client may rename itself with X-Forwarded-For (uvicorn
                                                    # trusts it from 127.0.0.1, i.e. from every local user)
                                                    proxy_headers=False,
                                                    # seconds, used as float timeouts; uvicorn annotates them int
                                                    timeout_graceful_shutdown=host.site.shutdown_grace,  # type: ignore[arg-type]
                                                    timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]
                                                    server_header=False))
                       for port, app in apps.items()}
            tasks = {asyncio.create_task(s.serve(sockets=[socks[p]]), name=f"listener:{p}"): p
                     for p, s in servers.items()}
            if install_signals:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.add_signal_handler(sig, stop.set)
                loop.add_signal_handler(signal.SIGHUP, host.reloader.request, "SIGHUP")  # reload the site file
            try:
                while not all(s.started for s in servers.values()):
                    ended = [t for t in tasks if t.done()]
                    if ended:
                        break
                    await asyncio.sleep(0.005)
                else:
                    if on_ready:
                        on_ready({p: socks[p].getsockname()[1] for p in socks})
                stopper: asyncio.Task[Any] = asyncio.create_task(stop.wait())
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
                    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                        loop.remove_signal_handler(sig)
    finally:
        for sock in socks.values():
            sock.close()
