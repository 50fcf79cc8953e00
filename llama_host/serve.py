"""Serve every listener of a host in one process and one event loop.

Every socket is bound before anything starts (a port in use fails the start before any runner or plugin task runs);
one signal handler stops all servers; a listener that dies stops the rest; open streams get ``shutdown_grace`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from itertools import chain
from typing import Any

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE, HttpToolsProtocol

from llama_host.config import LimitSettings
from llama_host.eventloop import Deadline
from llama_host.fastpath import FastPath, Route
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
        self._refused = self._partial = self._small_read = False
        self._pending: int | None = None
        # uvicorn's default fields (the server's Date) as the head's lines, made again when uvicorn makes a new list
        self._default_headers: list[tuple[bytes, bytes]] | None = None
        self._default_lines = b""
        handler = getattr(self.app, "asgi_handler", None)
        self._fast: FastPath | None = handler if isinstance(handler, FastPath) else None
        self._fast_routes = self._fast.routes if self._fast is not None else {}
        super().connection_made(transport)
        # each request's line and headers (and the first request itself) within header_timeout
        self._header_deadline = Deadline(self.loop, self._header_timeout_expired)
        self._header_deadline.after(self.header_timeout)
        # an idle kept-alive connection closed after timeout_keep_alive (uvicorn sets a new timer per response)
        self._idle_deadline = Deadline(self.loop, self._keep_alive_expired)

    def connection_lost(self, exc: Exception | None) -> None:
        self._header_deadline.cancel()
        self._idle_deadline.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # uvicorn's own, with a 431 (instead of its 400 and warning) when a header limit stopped the parser.
        if self._refused:
            return
        self._idle_deadline.when = None  # not idle (``drop()`` without a call)
        # a request whose line and headers begin and end in this read has no more header bytes than the read
        self._small_read = not self._partial and len(data) <= self.max_header_bytes
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refused:
                self._refuse_headers()
                return
            self.logger.warning("Invalid HTTP request received.")
            self.send_400_response("Invalid HTTP request received.")
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        else:
            if self._partial:  # a request line and headers over several reads: the limits after each one
                # a read in which no field completed holds only the field the parser is still buffering
                self._pending = 0 if self._pending is None else self._pending + len(data)
                if self._over_header_limits():
                    self._refuse_headers()

    def _refuse_headers(self) -> None:
        self._refused = True
        log.warning("request refused with 431 from %s: more than %d header fields or %d bytes of headers",
                    self.client[0] if self.client else "?", self.max_headers, self.max_header_bytes)
        self._reply_and_close(431, "request header fields too large")

    # The header limits are checked when the headers are complete and after each read that ends before: not per
    # field (a read holds at most a few hundred KB, so the list stays bounded). What the parser buffers of a field
    # not complete yet is counted by the reads in which no field completed (``_pending``; ``None``: one did). A head
    # that begins and ends in one read no longer than ``max_header_bytes`` has only its fields counted
    # (``_small_read``).

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._partial = True
        self._pending = None
        self._header_deadline.after(self.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._pending = None

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's own (0.55) without its per-field limits (checked once per read and when the headers are complete).
        # llhttp keeps trailing whitespace, which RFC 9110 excludes from the value.
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))
        self._pending = None

    def _over_header_limits(self) -> bool:
        headers = self.headers
        return len(headers) > self.max_headers or (
            len(self.url) + 4 * len(headers) + sum(map(len, chain.from_iterable(headers))) + (self._pending or 0)
            > self.max_header_bytes)

    def on_headers_complete(self) -> None:
        self._partial = False
        self._header_deadline.when = None  # ``drop()`` without a call
        if len(self.headers) > self.max_headers if self._small_read else self._over_header_limits():
            self._refused = True
            raise ValueError("header limit")  # stops the parser: data_received answers 431
        route = self._fast_routes.get(self.url) if self._fast_routes else None
        if (route is None or self.parser.get_method() != b"POST" or self.parser.get_http_version() != "1.1"
                or self.parser.should_upgrade() or (self.cycle is not None and not self.cycle.response_complete)):
            super().on_headers_complete()  # uvicorn's own cycle (pipelined requests queue there)
            return
        assert self._fast is not None
        scope = self.scope
        scope["method"] = "POST"
        scope["path"] = self.url.decode("ascii")
        scope["raw_path"] = self.url
        scope["query_string"] = b""
        scope["app"] = scope["litestar_app"] = self.app  # type: ignore[typeddict-unknown-key]  # as Litestar sets them
        self.cycle = FastCycle(self, route, self.parser.should_keep_alive())  # type: ignore[assignment]
        self._start_asgi_task(self.cycle, self.app)

    def on_response_complete(self) -> None:
        # uvicorn's own (0.55), with one keep-alive timer per connection instead of a new one per response
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        self._idle_deadline.after(self.timeout_keep_alive)

    def _keep_alive_expired(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _header_timeout_expired(self) -> None:
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


class FastCycle:
    """One request to a fast route (``Surface.fast_routes``), served on uvicorn's connection without uvicorn's
    per-request ASGI cycle (its message checks, the app's middleware stack and Litestar's entry): the route's
    :meth:`FastPath.serve` gets ``receive`` and ``send`` that read the request body and write the reply on the
    transport themselves. It is a drop-in for uvicorn's ``RequestResponseCycle`` as the protocol uses it — ``body``,
    ``more_body``, ``message_event`` (fed by the parser), ``disconnected``, ``keep_alive`` (cleared by a graceful
    shutdown), ``response_complete`` — so keep-alive, pipelining, flow control, disconnects and shutdown stay
    uvicorn's. HTTP/1.0, upgrades and pipelined requests behind an unfinished one take uvicorn's cycle instead."""

    __slots__ = ("_protocol", "_route", "scope", "_started", "_chunked", "_length", "_head", "body", "more_body",
                 "message_event", "disconnected", "keep_alive", "response_complete", "_continue", "on_response",
                 "_message", "_waiter")

    def __init__(self, protocol: LimitedHttpToolsProtocol, route: Route, keep_alive: bool) -> None:
        self._protocol, self._route = protocol, route
        self.scope = protocol.scope  # the protocol's moves on to a pipelined request's
        # bytes, not uvicorn's bytearray: the parser's ``body += data`` then keeps a body that comes in one read as it
        # is (``b"" + data`` is ``data``), and it is handed over without a copy (reading pauses past 64 KB buffered)
        self.body = b""
        self.more_body = True
        # uvicorn's protocol calls ``message_event.set()`` when body bytes come or the connection goes: the cycle is
        # that event itself (:meth:`set`), instead of an asyncio.Event per request
        self.message_event: FastCycle | _Ended = self
        self._message = False
        self._waiter: asyncio.Future[None] | None = None
        self.disconnected = self.response_complete = self._started = self._chunked = False
        self.keep_alive = keep_alive
        self._continue = protocol.expect_100_continue
        self._length = 0
        self._head = b""
        self.on_response: Callable[[], None] = protocol.on_response_complete

    async def run_asgi(self, app: Any) -> None:
        protocol = self._protocol
        assert protocol._fast is not None
        try:
            await protocol._fast.serve(self._route, self.scope, self.receive, self.send)
        except BaseException as exc:
            protocol.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self._started:
                await self._internal_error()
            else:
                protocol.transport.close()
        else:
            if not self._started and not self.disconnected:
                protocol.logger.error("ASGI callable returned without starting response.")
                await self._internal_error()
            elif not self.response_complete and not self.disconnected:
                protocol.logger.error("ASGI callable returned without completing response.")
                protocol.transport.close()
        finally:
            # nothing waits on the cycle now: it stops being its own event, or it would stay in a reference cycle
            # (left to the collector: every ~1,200 requests a young collection of ~10,000 objects)
            self.on_response = _nothing
            self.message_event = _ENDED

    async def _internal_error(self) -> None:
        await self.send({"type": "http.response.start", "status": 500, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21"), (b"connection", b"close")]})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error"})

    def set(self) -> None:
        """``message_event.set()``: body bytes came, the request ended or the connection went; wakes :meth:`receive`."""
        self._message = True
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def whole_body(self) -> bytes | None:
        """The request's body, if all of it has come and no ``100 Continue`` is owed; else ``None`` (read it with
        :meth:`receive`). :func:`llama_host.fastpath.whole_body` takes it so, without a message per read."""
        if self.more_body or self._continue or self.disconnected or self.response_complete:
            return None
        body, self.body = self.body, b""
        self._message = False
        return body

    async def receive(self) -> Any:
        transport = self._protocol.transport
        if self._continue and not transport.is_closing():
            transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self._continue = False
        if not self.disconnected and not self.response_complete:
            self._protocol.flow.resume_reading()
            if not self._message:
                self._waiter = self._protocol.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            self._message = False
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body, self.body = self.body, b""
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send_whole(self, status: int, content_type: bytes, body: bytes) -> None:
        """A whole reply with a content type and nothing else of its own, in one write: what :meth:`send` writes
        for its two messages, without making and reading them (:class:`llama_host.fastpath.FastPath` calls it for
        its replies in bytes when nothing wraps ``send``)."""
        protocol = self._protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()
        if self.disconnected:
            return
        if self._started:
            raise RuntimeError("expected 'http.response.start', got a whole reply")
        if content_type not in _FIELD_VALUES_CHECKED:
            if HEADER_VALUE_RE.search(content_type):
                raise RuntimeError("invalid HTTP header name or value")  # nothing written: the caller may answer 500
            if len(_FIELD_VALUES_CHECKED) < 64:
                _FIELD_VALUES_CHECKED.add(content_type)
        defaults = protocol.server_state.default_headers
        if defaults is not protocol._default_headers:  # uvicorn makes a new list each second (the Date)
            protocol._default_headers = defaults
            protocol._default_lines = b"".join(b"%s: %s\r\n" % field for field in defaults)
        self._started = True
        self._continue = False
        protocol.transport.write(b"".join((
            STATUS_LINE[status], protocol._default_lines, b"content-type: ", content_type, b"\r\ncontent-length: ",
            b"%d" % len(body), b"\r\n\r\n" if self.keep_alive else b"\r\nconnection: close\r\n\r\n", body)))
        self._complete()

    async def send(self, message: Any) -> None:
        protocol = self._protocol
        if protocol.flow.write_paused and not self.disconnected:
            await protocol.flow.drain()
        if self.disconnected:
            return
        if not self._started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected 'http.response.start', got '{message['type']}'")
            content = [STATUS_LINE[message["status"]]]
            names, values = [], []
            length: int | None = None
            close = False
            for name, value in (*protocol.server_state.default_headers, *message.get("headers", ())):
                name = name.lower()
                if name == b"content-length" and length is None:
                    length = int(value)
                elif name == b"connection" and b"close" in value.lower():
                    close = True
                names.append(name)
                values.append(value)
                content += (name, b": ", value, b"\r\n")
            # one scan of all names and one of all values for what would break the head (uvicorn: two per field)
            if HEADER_RE.search(b"-".join(names)) or HEADER_VALUE_RE.search(b"\t".join(values)):
                raise RuntimeError("invalid HTTP header name or value")  # nothing written: the caller may answer 500
            self._started = True
            self._continue = False
            if close:
                self.keep_alive = False
            elif not self.keep_alive:
                content.append(b"connection: close\r\n")
            if length is None:
                self._chunked = True
                content.append(b"transfer-encoding: chunked\r\n")
            else:
                self._length = length
            content.append(b"\r\n")
            if self._chunked:
                protocol.transport.write(b"".join(content))
            else:  # written with the body: one segment for a whole reply
                self._head = b"".join(content)
            return
        if self.response_complete:
            raise RuntimeError(f"unexpected '{message['type']}' after the response completed")
        if message["type"] != "http.response.body":
            raise RuntimeError(f"expected 'http.response.body', got '{message['type']}'")
        body = message.get("body", b"")
        more = message.get("more_body", False)
        if self._chunked:
            frame = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
            if not more:
                frame.append(b"0\r\n\r\n")
            if frame:
                protocol.transport.write(b"".join(frame))
        else:
            self._length -= len(body)
            if self._length < 0:
                raise RuntimeError("response content longer than Content-Length")
            if self._head:
                body, self._head = self._head + body, b""
            protocol.transport.write(body)
        if not more:
            if self._length:
                raise RuntimeError("response content shorter than Content-Length")
            self._complete()

    def _complete(self) -> None:
        """The reply's last byte is written: wake a pending :meth:`receive`, close or keep the connection."""
        self.response_complete = True
        if self._waiter is not None:
            self.set()
        else:
            self._message = True
        if not self.keep_alive:
            self._protocol.transport.close()
        self.on_response()


