"""A dialect of its own, written on the host's request primitive: ``POST /hello/say``.

The client sends ``{"model": "...", "text": "...", "stream": true}`` and gets the model's answer as plain text — as
it is generated when streamed, in one piece otherwise. An error in the middle of a stream comes as a last line
``! <message>``; errors before the answer begins come from the surface's exception handlers (here OpenAI's shape).

This module is the whole dialect: a translation (:class:`Say`) and a handler. Queueing for the model, starting it,
opening the runner request, the status check, parsing the runner's events, classifying errors (a crashed runner →
502, a client gone before the end → 499, ...) and the ``request_finished`` event for metrics are the host's
(``llama_host.request``).
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, post

from llama_host import HostDep
from llama_host.errors import BadRequest, HostError
from llama_host.proxy import Upstream
from llama_host.request import Exchange, run

from llama_host_hello.settings import NAME


class SayRequest(msgspec.Struct):
    model: str
    text: str
    stream: bool = False


class Say(Exchange):
    """One ``/hello/say`` request: what differs from every other dialect is only this translation."""

    surface = NAME
    endpoint = "say"
    path = "/v1/chat/completions"  # the runner request (any runner speaks OpenAI's chat)
    media_type = "text/plain; charset=utf-8"

    def __init__(self, model: str, req: SayRequest) -> None:
        self.model, self.stream, self._text = model, req.stream, req.text

    def body(self) -> dict[str, Any]:  # client request → runner request
        return {"model": self.model, "messages": [{"role": "user", "content": self._text}], "stream": self.stream}

    def event(self, chunk: Any) -> bytes:  # one runner event → the bytes to send now
        for choice in chunk.get("choices") or ():
            text = (choice.get("delta") or {}).get("content")
            if text:
                return text.encode()
        return b""

    def end(self) -> bytes:  # after the runner's last event
        return b"\n"

    def reply(self, reply: Any, up: Upstream) -> bytes:  # a runner reply in one piece
        return ((reply.get("choices") or [{}])[0].get("message", {}).get("content", "") + "\n").encode()

    def error(self, exc: HostError) -> bytes:  # an error once the answer began, in this dialect
        return f"\n! {exc.message}\n".encode()


def say_handler(path: str):
    @post(path, status_code=200)
    async def say(request: Request, host: HostDep) -> Response:
        try:
            req = msgspec.json.decode(await request.body(), type=SayRequest)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise BadRequest(f"expected {{\"model\": ..., \"text\": ...}}: {exc}") from None
        spec = host.scheduler.get(req.model, NAME)
        return await run(host, Say(spec.name, req))

    return say
