"""The server's own cycle for the fast routes (llama_host.serve.FastCycle) on uvicorn's connections, over raw sockets:
keep-alive and ``Connection: close``, ``Expect: 100-continue``, pipelined requests, chunked request bodies, HTTP/1.0
(uvicorn's cycle), streamed replies, and a failure inside the route. What the replies say is compared with the
Litestar routes in tests/test_fastpath.py; here: that the HTTP around them holds."""

from __future__ import annotations

import gc
import json
import socket
from collections.abc import Iterator
from http.client import HTTPResponse
from typing import Any

import pytest

import fake_llama_server as fake
from llama_host import serve as serve_module
from llama_host.fastpath import FastPath
from llama_host.testing import RunningHost, serve_host

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    tmp = tmp_path_factory.mktemp("fastcycle")
    gguf = tmp / "m.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    config = {"log_dir": str(tmp / "logs"), "models": {"m": {"path": str(gguf), "binary": str(fake.write_wrapper(tmp))}}}
    with serve_host(config, ["openai_api", "llama_server"]) as rh:
        yield rh


@pytest.fixture
def cycles(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths each FastCycle served, in order."""
    served: list[str] = []
    original = serve_module.FastCycle.run_asgi

    async def counted(self: Any, app: Any) -> None:
        served.append(self.scope["path"])
        await original(self, app)

    monkeypatch.setattr(serve_module.FastCycle, "run_asgi", counted)
    return served


def request(body: bytes, *, headers: dict[str, str] | None = None, version: str = "1.1",
            path: str = "/v1/chat/completions") -> bytes:
    fields = {"Host": "127.0.0.1", "Content-Type": "application/json", "Content-Length": str(len(body)),
              **(headers or {})}
    head = f"POST {path} HTTP/{version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    return head.encode() + body


class _Unclosed:
    """A reader HTTPResponse may "close" at the end of each response: the next one reads on."""

    def __init__(self, file: Any) -> None:
        self._file = file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        pass


class Replies:
    """Responses read one after another from one connection."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def makefile(self, *args: Any, **kwargs: Any) -> Any:  # what HTTPResponse asks of a socket
        return _Unclosed(self.file)

    def next(self) -> tuple[HTTPResponse, bytes]:
        response = HTTPResponse(self)  # type: ignore[arg-type]
        response.begin()
        return response, response.read()


def connect(rh: RunningHost) -> socket.socket:
    return socket.create_connection(("127.0.0.1", rh.port()), timeout=30)


def closed_by_server(replies: Replies) -> bool:
    return replies.file.read(1) == b""


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """What the server writes on each new connection, write by write."""
    writes: list[bytes] = []

    class Recording:
        def __init__(self, transport: Any) -> None:
            self._transport = transport

        def __getattr__(self, name: str) -> Any:
            return getattr(self._transport, name)

        def write(self, data: bytes) -> None:
            writes.append(bytes(data))
            self._transport.write(data)

    made = serve_module.LimitedHttpToolsProtocol.connection_made
    monkeypatch.setattr(serve_module.LimitedHttpToolsProtocol, "connection_made",
                        lambda self, transport: made(self, Recording(transport)))
    return writes


def test_keep_alive_then_close(host: RunningHost, cycles: list[str]) -> None:
    body = json.dumps(CHAT).encode()
    with connect(host) as sock:
        replies = Replies(sock)
        for _ in range(2):
            sock.sendall(request(body))
            response, data = replies.next()
            assert response.status == 200 and json.loads(data)["choices"][0]["message"]["content"] == " t0 t1 t2"
            assert response.getheader("connection") is None and response.getheader("date")
        sock.sendall(request(body, headers={"Connection": "close"}))
        response, data = replies.next()
        assert response.status == 200 and response.getheader("connection") == "close"
        assert closed_by_server(replies)
    assert cycles == ["/v1/chat/completions"] * 3


def test_a_whole_reply_is_written_in_one_piece(host: RunningHost, cycles: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The head waits for the body: one write, one segment (a client reads it at once, the kernel sends it once)."""
    writes = record_writes(monkeypatch)
    with connect(host) as sock:
        sock.sendall(request(json.dumps(CHAT).encode()))
        response, data = Replies(sock).next()
    assert response.status == 200 and cycles == ["/v1/chat/completions"]
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(data)


def test_the_whole_reply_write_is_the_asgi_messages_write(host: RunningHost, cycles: list[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """FastPath hands a reply in bytes to ``send_whole`` (one call, no messages): the head it writes is the one the
    two ASGI messages write, for a kept connection and for one the client closes."""
    writes = record_writes(monkeypatch)
    whole_calls: list[int] = []
    original = serve_module.FastCycle.send_whole

    async def counted(self: Any, status: int, content_type: bytes, body: bytes) -> None:
        whole_calls.append(status)
        await original(self, status, content_type, body)

    def heads(with_whole: bool) -> list[bytes]:
        writes.clear()
        with pytest.MonkeyPatch.context() as patch:
            if with_whole:
                patch.setattr(serve_module.FastCycle, "send_whole", counted)
            else:
                patch.delattr(serve_module.FastCycle, "send_whole")
            with connect(host) as sock:
                replies = Replies(sock)
                for close in (False, True):
                    sock.sendall(request(json.dumps(CHAT).encode(), headers={"Connection": "close"} if close else {}))
                    assert replies.next()[0].status == 200
        assert len(writes) == 2
        return [b"\r\n".join(line for line in w.partition(b"\r\n\r\n")[0].split(b"\r\n")
                              if not line.startswith(b"date: ")) for w in writes]

    assert heads(with_whole=True) == heads(with_whole=False)
    assert whole_calls == [200, 200] and cycles == ["/v1/chat/completions"] * 4


@pytest.mark.parametrize("expect", ["100-continue", "100-Continue "])  # a token: any case, trailing space dropped
def test_expect_100_continue(host: RunningHost, cycles: list[str], expect: str) -> None:
    body = json.dumps(CHAT).encode()
    head, _, _ = request(body, headers={"Expect": expect}).partition(b"\r\n\r\n")
    with connect(host) as sock:
        sock.sendall(head + b"\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"  # asked for the body before it was sent
        sock.sendall(body)
        response, data = Replies(sock).next()
    assert response.status == 200 and json.loads(data)["object"] == "chat.completion"
    assert cycles == ["/v1/chat/completions"]


def test_pipelined_requests_answer_in_order(host: RunningHost, cycles: list[str]) -> None:
    first = json.dumps({**CHAT, "max_tokens": 2}).encode()
    second = json.dumps({"model": "m", "prompt": "hi", "max_tokens": 1}).encode()
    with connect(host) as sock:
        sock.sendall(request(first) + request(second, path="/v1/completions"))
        replies = Replies(sock)
        a, a_data = replies.next()
        b, b_data = replies.next()
    assert (a.status, json.loads(a_data)["object"]) == (200, "chat.completion")
    assert (b.status, json.loads(b_data)["object"]) == (200, "text_completion")
    assert cycles[0] == "/v1/chat/completions"  # the second may wait in uvicorn's queue and take its cycle


def test_chunked_request_body(host: RunningHost, cycles: list[str]) -> None:
    body = json.dumps(CHAT).encode()
    parts = [body[:10], body[10:]]
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
    with connect(host) as sock:
        sock.sendall(head)
        sock.sendall(chunked)
        response, data = Replies(sock).next()
    assert response.status == 200 and json.loads(data)["usage"]["completion_tokens"] == 3
    assert cycles == ["/v1/chat/completions"]


def test_http_1_0_takes_uvicorns_cycle(host: RunningHost, cycles: list[str]) -> None:
    with connect(host) as sock:
        sock.sendall(request(json.dumps(CHAT).encode(), version="1.0"))
        replies = Replies(sock)
        response, data = replies.next()
        assert response.status == 200 and json.loads(data)["object"] == "chat.completion"
        assert closed_by_server(replies)
    assert cycles == []


def test_streamed_reply_is_chunked(host: RunningHost, cycles: list[str]) -> None:
    with connect(host) as sock:
        sock.sendall(request(json.dumps({**CHAT, "stream": True}).encode()))
        response, data = Replies(sock).next()  # http.client undoes the chunked framing
    assert response.status == 200 and response.getheader("transfer-encoding") == "chunked"
    assert response.getheader("content-type").startswith("text/event-stream")
    events = [line[6:] for line in data.decode().splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1]
                   if json.loads(e)["choices"]) == " t0 t1 t2"
    assert cycles == ["/v1/chat/completions"]


def test_failure_inside_the_route_is_a_plain_500(host: RunningHost, cycles: list[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(self: FastPath, *args: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(FastPath, "serve", broken)
    with connect(host) as sock:
        sock.sendall(request(json.dumps(CHAT).encode()))
        replies = Replies(sock)
        response, data = replies.next()
        assert (response.status, data) == (500, b"Internal Server Error")
        assert response.getheader("connection") == "close" and closed_by_server(replies)
    assert cycles == ["/v1/chat/completions"]


@pytest.mark.parametrize("field", [(b"x-evil", b"a\r\nset-cookie: b"), (b"x evil", b"a"), (b"x-evil", b"a\0"),
                                   (b"content-type", b"application/json\r\nx-evil: b")])  # the last: send_whole's
def test_a_reply_field_that_would_break_the_head_is_a_plain_500(host: RunningHost, cycles: list[str],
                                                                monkeypatch: pytest.MonkeyPatch,
                                                                field: tuple[bytes, bytes]) -> None:
    """Names and values are checked before a byte of the head goes out (a line break would split the reply), in a
    reply's messages and in a whole reply's content type."""
    async def injecting(self: FastPath, entry: Any, scope: Any, receive: Any, send: Any) -> None:
        if field[0] == b"content-type":
            await send.__self__.send_whole(200, field[1], b"{}")
            return
        await send({"type": "http.response.start", "status": 200,
                    "headers": iter([(b"content-length", b"2"), field])})  # any iterable, as ASGI allows
        await send({"type": "http.response.body", "body": b"{}"})

    monkeypatch.setattr(FastPath, "serve", injecting)
    with connect(host) as sock:
        sock.sendall(request(json.dumps(CHAT).encode()))
        replies = Replies(sock)
        response, data = replies.next()
        assert (response.status, data) == (500, b"Internal Server Error") and response.getheader("x-evil") is None
    assert cycles == ["/v1/chat/completions"]


def test_other_routes_and_methods_take_uvicorns_cycle(host: RunningHost, cycles: list[str]) -> None:
    with connect(host) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        replies = Replies(sock)
        response, data = replies.next()
        assert response.status == 200 and json.loads(data)["data"][0]["id"] == "m"
        sock.sendall(request(json.dumps(CHAT).encode(), path="/v1/chat/completions?x=1"))
        response, data = replies.next()
        assert response.status == 200 and json.loads(data)["object"] == "chat.completion"
    assert cycles == []


def test_a_served_request_leaves_no_garbage_for_the_collector(host: RunningHost, cycles: list[str]) -> None:
    """A relayed request's objects (its cycle, scope, headers, the runner's answer) are freed by reference counting
    as soon as they are done with, none left in a reference cycle for the collector: at c=32 a FastCycle that was its
    own event made a young collection every ~1,200 requests, ~3 ms with the loop stopped each time."""
    body = json.dumps(CHAT).encode()
    with connect(host) as sock:  # the model's start (its health polls) is not what is measured
        sock.sendall(request(body, headers={"Connection": "close"}))
        assert Replies(sock).next()[0].status == 200
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable is kept in gc.garbage instead of freed
    try:
        with connect(host) as sock:
            replies = Replies(sock)
            for _ in range(5):
                sock.sendall(request(body))
                assert replies.next()[0].status == 200
            gc.collect()  # before the connection closes: its last cycle goes with the connection
            left = [type(o).__qualname__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert cycles == ["/v1/chat/completions"] * 6
    assert left == []
