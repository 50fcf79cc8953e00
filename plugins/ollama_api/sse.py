"""Server-sent events from a runner, in batches: every event that one network read completed.

Same parsing as ``Upstream.iter_sse()`` (``data:`` events until ``[DONE]``, comments and pings skipped, an
``error`` event in either form raises ``UpstreamError``), but the events that arrived together are handed over
together, so that the surface writes them downstream as one chunk. A runner generating token by token gives
one event per read (nothing waits); a burst (or a client that fell behind) is caught up with one write instead of
hundreds — per-write cost, not parsing, is what limits a translating stream (bench/bench_ollama.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import msgspec

from llama_host.errors import UpstreamError

_decode = msgspec.json.Decoder().decode


async def sse_batches(up: Any) -> AsyncIterator[list[dict[str, Any]]]:
    """Lists of parsed ``data:`` JSON events from ``up.iter_chunks()``; ends at ``[DONE]`` or at the end of the body.

    Events before an error event in the same read are yielded first, then ``UpstreamError`` is raised.
    """
    buf = b""
    async for chunk in up.iter_chunks():
        buf += chunk
        if b"\n" not in chunk:
            continue
        *lines, buf = buf.split(b"\n")
        events: list[dict[str, Any]] = []
        error: UpstreamError | None = None
        done = False
        for line in lines:
            if line.startswith(b"data:"):
                payload = line[5:].strip()
                if not payload:
                    continue
                if payload == b"[DONE]":
                    done = True
                    break
                obj = _decode(payload)
                if isinstance(obj, dict) and "error" in obj:
                    error = UpstreamError(obj)
                    break
                events.append(obj)
            elif line.startswith(b"error:"):
                error = UpstreamError(_decode(line[6:].strip() or b'"upstream error"'))
                break
        if events:
            yield events
        if error is not None:
            raise error
        if done:
            return
    if buf.startswith(b"data:"):  # a last event without its newline (a body that ended early)
        payload = buf[5:].strip()
        if payload and payload != b"[DONE]":
            obj = _decode(payload)
            if isinstance(obj, dict) and "error" in obj:
                raise UpstreamError(obj)
            yield [obj]
