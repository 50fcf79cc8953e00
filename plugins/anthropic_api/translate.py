"""Anthropic's Messages API translated to llama-server's chat completions: pure, no I/O.

- :func:`chat_request`: a Messages request (``system``, ``messages`` with text / image / tool_use / tool_result
  blocks, ``tools``, ``tool_choice``, ``stop_sequences``, ``max_tokens``, sampling) → a ``/v1/chat/completions`` body.
- :func:`message_from_chat`: a chat completion → a Message (``text``, ``thinking`` and ``tool_use`` blocks,
  ``stop_reason``, ``usage``).
- :class:`MessageStream`: chat-completion chunks → Anthropic's stream events (``message_start``, ``ping``,
  ``content_block_start``, ``content_block_delta`` with ``text_delta`` / ``thinking_delta`` / ``input_json_delta``,
  ``content_block_stop``, ``message_delta`` with ``stop_reason`` and ``usage``, ``message_stop``; ``error``).
- :func:`error_body` / :func:`error_type`: errors in Anthropic's shape
  ``{"type": "error", "error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder().decode

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 405: "invalid_request_error", 413: "request_too_large",
                422: "invalid_request_error", 429: "rate_limit_error", 503: "overloaded_error",
                504: "timeout_error", 529: "overloaded_error"}


class RequestError(ValueError):
    """The request cannot be translated: a 400 ``invalid_request_error`` naming the field."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


def error_type(status: int) -> str:
    """Anthropic's error type for an HTTP status."""
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if 400 <= status < 500 else "api_error"


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(status), "message": message}}


# --- request → chat completions ---------------------------------------------------------------------------------


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        out = []
        for i, block in enumerate(content):
            if not isinstance(block, dict) or block.get("type") != "text":
                raise RequestError(f"{where}.{i}: only text blocks are accepted here")
            out.append(str(block.get("text") or ""))
        return "\n".join(out) if where == "system" else "".join(out)
    if content is None:
        return ""
    raise RequestError(f"{where}: must be a string or a list of text blocks")


