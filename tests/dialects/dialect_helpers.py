"""Helpers for the dialect tests: recorded llama-server streams and an SSE reader."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RECORDED = Path(__file__).parent / "recorded"


def recorded_chunks(name: str) -> list[dict[str, Any]]:
    """The ``data:`` payloads of a stream recorded from the real llama-server (``recorded/<name>.sse``)."""
    out = []
    for line in (RECORDED / f"{name}.sse").read_text().splitlines():
        if line.startswith("data: ") and line[6:].strip() != "[DONE]":
            out.append(json.loads(line[6:]))
    return out


def recorded_reply(name: str) -> dict[str, Any]:
    return json.loads((RECORDED / f"{name}.json").read_text())


def sse_events(raw: bytes) -> list[tuple[str | None, Any]]:
    """``(event name, decoded data)`` of every event in an SSE body; comments are skipped."""
    out: list[tuple[str | None, Any]] = []
    for block in raw.decode().split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].strip())
        if data:
            out.append((name, json.loads("\n".join(data))))
    return out
