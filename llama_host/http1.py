"""A lean HTTP/1.1 client for the hop to the runners: keep-alive connections per runner address, ``httptools``
parsing the responses (the parser uvicorn uses for the requests), whole-bytes request bodies.

Why not aiohttp's client here: it was ~35% of the samples of a relayed request (request and response objects, URL
and header multidicts, timers, the connector's bookkeeping); with this client instead the host's CPU per relayed
request fell from ~780 to ~470 µs and per streamed event from 7 to 4 µs (bench/README.md, "The runner hop"). aiohttp
stays for what this one does not do: TLS, streamed request bodies (uploads), HEAD, and the peers.

The errors tell the relay's retry logic what happened: :class:`ConnectFailed` (nothing listens: the request was not
sent), :class:`Disconnected` (closed after the request went out, before any of the answer: a stale keep-alive
connection, or a runner that went away), :class:`Reset` (reset before any of the answer). Once the answer has begun,
a lost connection is an error of the response's body (:class:`Reset` or :class:`Disconnected` from ``read`` or
``chunks``).
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections import deque
from collections.abc import AsyncGenerator, Mapping
from urllib.parse import urlsplit

import httptools
from multidict import CIMultiDict

#: what would split a request's head (a space, too, in the path: it would end the request line; header fields are
#: checked by counting their line breaks)
_UNSAFE = re.compile(r"[\r\n\0]")
#: a stream's unread bytes past this pause reading from the runner (backpressure from a slow client)
HIGH_WATER = 256 * 1024
#: an idle pooled connection older than this is closed when the pool is next used
IDLE_TIMEOUT = 30.0
#: after :meth:`Response.done`, what a connection may still read of the body's end (a stream's last chunk framing)
#: before it goes back to the pool; past either it is closed instead
DRAIN_SECONDS = 1.0
DRAIN_BYTES = 64 * 1024
CONNECT_TIMEOUT = 10.0


class ConnectFailed(ConnectionError):
    """The connection could not be made: the request was not sent."""

    def __init__(self, os_error: OSError | str) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


class Disconnected(ConnectionError):
    """The server closed the connection before (the rest of) the answer."""


class Reset(ConnectionError):
    """The connection was reset (or failed) before (the rest of) the answer."""


class ProtocolError(ConnectionError):
    """The server's bytes are not HTTP/1.1."""


@functools.lru_cache(maxsize=256)  # asked once per request, of a few runner addresses
def supports(base_url: str) -> bool:
    """Whether this client can reach ``base_url``: plain http, without credentials in the URL (aiohttp sends those as
    Basic auth)."""
    return base_url.startswith("http://") and "@" not in base_url[7:].partition("/")[0]


class Response:
    """One answer: ``status``, ``headers`` (case-insensitive), the body through ``read()`` or ``chunks()``.
    ``close()`` before the end drops the connection (which stops a runner's generation); after it, the connection
    goes back to the pool."""

    __slots__ = ("status", "headers", "_conn", "_parts", "_size", "_eof", "_error", "_waiter", "_closed")

    def __init__(self, conn: _Connection, status: int, headers: CIMultiDict[str]) -> None:
        self._conn = conn
        self.status = status
        self.headers = headers
        self._parts: list[bytes] = []
        self._size = 0
        self._eof = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def _feed(self, data: bytes) -> None:
        self._parts.append(data)
        self._size += len(data)
        if self._size > HIGH_WATER:
            self._conn.pause()
        if self._waiter is not None:
            self._wake()

    def _finish(self, error: BaseException | None = None) -> None:
        if not self._eof:
            self._eof = True
            self._error = error
            if self._waiter is not None:
                self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = self._conn.loop.create_future()
        await self._waiter

    def _take(self) -> bytes:
        parts = self._parts
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._parts = []
        self._size = 0
        if self._conn._paused:
            self._conn.resume()
        return data

    async def read(self) -> bytes:
        """The whole body."""
        while not self._eof:
            await self._wait()
        if self._error is not None:
            raise self._error
        return self._take() if self._parts else b""

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        """The body as it comes: each item is everything received since the last one."""
        while True:
            if self._parts:
                yield self._take()
            elif self._eof:
                if self._error is not None:
                    raise self._error
                return
            else:
                await self._wait()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._conn.response_closed(self._eof and self._error is None)

    def done(self) -> None:
        """The answer is over for the caller though its body has not ended yet (a stream's ``[DONE]`` came before
        the chunked body's last chunk): the connection reads that end and goes back to the pool, instead of being
        closed (and a new one made for the next request). More than :data:`DRAIN_BYTES` or no end within
        :data:`DRAIN_SECONDS`: it is closed. At the body's end already, or after an error: :meth:`close`."""
        if self._eof or self._closed:
            self.close()
            return
        self._closed = True
        self._parts = []
        self._size = 0
        self._conn.drain()