#: content types :meth:`FastCycle.send_whole` has checked (a few: those of the surfaces' replies)
_FIELD_VALUES_CHECKED: set[bytes] = set()


def _nothing() -> None:
    pass


class _Ended:
    """The ``message_event`` of a :class:`FastCycle` whose run has ended: ``set()`` does nothing."""

    __slots__ = ()

    set = staticmethod(_nothing)


_ENDED = _Ended()


def protocol_class(limits: LimitSettings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class enforcing ``limits`` (uvicorn instantiates it once per connection)."""
    return type("SiteHttpToolsProtocol", (LimitedHttpToolsProtocol,), {
        "header_timeout": limits.header_timeout, "max_headers": limits.max_headers,
        "max_header_bytes": limits.max_header_bytes})


#: The cyclic collector's thresholds while the host serves (Python's defaults: 700, 10, 10). A relayed request makes
#: no cyclic garbage, but the requests in flight hold a few hundred young objects between them: at 700 a young
#: collection came every ~150 requests and a full one (every object of the process: 33–46 ms with the loop stopped)
#: every 10,000–15,000. At 10,000 none came in 30,000 relayed requests at concurrency 32: −7% instructions per
#: request, +4% requests/s (bench/README.md, "The hot path, fifth pass").
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """Raise the collector's thresholds to :data:`GC_THRESHOLDS` (never lower them)."""
    gc.set_threshold(*map(max, gc.get_threshold(), GC_THRESHOLDS))


def freeze_startup_objects() -> None:
    """Once the host is ready: collect what starting left behind, then move every object that is left (modules,
    classes, the plugins, the config: ~85,000) out of the collector's reach, so that a full collection walks only
    what the host made since (``gc.freeze``). One collection at start (~40 ms); what of the frozen objects a reload
    later drops in a cycle stays (at most once: only what starting made is frozen)."""
    gc.collect()
    gc.freeze()


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
