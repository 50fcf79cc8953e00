"""A scripted OpenAI-compatible upstream for the Ollama surface's fault and tool-call tests.

It is served as a ``remote`` model, so the whole host path runs (scheduler, relay, translation) without a
llama-server. The first path segment of the model's ``url`` picks the script (``/toolcalls``, ``/midstream-error``,
``/endless``); every request body is recorded.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

TIMINGS = {"cache_n": 0, "prompt_n": 31, "prompt_ms": 2.5, "prompt_per_second": 12400.0, "predicted_n": 14,
           "predicted_ms": 3.5, "predicted_per_second": 4000.0}


def _chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> dict[str, Any]:
    choices = [] if delta is None else [{"finish_reason": finish, "index": 0, "delta": delta}]
    return {"choices": choices, "created": 1, "id": "chatcmpl-1", "model": "m", "object": "chat.completion.chunk",
            **extra}


# A streamed tool call in the shape llama-server (tools/server, --jinja) sends it: a role chunk, the call's name with
# an empty argument string, argument fragments, finish_reason "tool_calls", then usage + timings.
TOOL_CALL_EVENTS = [
    _chunk({"role": "assistant", "content": None}),
    _chunk({"tool_calls": [{"index": 0, "id": "call_Yp3", "type": "function",
                            "function": {"name": "get_weather", "arguments": ""}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \""}}]}),
    _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "Paris\", \"unit\": \"C\"}"}}]}),
    _chunk({}, "tool_calls"),
    _chunk(None, usage={"completion_tokens": 14, "prompt_tokens": 31, "total_tokens": 45}, timings=TIMINGS),
]
TOOL_CALL_REPLY = {
    "choices": [{"finish_reason": "tool_calls", "index": 0, "message": {
        "role": "assistant", "content": None,
        "tool_calls": [{"type": "function", "id": "call_Yp3",
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\", \"unit\": \"C\"}"}}]}}],
    "created": 1, "model": "m", "object": "chat.completion", "id": "chatcmpl-1",
    "usage": {"completion_tokens": 14, "prompt_tokens": 31, "total_tokens": 45}, "timings": TIMINGS,
}


class FakeUpstream:
    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.disconnected = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._send(200, {"status": "ok"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                script, _, path = self.path.lstrip("/").partition("/")
                fake.requests.append((f"/{script}/{path}", body))
                stream = body.get("stream")
                if script == "toolcalls":
                    if stream:
                        self._sse([*TOOL_CALL_EVENTS, "[DONE]"])
                    else:
                        self._send(200, TOOL_CALL_REPLY)
                elif script == "midstream-error":
                    if not stream:
                        self._send(500, {"error": {"code": 500, "message": "boom", "type": "server_error"}})
                        return
                    self._sse([_chunk({"role": "assistant", "content": None}), _chunk({"content": "Hel"}),
                               _chunk({"content": "lo"}),
                               {"error": {"code": 500, "message": "boom: the slot died", "type": "server_error"}}])
                elif script == "endless":
                    self._endless()
                else:
                    self._send(404, {"error": {"code": 404, "message": "no such script", "type": "not_found"}})

            def _send(self, status: int, obj: Any) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _sse_head(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()

            def _sse(self, events: list[Any]) -> None:
                self._sse_head()
                for event in events:
                    payload = event if isinstance(event, str) else json.dumps(event)
                    self.wfile.write(f"data: {payload}\n\n".encode())
                    self.wfile.flush()

            def _endless(self) -> None:
                self._sse_head()
                try:
                    while True:
                        self.wfile.write(f"data: {json.dumps(_chunk({'content': 'x'}))}\n\n".encode())
                        self.wfile.flush()
                        time.sleep(0.01)
                except OSError:  # the host closed the connection: generation is cancelled
                    fake.disconnected.set()

        return Handler

    def bodies(self, script: str) -> list[dict[str, Any]]:
        return [body for path, body in self.requests if path.startswith(f"/{script}/")]


@pytest.fixture(scope="module")
def fake_upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream()
    thread = threading.Thread(target=fake.server.serve_forever, name="fake-upstream", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.server.shutdown()
        fake.server.server_close()