class _Connection(asyncio.Protocol):
    """One keep-alive connection: one request at a time."""

    def __init__(self, pool: Pool, key: tuple[str, int]) -> None:
        self._pool, self.key = pool, key
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._head: asyncio.Future[Response] | None = None
        self._response: Response | None = None
        self._headers: list[tuple[str, str]] = []
        self._paused = False
        self.idle_since = 0.0
        self._keep_alive = False
        self._complete = False
        #: the running loop, kept: each ``asyncio.get_running_loop()`` is a ``getpid`` system call on Python 3.11
        self.loop = asyncio.get_running_loop()
        self.gone: asyncio.Future[None] = self.loop.create_future()  # done once the connection is lost
        self._until_eof = False  # the answer has neither a length nor chunks: its body ends with the connection
        self._draining: asyncio.TimerHandle | None = None  # reading the end of a body no one reads (drain)
        self._drained = 0

    # asyncio protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._lost(ProtocolError(f"the runner's answer is not HTTP/1.1 ({exc})"))
            self._close()

    def eof_received(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self.gone.done()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
        if not self.gone.done():
            self.gone.set_result(None)
        self._pool.forget(self)
        self._lost(Reset(str(exc) or type(exc).__name__) if exc is not None else Disconnected(
            "the server closed the connection"))

    def _lost(self, error: Exception) -> None:
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        elif self._response is not None and not self._complete:
            self._response._finish(None if self._until_eof and isinstance(error, Disconnected) else error)

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status < 200:  # 1xx: an interim answer, the real one follows
            self._headers = []
            return
        headers = CIMultiDict(self._headers)
        self._headers = []
        self._until_eof = ("content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
                           and status not in (204, 304))
        self._response = Response(self, status, headers)
        if self._head is not None and not self._head.done():
            self._head.set_result(self._response)

    def on_body(self, body: bytes) -> None:
        if self._draining is not None:
            self._drained += len(body)
            if self._drained > DRAIN_BYTES:
                self._close()
        elif self._response is not None:
            self._response._feed(body)

    def on_message_complete(self) -> None:
        if self._response is None:  # the end of a 1xx
            return
        self._complete = True
        self._keep_alive = self._parser.should_keep_alive()
        if self._draining is not None:
            self._draining.cancel()
            self._draining = None
            self.response_closed(True)
            return
        self._response._finish()

    # used by the pool and the response
    def send(self, data: bytes) -> asyncio.Future[Response]:
        assert self.transport is not None
        self._head = self.loop.create_future()
        self._response = None
        self._complete = False
        self._pool.write_soon(self.loop, self.transport, data)
        return self._head

    def pause(self) -> None:
        if not self._paused and self.transport is not None and not self.gone.done():
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None and not self.gone.done():
            self._paused = False
            self.transport.resume_reading()

    def drain(self) -> None:
        """Read the rest of the answer unread (:meth:`Response.done`), then back to the pool."""
        if self.closed:
            return
        self._drained = 0
        self._draining = self.loop.call_later(DRAIN_SECONDS, self._close)
        self.resume()

    def response_closed(self, whole: bool) -> None:
        if whole and self._keep_alive and not self.gone.done():
            if self._paused:
                self.resume()
            self._head = self._response = None
            self._pool.release(self)
        else:
            self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.gone.done():
            self.transport.close()


class Pool:
    """Keep-alive connections per (host, port), most recently used first; the requests of one relay. A request may
    bound the connections to its server (``limit``: a server that serves only so many at once leaves the others'
    requests unread): past it, it waits for one of them to come back or close."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._targets: dict[str, tuple[tuple[str, int], str, str]] = {}
        self._heads: dict[tuple[object, ...], bytes] = {}  # request line and fields, by method, server, path, fields
        self._open: set[_Connection] = set()
        self._counts: dict[tuple[str, int], int] = {}  # connections open or opening, per server
        self._writes: list[tuple[asyncio.Transport, bytes]] = []  # requests of this turn of the loop, not sent yet
        self._waiters: dict[tuple[str, int], deque[asyncio.Future[None]]] = {}

    def _target(self, base_url: str) -> tuple[tuple[str, int], str, str]:
        target = self._targets.get(base_url)
        if target is None:
            parts = urlsplit(base_url)
            host = parts.hostname or "127.0.0.1"
            port = parts.port or 80
            host_header = parts.netloc.rpartition("@")[2]
            target = self._targets[base_url] = ((host, port), parts.path.rstrip("/"), host_header)
            if len(self._targets) > 4096:  # runners come and go with new ports
                self._targets.clear()
        return target

    async def request(self, method: str, base_url: str, path: str, body: bytes | None,
                      headers: Mapping[str, str], fresh: bool = False, limit: int | None = None) -> Response:
        """Send one request on an idle connection to ``base_url`` (or a new one, always when ``fresh``; at most
        ``limit`` connections to that server) and wait for the answer's head."""
        key, prefix, host_header = self._target(base_url)
        head_key = (method, base_url, path, *headers.items())
        head = self._heads.get(head_key)
        if head is None:  # a request line and fields not sent before: checked and encoded once
            fields = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            if (" " in path or _UNSAFE.search(path) or "\0" in fields
                    or fields.count("\n") != len(headers) or fields.count("\r") != len(headers)):
                raise ValueError(f"refused: the path or a header of a request to {base_url} has a line break or space")
            head = f"{method} {prefix}{path} HTTP/1.1\r\nHost: {host_header}\r\n{fields}".encode("latin-1")
            if len(self._heads) >= 4096:  # paths and runners come and go
                self._heads.clear()
            self._heads[head_key] = head
        if body is not None or method in ("POST", "PUT", "PATCH"):
            data = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body) if body else 0, body or b"")
        else:
            data = head + b"\r\n"
        conn = None if fresh else self._acquire(key)
        while conn is None:
            if limit is None or self._counts.get(key, 0) < limit:
                conn = await self._connect(key)
                break
            idle = self._idle.get(key)
            if fresh and idle:  # room for a new connection: the oldest idle one goes
                idle.pop(0)._close()
            await self._wait_turn(key)
            conn = None if fresh else self._acquire(key)
        try:
            return await conn.send(data)
        except BaseException:  # cancelled (the client went away) or failed before the answer: drop the connection,
            conn._close()      # which also tells the runner to stop
            raise

    def write_soon(self, loop: asyncio.AbstractEventLoop, transport: asyncio.Transport, data: bytes) -> None:
        """Send ``data`` once the callbacks ready now have run, with the other requests they send: the runner wakes
        once for all of them instead of once each (with the client and the runner on the same cores, each wakeup
        costs them CPU: bench/README.md, "The hot path, third pass")."""
        if not self._writes:
            loop.call_soon(self._flush)
        self._writes.append((transport, data))

    def _flush(self) -> None:
        writes, self._writes = self._writes, []
        for transport, data in writes:
            if not transport.is_closing():
                transport.write(data)

    def _acquire(self, key: tuple[str, int]) -> _Connection | None:
        idle = self._idle.get(key)
        if not idle:
            return None
        now = idle[-1].loop.time()
        while idle and now - idle[0].idle_since > IDLE_TIMEOUT:
            idle.pop(0)._close()
        while idle:
            conn = idle.pop()
            if not conn.gone.done():
                return conn
        return None

    async def _connect(self, key: tuple[str, int]) -> _Connection:
        loop = asyncio.get_running_loop()
        self._counts[key] = self._counts.get(key, 0) + 1  # counted while connecting: a limit holds for bursts too
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                _, conn = await loop.create_connection(lambda: _Connection(self, key), *key)
        except BaseException as exc:
            self._uncount(key)
            if isinstance(exc, TimeoutError):
                raise ConnectFailed(f"no connection to {key[0]}:{key[1]} within {CONNECT_TIMEOUT:.0f} s") from None
            if isinstance(exc, OSError):
                raise ConnectFailed(exc) from None
            raise
        self._open.add(conn)
        return conn

    async def _wait_turn(self, key: tuple[str, int]) -> None:
        """Until a connection to ``key`` comes back to the pool or closes."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(key, deque())
        waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._wake(key)  # woken, then cancelled: the turn goes to the next
            raise
        finally:
            if not waiter.done() or waiter.cancelled():
                try:
                    waiters.remove(waiter)
                except ValueError:
                    pass
            if not waiters:
                self._waiters.pop(key, None)

    def _wake(self, key: tuple[str, int]) -> None:
        waiters = self._waiters.get(key)
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _uncount(self, key: tuple[str, int]) -> None:
        left = self._counts.get(key, 0) - 1
        if left > 0:
            self._counts[key] = left
        else:
            self._counts.pop(key, None)
        self._wake(key)

    def release(self, conn: _Connection) -> None:
        conn.idle_since = conn.loop.time()
        self._idle.setdefault(conn.key, []).append(conn)
        if self._waiters:
            self._wake(conn.key)

    def forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._uncount(conn.key)
        self._open.discard(conn)
        idle = self._idle.get(conn.key)
        if idle is not None:
            try:
                idle.remove(conn)
            except ValueError:
                pass
            if not idle:
                del self._idle[conn.key]

    async def close(self) -> None:
        """Close every connection and wait until they are."""
        conns = list(self._open)
        for conn in conns:
            if conn.transport is not None and not conn.closed:
                conn.transport.abort()
        self._idle.clear()
        if conns:
            await asyncio.wait([conn.gone for conn in conns], timeout=5)
