"""Request bodies described in the OpenAPI document for handlers that read their body raw.

A relaying handler takes ``request: Request`` and passes the bytes on untouched (decoding them into a Struct would parse
every body twice on the hot path), so Litestar cannot see what it expects. ``operation_class=json_body(Kind)`` puts
``Kind``'s JSON Schema into the document (for clients, the docs page and the fuzzer in ``tests/security``) and leaves
the handler as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from litestar.openapi.spec import OpenAPIMediaType, Operation, RequestBody


def inline_schema(kind: Any) -> dict[str, Any]:
    """``kind``'s JSON Schema with every ``$ref`` replaced by its definition (the document has no ``$defs``)."""
    schema: dict[str, Any] = msgspec.json.schema(kind)
    defs = schema.pop("$defs", {})

    def resolve(node: Any, seen: tuple[str, ...] = ()) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                name = ref.rsplit("/", 1)[1]
                if name in seen:
                    return {"type": "object"}  # a recursive type: described one level deep
                return resolve(defs[name], (*seen, name))
            return {k: resolve(v, seen) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v, seen) for v in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


def json_body(kind: Any, description: str = "") -> type[Operation]:
    """An ``operation_class`` for a route handler: the operation documents a required JSON body of type ``kind``."""
    body = RequestBody(content={"application/json": OpenAPIMediaType(schema=inline_schema(kind))},  # type: ignore[arg-type]
                       description=description or None, required=True)

    @dataclass
    class JsonBodyOperation(Operation):
        def __post_init__(self) -> None:
            if self.request_body is None:
                self.request_body = body

    return JsonBodyOperation
