"""The lean HTTP/1.1 client of the runner hop (llama_host.http1) against raw socket servers that answer as a test
says: keep-alive reuse, chunked and length-less bodies, interim answers, backpressure, and each way a connection
can fail, told apart as the relay's retry logic needs."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from llama_host import http1

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A raw TCP server; ``connections`` counts accepted connections, ``requests`` keeps each request head."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.requests: list[bytes] = []
        self.closed = asyncio.Event()

    async def __aenter__(self) -> Server:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.closed.set()
            writer.close()

    async def head(self, reader: asyncio.StreamReader) -> bytes:
        head = await reader.readuntil(b"\r\n\r\n")
        self.requests.append(head)
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                await reader.readexactly(int(line.split(b":")[1]))
        return head


def answer(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


async def test_keep_alive_connections_are_reused_and_the_request_is_sent_whole():
    async def handler(reader, writer):
        while True:
            await server.head(reader)
            writer.write(answer(b"hello"))

    pool = http1.Pool()
    async with Server(handler) as server:
        for _ in range(3):
            r = await pool.request("POST", server.url + "/base/", "/v1/x", b'{"a":1}', {"X-Key": "k"})
            assert (r.status, r.headers["content-type"], await r.read()) == (200, "text/plain", b"hello")
            r.close()
        assert server.connections == 1
        first = server.requests[0].decode()
        assert first.startswith("POST /base/v1/x HTTP/1.1\r\n")
        assert "X-Key: k\r\n" in first and "Content-Length: 7\r\n" in first and f"Host: {server.url[7:]}" in first
        await pool.close()


async def test_a_request_head_is_encoded_once_and_each_request_keeps_its_own_length_and_fields():
    """The request line and fields are checked and encoded once per method, server, path and fields; each request
    still gets its own Content-Length and body, and other fields make a new head."""
    bodies: list[bytes] = []

    async def handler(reader, writer):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            server.requests.append(head)
            length = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")]
            bodies.append(await reader.readexactly(length[0]) if length else b"")
            writer.write(answer(b"ok"))

    pool = http1.Pool()
    async with Server(handler) as server:
        sent = [("POST", b'{"a":1}', {"X-Key": "k"}), ("POST", b'{"bb":22}', {"X-Key": "k"}), ("GET", None, {"X-Key": "k"}),
                ("POST", b"{}", {"X-Key": "other"}), ("POST", b"", {"X-Key": "k"})]
        for method, body, headers in sent:
            r = await pool.request(method, server.url, "/v1/x", body, headers)
            assert await r.read() == b"ok"
            r.close()
        with pytest.raises(ValueError):  # a bad field is refused after a good one to the same path too
            await pool.request("POST", server.url, "/v1/x", b"{}", {"X-Key": "k\r\nX-Injected: 1"})
        heads = [h.decode() for h in server.requests]
        assert bodies == [b'{"a":1}', b'{"bb":22}', b"", b"{}", b""]
        assert ["Content-Length: 7\r\n" in heads[0], "Content-Length: 9\r\n" in heads[1],
                "Content-Length" not in heads[2], "Content-Length: 2\r\n" in heads[3],
                "Content-Length: 0\r\n" in heads[4]] == [True] * 5
        assert heads[2].startswith("GET /v1/x HTTP/1.1\r\n") and "X-Key: other\r\n" in heads[3]
        assert all("X-Key: k\r\n" in heads[i] for i in (0, 1, 2, 4)) and len(server.requests) == 5
        await pool.close()


async def test_an_answer_with_connection_close_is_not_reused():
    async def handler(reader, writer):
        await server.head(reader)
        writer.write(answer(b"bye", b"Connection: close\r\n"))
        await writer.drain()

    pool = http1.Pool()
    async with Server(handler) as server:
        r = await pool.request("GET", server.url, "/", None, {})
        assert await r.read() == b"bye"
        r.close()
        r = await pool.request("GET", server.url, "/", None, {})
        r.close()
        assert server.connections == 2
        await pool.close()


async def test_chunked_stream_arrives_as_it_is_sent_and_a_length_less_body_ends_with_the_connection():
    go = asyncio.Event()

    async def handler(reader, writer):
        while True:
            head = await server.head(reader)
            if b"/eof" in head:
                writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end")
                return
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                         b"\r\n6\r\ndata:1\r\n")
            await writer.drain()
            await go.wait()
            writer.write(b"6\r\ndata:2\r\n0\r\n\r\n")
            await writer.drain()

    pool = http1.Pool()
    async with Server(handler) as server:
        r = await pool.request("POST", server.url, "/s", b"{}", {})
        chunks = r.chunks()
        assert await anext(chunks) == b"data:1"  # before the rest was even written
        go.set()
        assert [c async for c in chunks] == [b"data:2"]
        r.close()
        r = await pool.request("GET", server.url, "/eof", None, {})
        assert await r.read() == b"until the end"
        r.close()
        await pool.close()


@pytest.mark.parametrize("end", ["comes", "never comes", "too long"])
async def test_done_before_the_body_ends_keeps_the_connection_once_the_end_comes(end: str,
                                                                               monkeypatch: pytest.MonkeyPatch):
    """A stream's ``[DONE]`` can arrive before the chunked body's last chunk: ``done()`` then lets the connection read
    that end and go back to the pool. An end that does not come in time, or more than a little body before it,
    closes the connection instead."""
    monkeypatch.setattr(http1, "DRAIN_SECONDS", 0.3)
    go = asyncio.Event()

    async def handler(reader, writer):
        while True:
            head = await server.head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"e\r\ndata: [DONE]\n\n\r\n")
            await writer.drain()
            if b"/first" not in head:
                writer.write(b"0\r\n\r\n")
                continue
            await go.wait()
            if end == "too long":
                writer.write(b"%x\r\n%s\r\n" % (http1.DRAIN_BYTES + 1, b"x" * (http1.DRAIN_BYTES + 1)))
            if end != "never comes":
                writer.write(b"0\r\n\r\n")
            await writer.drain()

    pool = http1.Pool()
    async with Server(handler) as server:
        r = await pool.request("POST", server.url, "/first", b"{}", {})
        chunks = r.chunks()
        assert await anext(chunks) == b"data: [DONE]\n\n"
        await chunks.aclose()
        r.done()
        if end == "never comes":
            await asyncio.sleep(0.6)  # past DRAIN_SECONDS
        go.set()
        await asyncio.sleep(0.1)
        r = await pool.request("POST", server.url, "/second", b"{}", {})
        assert await r.read() == b"data: [DONE]\n\n"
        r.close()
        assert server.connections == (1 if end == "comes" else 2)
        if end != "comes":  # the first connection was closed, not left draining
            await asyncio.wait_for(server.closed.wait(), 5)
        await pool.close()


async def test_an_interim_answer_is_skipped():
    async def handler(reader, writer):
        await server.head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"ok"))

    pool = http1.Pool()
    async with Server(handler) as server:
        r = await pool.request("POST", server.url, "/", b"x", {})
        assert (r.status, await r.read()) == (200, b"ok")
        r.close()
        await pool.close()


async def test_each_failure_is_told_apart():
    async def close_unanswered(reader, writer):
        await server.head(reader)

    async def reset(reader, writer):
        await server.head(reader)
        writer.transport.abort()

    async def garbage(reader, writer):
        await server.head(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await reader.read()

    async def cut(reader, writer):
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    pool = http1.Pool()
    for handler, error in ((close_unanswered, http1.Disconnected), (reset, (http1.Reset, http1.Disconnected)),
                           (garbage, http1.ProtocolError)):
        async with Server(handler) as server:
            with pytest.raises(error):
                await pool.request("POST", server.url, "/", b"{}", {})
    async with Server(cut) as server:
        r = await pool.request("POST", server.url, "/", b"{}", {})
        with pytest.raises(http1.Disconnected):
            await r.read()
        r.close()
    url = server.url  # that server is closed: nothing listens there now
    with pytest.raises(http1.ConnectFailed) as info:
        await pool.request("GET", url, "/", None, {})
    assert isinstance(info.value.os_error, OSError)
    await pool.close()


async def test_a_pooled_connection_the_server_closed_is_dropped_and_fresh_bypasses_the_pool():
    async def handler(reader, writer):
        await server.head(reader)
        writer.write(answer(b"one"))  # keep-alive announced, then closed anyway (as llama-server does after a while)
        await writer.drain()

    pool = http1.Pool()
    async with Server(handler) as server:
        r = await pool.request("GET", server.url, "/", None, {})
        assert await r.read() == b"one"
        r.close()
        await asyncio.wait_for(server.closed.wait(), 5)
        await asyncio.sleep(0.05)  # the close reaches the client
        r = await pool.request("GET", server.url, "/", None, {})  # not on the dead connection
        assert await r.read() == b"one"
        r.close()
        r = await pool.request("GET", server.url, "/", None, {}, fresh=True)
        r.close()
        assert server.connections == 3
        await pool.close()


async def test_a_slow_reader_pauses_the_server_and_closing_early_drops_the_connection():
    sent = 0
    size = 64 * 1024

    async def handler(reader, writer):
        nonlocal sent
        await server.head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (size, b"x" * size)
        while True:  # an endless stream: only backpressure bounds it
            writer.write(chunk)
            await writer.drain()
            sent += size

    pool = http1.Pool()
    async with Server(handler) as server:
        r = await pool.request("POST", server.url, "/", b"{}", {})
        await asyncio.sleep(0.5)  # nobody reads
        buffered = sent
        await asyncio.sleep(0.3)
        assert sent == buffered, "the server kept writing: reading was not paused"
        assert sent < 64 * 1024 * 1024  # bounded by the client's high-water mark and the kernel's socket buffers
        chunks = r.chunks()
        got = len(await anext(chunks))
        assert http1.HIGH_WATER <= got <= http1.HIGH_WATER + 2 * size
        for _ in range(50):  # the server writes again once the kernel's window reopens: a few turns of both loops
            if sent > buffered:
                break
            await asyncio.sleep(0.1)
        assert sent > buffered, "reading did not resume"
        r.close()  # before the end: the connection is dropped, which ends the server's writes
        await asyncio.wait_for(server.closed.wait(), 5)
        await pool.close()


async def test_a_request_cancelled_before_its_answer_drops_the_connection():
    async def handler(reader, writer):
        await server.head(reader)
        await reader.read()  # no answer: returns when the client closes

    pool = http1.Pool()
    async with Server(handler) as server:
        task = asyncio.create_task(pool.request("POST", server.url, "/", b"{}", {}))
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.closed.wait(), 5)  # the server saw the connection closed
        await pool.close()


async def test_a_line_break_in_a_header_or_the_path_is_refused_before_anything_is_sent():
    async def handler(reader, writer):
        await server.head(reader)

    pool = http1.Pool()
    async with Server(handler) as server:
        for path, headers in (("/", {"X-A": "1\r\nX-Injected: 2"}), ("/ HTTP/1.0\r\n", {}), ("/a b", {}),
                              ("/", {"X\nB": "1"})):
            with pytest.raises(ValueError):
                await pool.request("POST", server.url, path, b"{}", headers)
        assert server.connections == 0
        await pool.close()


def test_what_the_lean_client_leaves_to_aiohttp():
    assert http1.supports("http://127.0.0.1:8080") and http1.supports("http://runner:80/base")
    assert not http1.supports("https://api.example.com")  # TLS
    assert not http1.supports("http://user:secret@10.0.0.2:8080")  # credentials in the URL (Basic auth)


async def test_a_limit_bounds_the_connections_to_a_server_and_the_rest_wait_their_turn():
    """A server that serves only so many connections at once (llama-server: its HTTP threads) gets no more: the
    other requests wait for a connection to come back, a cancelled one gives its turn away, and a request that needs
    a fresh connection makes room by closing an idle one."""
    open_now = peak = 0
    gate = asyncio.Event()

    async def handler(reader, writer):
        nonlocal open_now, peak
        open_now += 1
        peak = max(peak, open_now)
        try:
            while True:
                await server.head(reader)
                await gate.wait()
                writer.write(answer(b"ok"))
        finally:
            open_now -= 1

    async def one() -> bytes:
        r = await pool.request("POST", server.url, "/x", b"{}", {}, limit=2)
        data = await r.read()
        r.close()
        return data

    pool = http1.Pool()
    async with Server(handler) as server:
        tasks = [asyncio.create_task(one()) for _ in range(6)]
        await asyncio.sleep(0.2)
        tasks[5].cancel()  # waiting its turn
        assert server.connections == 2 and len(server.requests) == 2
        gate.set()
        assert await asyncio.gather(*tasks[:5]) == [b"ok"] * 5
        assert tasks[5].cancelled() and server.connections == 2 and peak == 2
        r = await pool.request("POST", server.url, "/x", b"{}", {}, fresh=True, limit=2)  # both idle: one goes
        assert await r.read() == b"ok" and server.connections == 3
        r.close()
        await pool.close()


async def test_requests_sent_in_one_turn_of_the_loop_are_written_together_in_order():
    written: list[bytes] = []

    class Transport:
        def __init__(self, closing: bool = False) -> None:
            self.closing = closing

        def is_closing(self) -> bool:
            return self.closing

        def write(self, data: bytes) -> None:
            written.append(data)

    pool, loop = http1.Pool(), asyncio.get_running_loop()
    for data in (b"a", b"b"):
        pool.write_soon(loop, Transport(), data)  # type: ignore[arg-type]
    pool.write_soon(loop, Transport(closing=True), b"gone")  # type: ignore[arg-type]  # closed meanwhile: dropped
    assert written == []  # nothing yet: the other callbacks of this turn may add theirs
    await asyncio.sleep(0)
    assert written == [b"a", b"b"]
    pool.write_soon(loop, Transport(), b"c")  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert written == [b"a", b"b", b"c"]
