"""Server-sent events in the two framings this surface writes."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder()

#: The end of an OpenAI-style stream.
DONE = b"data: [DONE]\n\n"


def data_event(obj: Any) -> bytes:
    """An OpenAI-style event: ``data: <json>`` (v0 streams)."""
    return b"data: " + _encoder.encode(obj) + b"\n\n"


def named_event(event_type: str, fields: dict[str, Any] | None = None) -> bytes:
    """An LM Studio v1 event: ``event: <type>`` then ``data: <json>`` whose ``type`` repeats the event name."""
    payload = {"type": event_type, **(fields or {})}
    return b"event: " + event_type.encode() + b"\ndata: " + _encoder.encode(payload) + b"\n\n"
