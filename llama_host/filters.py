"""Request filters (``models.<name>.filters``): fields stripped from or set in the JSON body sent to a model's runner.

Pure functions, applied by the relay (:meth:`llama_host.proxy.Relay.open`) to every request of every surface — only for
models that have filters, so a model without any pays nothing.
"""

from __future__ import annotations

from typing import Any

import msgspec

from llama_host.types import RequestFilters

_decode = msgspec.json.Decoder().decode


def filtered(filters: RequestFilters, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` without the ``strip`` fields and with the ``set`` ones (a new dict; ``body`` is left unchanged)."""
    out = {k: v for k, v in body.items() if k not in filters.strip} if filters.strip else dict(body)
    out.update(filters.set)
    return out


def apply_filters(filters: RequestFilters, json: Any, body: bytes | None) -> tuple[Any, bytes | None]:
    """The relay's ``(json, body)`` pair with the filters applied: a JSON object (given, or decoded from ``body``) is
    filtered and returned as ``json``; anything else (not JSON, not an object) comes back unchanged."""
    if json is None and body:
        try:
            decoded = _decode(body)
        except msgspec.DecodeError:
            return json, body
        if not isinstance(decoded, dict):
            return json, body
        return filtered(filters, decoded), None
    if isinstance(json, dict):
        return filtered(filters, json), body
    return json, body