def _image(block: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = block.get("source")
    if not isinstance(source, dict):
        raise RequestError(f"{where}.source: Field required")
    if source.get("type") == "base64":
        media, data = source.get("media_type"), source.get("data")
        if not isinstance(media, str) or not isinstance(data, str):
            raise RequestError(f"{where}.source: media_type and data are required")
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{data}"}}
    if source.get("type") == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise RequestError(f"{where}.source.type: must be base64 or url")


def _tool_result_text(block: Mapping[str, Any], where: str) -> str:
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text":
                texts.append(str(part.get("text") or ""))
            elif isinstance(part, dict) and part.get("type") == "image":
                texts.append("[image]")
            else:
                raise RequestError(f"{where}.content.{i}: tool_result content takes text and image blocks")
        text = "\n".join(texts)
    else:
        text = "" if content is None else str(content)
    return f"Error: {text}" if block.get("is_error") else text


def _messages(messages: Any) -> list[dict[str, Any]]:
    if not isinstance(messages, list):
        raise RequestError("messages: Field required (a list of messages)")
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages.{i}"
        if not isinstance(msg, dict) or msg.get("role") not in ("user", "assistant"):
            raise RequestError(f"{where}.role: must be 'user' or 'assistant'")
        role, content = msg["role"], msg.get("content")
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        if not isinstance(content, list):
            raise RequestError(f"{where}.content: must be a string or a list of content blocks")
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        results: list[dict[str, Any]] = []
        for j, block in enumerate(content):
            bwhere = f"{where}.content.{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": str(block.get("text") or "")})
            elif kind == "image":
                parts.append(_image(block, bwhere))
            elif kind == "tool_use" and role == "assistant":
                if not isinstance(block.get("name"), str):
                    raise RequestError(f"{bwhere}.name: Field required")
                calls.append({"id": str(block.get("id") or new_id("toolu")), "type": "function",
                              "function": {"name": block["name"], "arguments": _encode(block.get("input") or {})
                                           .decode()}})
            elif kind == "tool_result" and role == "user":
                if not isinstance(block.get("tool_use_id"), str):
                    raise RequestError(f"{bwhere}.tool_use_id: Field required")
                results.append({"role": "tool", "tool_call_id": block["tool_use_id"],
                                "content": _tool_result_text(block, bwhere)})
            elif kind in ("thinking", "redacted_thinking"):
                continue  # earlier reasoning: chat templates drop it from history
            else:
                raise RequestError(f"{bwhere}.type: {kind!r} blocks are not supported in {role} messages")
        out.extend(results)  # tool results answer the previous assistant turn: they come first
        if parts or calls or not results:
            text_only = all(p["type"] == "text" for p in parts)
            body: dict[str, Any] = {"role": role,
                                    "content": "".join(p["text"] for p in parts) if text_only else parts}
            if calls:
                body["tool_calls"] = calls
                if text_only and not body["content"]:
                    body["content"] = None
            out.append(body)
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise RequestError("tools: must be a list")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise RequestError(f"tools.{i}.name: Field required")
        if tool.get("type") not in (None, "custom"):
            raise RequestError(f"tools.{i}.type: server tool {tool['type']!r} is not supported by a local model")
        fn: dict[str, Any] = {"name": tool["name"],
                              "parameters": tool.get("input_schema") or {"type": "object", "properties": {}}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any, body: dict[str, Any]) -> None:
    if not isinstance(choice, dict):
        raise RequestError("tool_choice: must be an object with a type")
    kind = choice.get("type")
    if kind == "auto":
        body["tool_choice"] = "auto"
    elif kind == "any":
        body["tool_choice"] = "required"
    elif kind == "none":
        body["tool_choice"] = "none"
    elif kind == "tool" and isinstance(choice.get("name"), str):
        body["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    else:
        raise RequestError("tool_choice.type: must be auto, any, tool (with a name) or none")
    if choice.get("disable_parallel_tool_use"):
        body["parallel_tool_calls"] = False


def chat_request(req: Mapping[str, Any], model: str, *, stream: bool, count_only: bool = False) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for a Messages request (``count_only``: no ``max_tokens`` needed, as
    ``count_tokens`` takes none)."""
    messages = _messages(req.get("messages"))
    if not messages:
        raise RequestError("messages: at least one message is required")
    system = req.get("system")
    if system is not None:
        text = _text(system, "system")
        if text:
            messages.insert(0, {"role": "system", "content": text})
    body: dict[str, Any] = {"model": model, "messages": messages}
    if not count_only:
        mt = req.get("max_tokens")
        if isinstance(mt, bool) or not isinstance(mt, int):
            raise RequestError("max_tokens: Field required (a positive integer)")
        if mt < 1:
            raise RequestError("max_tokens: must be greater than or equal to 1")
        body["max_tokens"] = mt
        for key in ("temperature", "top_p", "top_k"):
            if req.get(key) is not None:
                body[key] = req[key]
        stops = req.get("stop_sequences")
        if stops is not None:
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise RequestError("stop_sequences: must be a list of strings")
            if stops:
                body["stop"] = stops
    if req.get("tools"):
        body["tools"] = _tools(req["tools"])
    if req.get("tool_choice") is not None and req.get("tools"):
        _tool_choice(req["tool_choice"], body)
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# --- chat completion → Message ----------------------------------------------------------------------------------


def stop_reason(finish_reason: str | None, text: str, stops: list[str] | None) -> tuple[str, str | None]:
    """Anthropic's ``stop_reason`` and ``stop_sequence`` for a chat ``finish_reason``. llama-server does not say
    which stop word ended the reply: a ``stop`` with stop sequences requested is taken as one of them unless the
    model ended on its own token; the sequence reported is the requested one that best explains the stop."""
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "length":
        return "max_tokens", None
    if stops and finish_reason == "stop" and text is not None:
        return "stop_sequence", stops[0] if len(stops) == 1 else None
    return "end_turn", None


def _input_of(arguments: str) -> Any:
    try:
        value = _decode(arguments) if arguments else {}
    except msgspec.DecodeError:
        return {"_raw": arguments}
    return value if isinstance(value, dict) else {"value": value}


def _usage(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    """Anthropic counts prompt tokens read from the cache apart: ``input_tokens`` + ``cache_read_input_tokens`` is
    the whole prompt."""
    u = usage or {}
    prompt = int(u.get("prompt_tokens") or 0)
    cached = min(prompt, int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0))
    return {"input_tokens": prompt - cached, "output_tokens": int(u.get("completion_tokens") or 0),
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached}


def message_from_chat(req: Mapping[str, Any], reply: Mapping[str, Any], *, model: str,
                      message_id: str | None = None) -> dict[str, Any]:
    choices = reply.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        content.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
    if msg.get("content"):
        content.append({"type": "text", "text": msg["content"]})
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        content.append({"type": "tool_use", "id": call.get("id") or new_id("toolu"), "name": fn.get("name") or "",
                        "input": _input_of(fn.get("arguments") or "")})
    reason, sequence = stop_reason(choice.get("finish_reason"), msg.get("content") or "",
                                   req.get("stop_sequences") or None)
    return {"id": message_id or new_id("msg"), "type": "message", "role": "assistant", "model": model,
            "content": content, "stop_reason": reason, "stop_sequence": sequence, "usage": _usage(reply.get("usage"))}


# --- chat chunks → Anthropic stream events ----------------------------------------------------------------------


def sse(kind: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"


PING = sse("ping", {"type": "ping"})


class MessageStream:
    """Chat-completion chunks (decoded dicts) → Anthropic stream events; one instance per request."""

    def __init__(self, req: Mapping[str, Any], model: str, message_id: str | None = None) -> None:
        self.req, self.model = req, model
        self.id = message_id or new_id("msg")
        self.index = -1
        self._open: str | None = None  # "text" | "thinking" | "tool_use"
        self._calls: dict[int, int] = {}  # chat tool-call index → block index
        self._text: list[str] = []
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def start(self) -> bytes:
        message = {"id": self.id, "type": "message", "role": "assistant", "model": self.model, "content": [],
                   "stop_reason": None, "stop_sequence": None,
                   "usage": {"input_tokens": 0, "output_tokens": 0, "cache_creation_input_tokens": 0,
                             "cache_read_input_tokens": 0}}
        return sse("message_start", {"type": "message_start", "message": message}) + PING

    def _close(self) -> bytes:
        if self._open is None:
            return b""
        self._open = None
        return sse("content_block_stop", {"type": "content_block_stop", "index": self.index})

    def _begin(self, kind: str, block: dict[str, Any]) -> bytes:
        out = self._close()
        self.index += 1
        self._open = kind
        return out + sse("content_block_start", {"type": "content_block_start", "index": self.index,
                                                 "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return sse("content_block_delta", {"type": "content_block_delta", "index": self.index, "delta": delta})

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                if self._open != "thinking":
                    out += self._begin("thinking", {"type": "thinking", "thinking": "", "signature": ""})
                out += self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]})
            content = delta.get("content")
            if content:
                if self._open != "text":
                    out += self._begin("text", {"type": "text", "text": ""})
                self._text.append(content)
                # the hot path (one event per token): only the text encoded
                out += (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
                        b'"delta":{"type":"text_delta","text":' % self.index + _encode(content) + b"}}\n\n")
            for call in delta.get("tool_calls") or ():
                index = call.get("index", 0)
                fn = call.get("function") or {}
                if index not in self._calls:
                    out += self._begin("tool_use", {"type": "tool_use", "id": call.get("id") or new_id("toolu"),
                                                    "name": fn.get("name") or "", "input": {}})
                    self._calls[index] = self.index
                if fn.get("arguments") and self._calls[index] == self.index:
                    out += self._delta({"type": "input_json_delta", "partial_json": fn["arguments"]})
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> bytes:
        out = self._close()
        reason, sequence = stop_reason(self.finish_reason, "".join(self._text), self.req.get("stop_sequences") or None)
        usage = _usage(self.usage)
        out += sse("message_delta", {"type": "message_delta",
                                     "delta": {"stop_reason": reason, "stop_sequence": sequence},
                                     "usage": {"output_tokens": usage["output_tokens"],
                                               "input_tokens": usage["input_tokens"],
                                               "cache_read_input_tokens": usage["cache_read_input_tokens"]}})
        return out + sse("message_stop", {"type": "message_stop"})

    @staticmethod
    def fail(status: int, message: str) -> bytes:
        return sse("error", error_body(status, message))
