"""The ``echo`` runtime: a Runner without a process.

A Runner gives the host a ``base_url`` that speaks the OpenAI API; the host relays ``/v1/chat/completions`` there.
This one serves a tiny OpenAI-compatible server on the host's own event loop, on a free loopback port, and answers
with the last user message (prefixed by ``plugins.hello.echo_prefix``), streamed or not.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from aiohttp import web

from llama_host import Host, ModelSpec
from llama_host.errors import RunnerStartError
from llama_host.process import LogBuffer
from llama_host.types import RunnerBase

from llama_host_hello.settings import NAME, Settings


def last_user_text(messages: Any) -> str:
    for message in reversed(messages if isinstance(messages, list) else []):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, list):  # content parts: keep the text ones
                return "".join(p.get("text", "") for p in content if isinstance(p, dict))
            return str(content or "")
    return ""


class EchoRunner(RunnerBase):
    """Implements :class:`llama_host.types.Runner`: ``start``/``stop``/``wait`` plus ``base_url``, ``headers``,
    ``logs``."""

    local = False  # no process whose exit could be watched (memory: the runtime registers local=False)
    pid = None

    def __init__(self, spec: ModelSpec, host: Host) -> None:
        self.model = spec
        self.prefix = host.settings(NAME, Settings).echo_prefix
        self.base_url = ""
        self.headers: dict[str, str] = {}
        self.logs = LogBuffer(200)
        self._app_runner: web.AppRunner | None = None

    async def start(self, timeout: float) -> None:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/v1/chat/completions", self._chat)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            await web.SockSite(runner, sock).start()
        except OSError as exc:
            sock.close()
            await runner.cleanup()
            raise RunnerStartError(f"model '{self.model.name}': echo server cannot listen: {exc}") from None
        self._app_runner = runner
        self.base_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.stopped.clear()
        self.logs.append(f"echo server for {self.model.name} listening on {self.base_url}")

    async def stop(self, grace: float) -> None:
        if self._app_runner is not None:
            runner, self._app_runner = self._app_runner, None
            await runner.cleanup()
            self.logs.append("echo server stopped")
        await super().stop(grace)

    async def wait(self) -> int | None:
        await self.stopped.wait()
        return 0

    # --- the tiny OpenAI-compatible server ----------------------------------------------------------------------

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": self.model.name, "object": "model",
                                                              "owned_by": "llama-host-hello"}]})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        text = self.prefix + last_user_text(body.get("messages"))
        base = {"id": f"chatcmpl-echo-{time.monotonic_ns()}", "created": int(time.time()), "model": self.model.name}
        words = text.split(" ")
        usage = {"prompt_tokens": len(words), "completion_tokens": len(words), "total_tokens": 2 * len(words)}
        self.logs.append(f"echo: {len(text)} characters")
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
                {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)

        async def event(delta: dict[str, Any], finish: str | None = None) -> None:
            chunk = {**base, "object": "chat.completion.chunk",
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")

        await event({"role": "assistant", "content": ""})
        for i, word in enumerate(words):
            await event({"content": word if i == 0 else " " + word})
        await event({}, "stop")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
