"""The runner calls behind the SDK protocol, one function per call: lease the model (loading it on demand), send one
request to its runner, record the request, release the model.

This is the only module of the SDK protocol that talks to a runner; the request lifecycle (lease → upstream →
meter → ``end_request``) lives here once, so it moves to the core's request primitive as one piece.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from llama_host import Host
from llama_host.errors import HostError, UpstreamError
from llama_host.proxy import RequestMeter, Upstream, end_request
from llama_host.scheduler import Lease
from llama_host.types import ModelSpec

from .exchange import SURFACE, open_or_fail
from .state import RunnerFacts, SurfaceState, runner_facts


@dataclass
class CallFacts:
    """What a streamed call learned before its first chunk: its wait, the model's load time, the runner's facts."""

    started: float = 0.0
    queue_wait: float = 0.0
    load_seconds: float = 0.0
    runner: RunnerFacts | None = None


async def _acquire(host: Host, spec: ModelSpec, meter: RequestMeter, ttl: float | None,
                   load_params: Mapping[str, Any] | None) -> Lease:
    lease = await host.scheduler.acquire(spec.name, ttl=ttl, load_params=load_params)
    meter.queue_wait = lease.queue_wait
    return lease


async def stream(host: Host, lms: SurfaceState, spec: ModelSpec, path: str, body: dict[str, Any], endpoint: str,
                 facts: CallFacts) -> AsyncIterator[dict[str, Any]]:
    """POST a streaming body (``/v1/chat/completions`` or ``/v1/completions``) and yield the runner's chunks.

    Closing the generator early (the client cancelled, or went away) closes the runner's connection, which stops the
    generation there; the request is then recorded with status 499.
    """
    meter = host.meter(SURFACE, endpoint, spec.name, True)
    facts.started = time.monotonic()
    lease: Lease | None = None
    up: Upstream | None = None
    status, error = 200, None
    try:
        lease = await _acquire(host, spec, meter, None, None)
        facts.queue_wait, facts.load_seconds = lease.queue_wait, lease.load_seconds
        facts.runner = await runner_facts(host, lms, lease)
        up = await open_or_fail(host, lease, path, body)
        async for chunk in up.iter_sse():
            if chunk.get("choices"):
                meter.first_token()
            meter.observe(chunk)
            yield chunk
    except HostError as exc:
        status, error = exc.status, exc.message
        raise
    except BaseException:  # cancelled by the client, or the socket closed
        status, error = 499, "cancelled by the client"
        raise
    finally:
        if up is not None and lease is not None:
            end_request(up, lease, meter, status, error)
        else:
            if lease is not None:
                lease.release()
            meter.finish(status, error)


async def _post_json(host: Host, spec: ModelSpec, path: str, body: dict[str, Any], endpoint: str) -> Any:
    meter = host.meter(SURFACE, endpoint, spec.name)
    lease: Lease | None = None
    up: Upstream | None = None
    status, error = 200, None
    try:
        lease = await _acquire(host, spec, meter, None, None)
        up = await open_or_fail(host, lease, path, body)
        reply = await up.json()
        meter.observe(reply)
        return reply
    except HostError as exc:
        status, error = exc.status, exc.message
        raise
    except BaseException:
        status, error = 499, "cancelled by the client"
        raise
    finally:
        if up is not None and lease is not None:
            end_request(up, lease, meter, status, error)
        else:
            if lease is not None:
                lease.release()
            meter.finish(status, error)


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


async def load(host: Host, lms: SurfaceState, spec: ModelSpec, *, ttl: float | None,
               load_params: Mapping[str, Any] | None) -> tuple[float, RunnerFacts]:
    """Start the model (with ``load_params``) unless it runs so already; its load time and the runner's facts.
    ``ttl`` becomes the model's idle time until it is unloaded."""
    lease = await host.scheduler.acquire(spec.name, ttl=ttl, load_params=load_params)
    try:
        return lease.load_seconds, await runner_facts(host, lms, lease)
    finally:
        lease.release()
