"""Ollama request bodies as msgspec Structs.

They accept unknown fields (clients send extras, and Ollama adds fields between releases); types are as loose as
Ollama's own decoder is, so that every request a real Ollama accepts decodes here too.
"""

from __future__ import annotations

from typing import Any

import msgspec


class ToolCallFunction(msgspec.Struct, kw_only=True):
    name: str = ""
    # Ollama sends an object; a string (what OpenAI clients send) is accepted too.
    arguments: dict[str, Any] | str | None = None
    index: int | None = None


class ToolCall(msgspec.Struct, kw_only=True):
    function: ToolCallFunction
    id: str | None = None
    type: str | None = None


class Message(msgspec.Struct, kw_only=True):
    role: str
    content: str | None = None
    thinking: str | None = None
    images: list[str] | None = None
    tool_calls: list[ToolCall] | None = None
    tool_name: str | None = None
    # Not Ollama, but OpenAI-minded clients send them; kept when present.
    tool_call_id: str | None = None
    name: str | None = None


class _Generation(msgspec.Struct, kw_only=True):
    model: str = ""
    stream: bool | None = None
    format: Any = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
    think: bool | str | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class GenerateRequest(_Generation, kw_only=True):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[int] | None = None
    raw: bool | None = None
    images: list[str] | None = None


class ChatRequest(_Generation, kw_only=True):
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None


class EmbedRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    input: str | list[str] | None = None
    truncate: bool | None = None
    dimensions: int | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class EmbeddingsRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    prompt: str | None = None
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class ShowRequest(msgspec.Struct, kw_only=True):
    model: str = ""
    # Deprecated alias of ``model``, still sent by older clients.
    name: str = ""
    verbose: bool = False

    @property
    def requested(self) -> str:
        return self.model or self.name
