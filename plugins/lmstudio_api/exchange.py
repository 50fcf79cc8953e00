"""Reading a client's request, shared by the v0 and v1 routes."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec
from litestar import Request

from llama_host import Host
from llama_host.bodies import decode_json
from llama_host.errors import BadRequest
from llama_host.types import ModelSpec

SURFACE = "lmstudio_api"
AnyRequest = Request[Any, Any, Any]
T = TypeVar("T")
#: count parameters of LM Studio requests and their least values (-1: no limit); below is refused, not passed on
COUNTS = {"max_tokens": -1, "max_output_tokens": -1, "context_length": 1, "top_logprobs": 0}


async def read_body(request: AnyRequest, kind: type[T]) -> tuple[dict[str, Any], T]:
    """The JSON object of the request, and its typed view (unknown keys are kept in the dict, ignored by ``kind``)."""
    raw = await request.body()
    body = decode_json(raw, minimums=COUNTS) if raw.strip() else {}
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object")
    try:
        return body, msgspec.convert(body, kind)
    except msgspec.ValidationError as exc:
        raise BadRequest(str(exc)) from None


def resolve(host: Host, requested: str | None) -> ModelSpec:
    name = requested or host.site.default_model
    if not name:
        raise BadRequest("'model' is required", param="model")
    return host.scheduler.get(name, SURFACE)
