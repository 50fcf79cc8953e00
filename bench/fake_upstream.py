"""A fast fake OpenAI-compatible upstream, so that the relay (not the model) is what a benchmark measures.

A raw asyncio protocol (no framework): HTTP/1.1 keep-alive, ``Content-Length`` request bodies, pre-encoded replies.

- ``GET /health`` → ``{"status":"ok"}``; ``GET /v1/models`` → one model.
- ``POST /v1/chat/completions`` (and ``/v1/completions``): non-streaming → one fixed llama-server-shaped reply with
  ``usage`` and ``timings``; ``"stream": true`` → ``max_tokens`` content chunks (default 16), a final chunk with
  ``finish_reason``, ``usage`` and ``timings``, then ``data: [DONE]``, each event its own HTTP chunk
  (``Transfer-Encoding: chunked``, as llama-server sends them), written back to back: as fast as the socket allows.
  ``--event-gap-us N`` paces the events instead (one per N µs on average, written in ~1 ms batches of separate
  chunks), to imitate a model that generates at a given rate.

Run: ``python bench/fake_upstream.py --port 9100`` (``--port 0`` picks one; ``--port-file F`` writes it to F).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

CHUNK = (b'{"choices":[{"finish_reason":null,"index":0,"delta":{"content":" tok"}}],"created":1700000000,'
         b'"id":"chatcmpl-fake","model":"%s","system_fingerprint":"fake","object":"chat.completion.chunk"}')
FINAL = (b'{"choices":[{"finish_reason":"length","index":0,"delta":{}}],"created":1700000000,"id":"chatcmpl-fake",'
         b'"model":"%s","system_fingerprint":"fake","object":"chat.completion.chunk",'
         b'"usage":{"completion_tokens":%d,"prompt_tokens":9,"total_tokens":%d},'
         b'"timings":{"cache_n":0,"prompt_n":9,"prompt_ms":0.5,"prompt_per_second":18000.0,"predicted_n":%d,'
         b'"predicted_ms":1.0,"predicted_per_second":5000.0}}')
REPLY = (b'{"choices":[{"finish_reason":"length","index":0,"message":{"role":"assistant","content":" tok"}}],'
         b'"created":1700000000,"model":"%s","system_fingerprint":"fake","object":"chat.completion",'
         b'"usage":{"completion_tokens":1,"prompt_tokens":9,"total_tokens":10},"id":"chatcmpl-fake",'
         b'"timings":{"cache_n":0,"prompt_n":9,"prompt_ms":0.5,"prompt_per_second":18000.0,"predicted_n":1,'
         b'"predicted_ms":0.2,"predicted_per_second":5000.0}}')


def _frame(payload: bytes) -> bytes:
    """One SSE event as one HTTP/1.1 chunk."""
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _response(status: str, body: bytes, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    return (b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + content_type + b"\r\nContent-Length: "
            + str(len(body)).encode() + (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + body)


class Fake:
    def __init__(self, model: str, default_tokens: int, gap: float) -> None:
        m = model.encode()
        self.default_tokens = default_tokens
        self.gap = gap
        self.chunk = _frame(CHUNK % m)
        self.final_cache: dict[int, bytes] = {}
        self.model = m
        self.reply = REPLY % m
        self.models = json.dumps({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "fake",
                                                               "created": 1700000000}]}).encode()
        self.sse_head = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                         b"Transfer-Encoding: chunked\r\n\r\n")

    def tail(self, n: int) -> bytes:
        if n not in self.final_cache:
            self.final_cache[n] = _frame(FINAL % (self.model, n, n + 9, n)) + _frame(b"[DONE]") + b"0\r\n\r\n"
        return self.final_cache[n]


class FakeProtocol(asyncio.Protocol):
    def __init__(self, fake: Fake) -> None:
        self.fake = fake
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.busy: asyncio.Task | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.busy is not None:
            self.busy.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.busy is None:
            self._serve()

    def _serve(self) -> None:
        while self.transport is not None and not self.transport.is_closing():
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end]
            lower = head.lower()
            length = 0
            i = lower.find(b"\r\ncontent-length:")
            if i >= 0:
                j = lower.find(b"\r\n", i + 2)
                length = int(head[i + 17: j if j > 0 else len(head)])
            elif b"\r\ntransfer-encoding:" in lower:
                self.transport.write(_response("411 Length Required", b'{"error":"chunked bodies are not supported"}',
                                               close=True))
                self.transport.close()
                return
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4: end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            close = b"\r\nconnection: close" in lower
            line = head[: head.find(b"\r\n")] if b"\r\n" in head else head
            method, _, rest = line.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if self._handle(method, path, body, close):
                return  # a paced stream is being written: the next request waits for it

    def _handle(self, method: bytes, path: bytes, body: bytes, close: bool) -> bool:
        t = self.transport
        fake = self.fake
        if method == b"GET" and path == b"/health":
            t.write(_response("200 OK", b'{"status":"ok"}', close=close))
        elif method == b"GET" and path == b"/v1/models":
            t.write(_response("200 OK", fake.models, close=close))
        elif method == b"POST" and path in (b"/v1/chat/completions", b"/v1/completions"):
            try:
                req = json.loads(body)
            except ValueError:
                t.write(_response("400 Bad Request", b'{"error":{"code":400,"message":"bad json"}}', close=close))
                req = None
            if isinstance(req, dict) and req.get("stream") is True:
                n = int(req.get("max_tokens") or req.get("n_predict") or fake.default_tokens)
                t.write(fake.sse_head)
                if fake.gap > 0:
                    self.busy = asyncio.get_running_loop().create_task(self._paced(n, close))
                    return True
                chunk = fake.chunk
                for _ in range(n):
                    t.write(chunk)
                t.write(fake.tail(n))
            elif req is not None:
                t.write(_response("200 OK", fake.reply, close=close))
        else:
            t.write(_response("404 Not Found", b'{"error":{"code":404,"message":"File Not Found"}}', close=close))
        if close:
            t.close()
        return False

    async def _paced(self, n: int, close: bool) -> None:
        """Events at an average of one per ``gap`` seconds: every loop tick (~1 ms; asyncio sleeps no finer) writes
        the events that are due, each as its own HTTP chunk, as a model generating at that rate would."""
        t = self.transport
        loop = asyncio.get_running_loop()
        start = loop.time()
        sent = 0
        tick = self.fake.gap if self.fake.gap >= 0.005 else 0.001  # slow streams: one wake-up per event
        while sent < n:
            await asyncio.sleep(tick)
            if t.is_closing():
                return
            due = min(n, int((loop.time() - start) / self.fake.gap))
            for _ in range(due - sent):
                t.write(self.fake.chunk)
            sent = max(sent, due)
        t.write(self.fake.tail(n))
        self.busy = None
        if close:
            t.close()
        elif self.buf:
            self._serve()


async def serve(host: str, port: int, fake: Fake, port_file: Path | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: FakeProtocol(fake), host, port, backlog=2048, reuse_address=True)
    bound = server.sockets[0].getsockname()[1]
    if port_file is not None:
        tmp = port_file.with_suffix(".tmp")
        tmp.write_text(str(bound))
        os.replace(tmp, port_file)
    print(f"fake upstream listening on http://{host}:{bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port")
    p.add_argument("--port-file", type=Path, help="write the bound port to this file once listening")
    p.add_argument("--model", default="fake", help="model id in replies")
    p.add_argument("--tokens", type=int, default=16, help="stream chunks when the request has no max_tokens")
    p.add_argument("--event-gap-us", type=float, default=0.0, help="pause between stream events (0 = back to back)")
    p.add_argument("--start-delay", type=float, default=0.0, help="seconds before listening (a model that loads)")
    a = p.parse_args(argv)
    if a.start_delay:
        import time

        time.sleep(a.start_delay)
    try:
        asyncio.run(serve(a.host, a.port, Fake(a.model, a.tokens, a.event_gap_us / 1e6), a.port_file))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
