"""The runner calls behind the SDK protocol, one function per call, each through the core's request primitive
(:mod:`llama_host.request`: lease, upstream, status check, SSE parsing, metering, ``request_finished``).

A WebSocket is no HTTP response, so these drive the primitive's :class:`~llama_host.request.ModelCall` directly:
:func:`stream` yields the runner's events one by one (the exchange hands each over as it is parsed), and the other
calls take the runner's JSON reply in one piece (the exchange keeps it).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from llama_host import Host
from llama_host.errors import HostError, UpstreamError
from llama_host.request import Exchange, ModelCall, run
from llama_host.types import ModelSpec

from .exchange import SURFACE


@dataclass
class CallFacts:
    """What a streamed call learned before its first event: its wait and the model's load time."""

    queue_wait: float = 0.0
    load_seconds: float = 0.0


class _Call(Exchange):
    surface = SURFACE

    def __init__(self, spec: ModelSpec, path: str, body: dict[str, Any], endpoint: str, stream: bool) -> None:
        self.model, self.path, self.endpoint, self.stream = spec.name, path, endpoint, stream
        self._body = body
        self.received: list[Any] = []  # runner events not yet handed over (not ``events``: an Exchange method)
        self.result: Any = None
        self.failure: HostError | None = None

    def body(self) -> dict[str, Any]:
        return self._body

    def event(self, event: Any) -> bytes:
        self.received.append(event)
        return b"\n"  # a marker: events are waiting (the bytes themselves go nowhere)

    def reply(self, reply: Any, up: Any) -> bytes:
        self.result = reply
        return b""

    def error(self, exc: HostError) -> bytes:
        self.failure = exc
        return b""


async def stream(host: Host, spec: ModelSpec, path: str, body: dict[str, Any], endpoint: str,
                 facts: CallFacts) -> AsyncIterator[dict[str, Any]]:
    """POST a streaming body (``/v1/chat/completions`` or ``/v1/completions``) and yield the runner's events.

    Closing the generator early (the client cancelled, or went away) closes the runner's connection, which stops the
    generation there; the request is then recorded with status 499.
    """
    ex = _Call(spec, path, body, endpoint, True)
    call = ModelCall(host, ex)
    await call.open()  # a failure here is raised (and recorded) before anything is sent
    assert call.lease is not None
    facts.queue_wait, facts.load_seconds = call.lease.queue_wait, call.lease.load_seconds
    events = call.events()
    try:
        async for _ in events:
            pending, ex.received = ex.received, []
            for event in pending:
                yield event
            if ex.failure is not None:
                raise ex.failure
    finally:
        await events.aclose()


async def _post_json(host: Host, spec: ModelSpec, path: str, body: dict[str, Any], endpoint: str) -> Any:
    ex = _Call(spec, path, body, endpoint, False)
    await run(host, ex)
    return ex.result


async def tokenize(host: Host, spec: ModelSpec, text: str, endpoint: str) -> list[int]:
    """llama-server's ``POST /tokenize`` (no special tokens added, as LM Studio's ``tokenize`` counts)."""
    reply = await _post_json(host, spec, "/tokenize", {"content": text, "add_special": False}, endpoint)
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
        raise UpstreamError({"message": f"model '{spec.name}': the runner cannot tokenize"}, 501)
    return tokens


async def apply_template(host: Host, spec: ModelSpec, messages: list[dict[str, Any]], endpoint: str) -> str:
    """llama-server's ``POST /apply-template``: the prompt the model's chat template makes of ``messages``."""
    reply = await _post_json(host, spec, "/apply-template", {"messages": messages}, endpoint)
    prompt = reply.get("prompt") if isinstance(reply, dict) else None
    if not isinstance(prompt, str):
        raise UpstreamError({"message": f"model '{spec.name}': the runner cannot apply its chat template"}, 501)
    return prompt


async def embed(host: Host, spec: ModelSpec, text: str, endpoint: str) -> list[float]:
    """``POST /v1/embeddings`` for one input."""
    reply = await _post_json(host, spec, "/v1/embeddings", {"model": spec.name, "input": text}, endpoint)
    data = reply.get("data") if isinstance(reply, dict) else None
    vector = data[0].get("embedding") if isinstance(data, list) and data and isinstance(data[0], dict) else None
    if not isinstance(vector, list):
        raise UpstreamError({"message": f"model '{spec.name}': the runner returned no embedding"}, 502)
    return vector


async def load(host: Host, spec: ModelSpec, *, ttl: float | None, load_params: Mapping[str, Any] | None) -> float:
    """Start the model (with ``load_params``) unless it runs so already; its load time. ``ttl`` becomes the model's
    idle time until it is unloaded."""
    lease = await host.scheduler.acquire(spec.name, ttl=ttl, load_params=load_params)
    lease.release()
    return lease.load_seconds
