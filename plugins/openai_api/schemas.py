"""What the ``/v1`` routes expect, for the OpenAPI document only: the handlers relay the raw body (llama-server
validates it) and read nothing but ``model`` and ``stream``. Unknown fields are welcome, as in OpenAI's API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Role = Literal["system", "developer", "user", "assistant", "tool"]
Count = Annotated[int, msgspec.Meta(ge=0, le=2**31 - 1)]


class Message(msgspec.Struct, kw_only=True):
    role: Role
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_call_id: str | None = None


class ChatCompletionRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/chat/completions``."""

    model: Annotated[str, msgspec.Meta(min_length=1, description="a model name or alias (or default_model)")]
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]
    stream: bool = False
    max_tokens: Count | None = None
    max_completion_tokens: Count | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    top_p: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None


class CompletionRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/completions``."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    prompt: str | list[str]
    stream: bool = False
    max_tokens: Count | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=2)] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None


class EmbeddingRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/embeddings``."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    input: str | list[str]
    encoding_format: Literal["float", "base64"] | None = None


class RerankRequest(msgspec.Struct, kw_only=True):
    """``POST /v1/rerank``."""

    model: Annotated[str, msgspec.Meta(min_length=1)]
    query: str
    documents: list[str]
    top_n: Count | None = None
