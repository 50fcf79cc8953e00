"""Connection limits on real sockets: header count and size (431), header deadline (slowloris), idle keep-alive."""

from __future__ import annotations

import socket
import time

import pytest

from llama_host.testing import serve_host

LIMITS = {"header_timeout": 1.0, "keep_alive_timeout": 1.0, "max_headers": 30, "max_header_bytes": 8192}


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    config = {"log_dir": str(tmp_path_factory.mktemp("limits")), "limits": LIMITS}
    with serve_host(config, ["openai_api", "ollama_api"]) as rh:
        yield rh


def connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body (the connection stays open)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    return head


def request(headers: list[bytes], path: bytes = b"/v1/models") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n"


@pytest.mark.parametrize("surface", ["core", "ollama_api"])
def test_too_many_or_too_large_headers_get_431(host, surface):
    port = host.port(surface)
    for headers in ([b"X-%d: v" % i for i in range(40)], [b"X-Big: " + b"a" * 9000],
                    [b"X-%d: v" % i for i in range(20000)]):  # the 20,000 headers
        with connect(port) as sock:
            sock.sendall(request(headers))
            reply = read_until_closed(sock)
        assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]
    with connect(port) as sock:  # a long URL counts too
        sock.sendall(request([], b"/v1/models?q=" + b"a" * 9000))
        assert read_until_closed(sock).startswith(b"HTTP/1.1 431 ")
    with connect(port) as sock:  # just under the limits: served
        sock.sendall(request([b"X-%d: v" % i for i in range(25)] + [b"Connection: close"]))
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("pieces", [
    [b"X-%d: v\r\n" % i for i in range(40)],  # too many fields
    [b"X-Big: " + b"a" * 3000 + b"\r\n"] * 4,  # too many bytes in fields
    [b"X-Endless: "] + [b"a" * 1000] * 12,  # one field that never ends: what the parser buffers counts too
    [b"X-Big: " + b"a" * 1000 + b"\r\nX-Endless: "] + [b"a" * 1000] * 8,  # both
])
def test_headers_over_the_limits_across_many_reads_get_431_before_they_complete(host, pieces):
    """The limits are checked after each read, not only once the headers are complete: headers that trickle in
    are refused as soon as they pass a limit (the header deadline would answer 408), and a field the parser is still
    buffering cannot grow without bound."""
    with connect(host.port("core")) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        for piece in pieces:
            try:
                sock.sendall(piece)
            except ConnectionError:
                break  # refused and closed already
            time.sleep(0.005)  # separate reads
        reply = read_until_closed(sock)  # never sent the blank line: only a refusal can end this
    assert reply.startswith(b"HTTP/1.1 431 "), reply[:100]


def test_headers_just_under_the_limits_across_many_reads_are_served(host):
    """The count over several reads is exact: a field the parser buffered over reads is not counted twice."""
    with connect(host.port("core")) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: ")
        for _ in range(7):
            sock.sendall(b"a" * 1000)
            time.sleep(0.005)
        sock.sendall(b"\r\nConnection: close\r\n")
        time.sleep(0.005)
        sock.sendall(b"\r\n")
        assert read_until_closed(sock).startswith(b"HTTP/1.1 200 ")


def test_headers_sent_slowly_are_cut_off(host):
    """Slowloris: a header every 0.3 s keeps the connection busy, but the headers' deadline (1 s) still ends it."""
    with connect(host.port()) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        reply = b""
        for i in range(20):
            try:
                sock.sendall(b"X-%d: v\r\n" % i)
            except OSError:
                break
            time.sleep(0.3)
            sock.setblocking(False)
            try:
                reply += sock.recv(65536)
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
            if reply:
                break
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
    assert 0.9 < elapsed < 3


def test_the_headers_deadline_counts_from_each_request_on_a_kept_alive_connection(host):
    """The second request's headers get their full second, though the connection's timer was set before it."""
    with connect(host.port()) as sock:
        sock.sendall(request([]))
        assert read_response(sock).startswith(b"HTTP/1.1 200 ")
        time.sleep(0.6)  # under keep_alive_timeout; the first request's deadline has 0.4 s left
        started = time.monotonic()
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # ... and never the end of the headers
        reply = read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply[:100]
    assert 0.9 < elapsed < 3


def test_a_connection_that_sends_nothing_is_closed(host):
    with connect(host.port()) as sock:
        started = time.monotonic()
        assert read_until_closed(sock) == b""
        assert 0.9 < time.monotonic() - started < 3


def test_an_idle_kept_alive_connection_is_closed_and_a_busy_one_is_not(host):
    with connect(host.port()) as sock:
        for _ in range(3):  # requests closer together than the timeout keep the connection
            sock.sendall(request([]))
            head = read_response(sock)
            assert head.startswith(b"HTTP/1.1 200 "), head[:100]
            time.sleep(0.5)
        started = time.monotonic()
        assert read_until_closed(sock) == b""  # then idle: closed after keep_alive_timeout (0.5 s of it were slept)
        assert 0.3 < time.monotonic() - started < 3
