"""OpenAI's Responses API (``/v1/responses``) translated to llama-server's chat completions: pure, no I/O.

- :func:`chat_request`: a Responses request (``instructions``, ``input`` items — messages, ``function_call``,
  ``function_call_output`` —, function tools, ``tool_choice``, ``text.format``, ``max_output_tokens``, sampling)
  plus the conversation of a ``previous_response_id`` → a ``/v1/chat/completions`` body.
- :func:`response_from_chat`: a chat completion → a Response object (message, function calls, reasoning).
- :class:`ResponseStream`: chat-completion chunks → the Responses streaming events, each with its
  ``sequence_number``: ``response.created``, ``response.in_progress``, ``response.output_item.added``,
  ``response.content_part.added``, ``response.output_text.delta``/``.done``, ``response.content_part.done``,
  ``response.reasoning_text.delta``/``.done``, ``response.function_call_arguments.delta``/``.done``,
  ``response.output_item.done``, ``response.completed`` (``response.incomplete`` when ``max_output_tokens`` cut the
  reply), and ``error`` + ``response.failed`` when the runner fails mid-stream.
- :class:`ResponseStore`: past responses for ``previous_response_id``, an LRU bounded in count and bytes.

Not supported (a 400 names them): built-in tools (web search, file search, computer use, ...), ``input_file`` parts,
``background``, ``conversation``.
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

_encode = msgspec.json.Encoder().encode

#: Responses keys passed to llama-server as they are (same meaning in chat completions)
_SAMPLING = ("temperature", "top_p", "parallel_tool_calls", "seed", "user", "top_k", "min_p", "repeat_penalty",
             "presence_penalty", "frequency_penalty")


class RequestError(ValueError):
    """The request cannot be translated: a 400 for the client, naming the parameter."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(12)}"


# --- request → chat completions ---------------------------------------------------------------------------------


def _text_of(content: Any, where: str) -> str:
    """Text of a ``function_call_output`` / instruction content: a string or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return "".join(parts)
    if content is None:
        return ""
    raise RequestError(f"{where} must be a string or a list of text parts", where)


def _content_parts(content: Any, where: str) -> str | list[dict[str, Any]]:
    """A message's Responses content → chat content (a string when it is all text)."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RequestError(f"{where} must be a string or a list of content parts", where)
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        if not isinstance(part, dict):
            raise RequestError(f"{where}[{i}] must be an object", f"{where}[{i}]")
        kind = part.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text") or "")})
        elif kind == "refusal":
            parts.append({"type": "text", "text": str(part.get("refusal") or "")})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise RequestError("input_image needs an image_url (a URL or a data: URL); file_id is not supported",
                                   f"{where}[{i}].image_url")
            image: dict[str, Any] = {"url": url}
            if part.get("detail") in ("low", "high", "auto"):
                image["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise RequestError(f"content part type {kind!r} is not supported", f"{where}[{i}].type")
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _messages_of_input(items: Any) -> list[dict[str, Any]]:
    """``input`` (a string or a list of items) → chat messages."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    if not isinstance(items, list):
        raise RequestError("input must be a string or a list of input items", "input")
    out: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if not isinstance(item, dict):
            raise RequestError(f"{where} must be an object", where)
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise RequestError(f"{where}.role must be user, assistant, system or developer", f"{where}.role")
            out.append({"role": "system" if role == "developer" else role,
                        "content": _content_parts(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            name, args = item.get("name"), item.get("arguments")
            if not isinstance(name, str) or not name:
                raise RequestError(f"{where}.name is required", f"{where}.name")
            call = {"id": str(item.get("call_id") or item.get("id") or new_id("call")), "type": "function",
                    "function": {"name": name, "arguments": args if isinstance(args, str) else _encode(args or {})
                                 .decode()}}
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant" and not isinstance(last.get("content"), list):
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or not call_id:
                raise RequestError(f"{where}.call_id is required", f"{where}.call_id")
            out.append({"role": "tool", "tool_call_id": call_id,
                        "content": _text_of(item.get("output"), f"{where}.output")})
        elif kind == "reasoning":
            continue  # the model's own earlier reasoning: chat templates drop it from history anyway
        elif kind == "item_reference":
            raise RequestError("item_reference is not supported: send the items themselves or previous_response_id",
                               f"{where}.type")
        else:
            raise RequestError(f"input item type {kind!r} is not supported", f"{where}.type")
    return out


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise RequestError("tools must be a list", "tools")
    out = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else None
            raise RequestError(f"tool type {kind!r} is not supported: only function tools run on a local model",
                               f"tools[{i}].type")
        if not isinstance(tool.get("name"), str) or not tool["name"]:
            raise RequestError(f"tools[{i}].name is required", f"tools[{i}].name")
        fn: dict[str, Any] = {"name": tool["name"], "parameters": tool.get("parameters") or
                              {"type": "object", "properties": {}}}
        if tool.get("description"):
            fn["description"] = tool["description"]
        if tool.get("strict") is not None:
            fn["strict"] = bool(tool["strict"])
        out.append({"type": "function", "function": fn})
    return out


def _tool_choice(choice: Any) -> Any:
    if choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    if isinstance(choice, dict) and choice.get("type") == "allowed_tools":
        return "required" if choice.get("mode") == "required" else "auto"
    raise RequestError("tool_choice must be auto, none, required or {type: function, name}", "tool_choice")


def _response_format(text: Any) -> dict[str, Any] | None:
    if text is None:
        return None
    if not isinstance(text, dict):
        raise RequestError("text must be an object", "text")
    fmt = text.get("format")
    if fmt is None or (isinstance(fmt, dict) and fmt.get("type") == "text"):
        return None
    if isinstance(fmt, dict) and fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("schema"), dict):
            raise RequestError("text.format.schema must be a JSON schema object", "text.format.schema")
        schema: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": fmt["schema"]}
        if fmt.get("strict") is not None:
            schema["strict"] = bool(fmt["strict"])
        if fmt.get("description"):
            schema["description"] = fmt["description"]
        return {"type": "json_schema", "json_schema": schema}
    raise RequestError("text.format.type must be text, json_object or json_schema", "text.format.type")


def conversation_of(req: Mapping[str, Any], history: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The chat messages of this turn: the earlier conversation (of ``previous_response_id``) and ``input``,
    without ``instructions`` (which OpenAI does not carry from one response to the next)."""
    if "input" not in req and not history:
        raise RequestError("input is required", "input")
    return [*(history or ()), *_messages_of_input(req.get("input", []))]


def chat_request(req: Mapping[str, Any], model: str, conversation: list[dict[str, Any]], *,
                 stream: bool) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for a Responses request whose turn is ``conversation``."""
    messages = list(conversation)
    instructions = req.get("instructions")
    if instructions is not None:
        text = _text_of(instructions, "instructions") if not isinstance(instructions, list) or \
            all(isinstance(p, dict) and "text" in p for p in instructions) else None
        if text is None:  # instructions as a list of input items
            messages = [*_messages_of_input(instructions), *messages]
        elif text:
            messages.insert(0, {"role": "system", "content": text})
    if not messages:
        raise RequestError("input is empty", "input")
    body: dict[str, Any] = {"model": model, "messages": messages}
    for key in _SAMPLING:
        if req.get(key) is not None:
            body[key] = req[key]
    if req.get("max_output_tokens") is not None:
        mot = req["max_output_tokens"]
        if isinstance(mot, bool) or not isinstance(mot, int) or mot < 1:
            raise RequestError("max_output_tokens must be a positive integer", "max_output_tokens")
        body["max_tokens"] = mot
    if req.get("tools"):
        body["tools"] = _tools(req["tools"])
    if req.get("tool_choice") is not None:
        body["tool_choice"] = _tool_choice(req["tool_choice"])
    fmt = _response_format(req.get("text"))
    if fmt is not None:
        body["response_format"] = fmt
    if isinstance(req.get("top_logprobs"), int) and req["top_logprobs"] > 0:
        body["logprobs"], body["top_logprobs"] = True, req["top_logprobs"]
    reasoning = req.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") in ("minimal", "low", "medium", "high"):
        body["reasoning_effort"] = reasoning["effort"]
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return body


# --- chat completion → Response ---------------------------------------------------------------------------------


def usage_of(usage: Mapping[str, Any] | None) -> dict[str, Any]:
    u = usage or {}
    inp, out = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {"input_tokens": inp, "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": 0},
            "output_tokens": out, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": inp + out}


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "message", "id": item_id, "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def reasoning_item(item_id: str, text: str) -> dict[str, Any]:
    return {"type": "reasoning", "id": item_id, "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def function_item(item_id: str, call_id: str, name: str, arguments: str, status: str = "completed") -> dict[str, Any]:
    return {"type": "function_call", "id": item_id, "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def response_object(req: Mapping[str, Any], *, response_id: str, created_at: int, model: str, status: str,
                    output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                    error: dict[str, Any] | None = None, incomplete: str | None = None) -> dict[str, Any]:
    """A Response object echoing the request's settings, as OpenAI returns it."""
    text = req.get("text") if isinstance(req.get("text"), dict) else {}
    return {
        "id": response_id, "object": "response", "created_at": created_at, "status": status,
        "background": False, "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": req.get("instructions"), "max_output_tokens": req.get("max_output_tokens"),
        "max_tool_calls": None, "model": model, "output": output,
        "parallel_tool_calls": req.get("parallel_tool_calls", True) is not False,
        "previous_response_id": req.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None}, "service_tier": "default",
        "store": req.get("store", True) is not False,
        "temperature": req.get("temperature", 1.0), "text": {"format": {"type": "text"}, **(text or {})},
        "tool_choice": req.get("tool_choice", "auto"), "tools": req.get("tools") or [],
        "top_logprobs": req.get("top_logprobs", 0), "top_p": req.get("top_p", 1.0), "truncation": "disabled",
        "usage": usage, "user": req.get("user"), "metadata": req.get("metadata") or {},
    }


def _status_of(finish_reason: str | None) -> tuple[str, str | None]:
    if finish_reason == "length":
        return "incomplete", "max_output_tokens"
    return "completed", None


def response_from_chat(req: Mapping[str, Any], reply: Mapping[str, Any], *, response_id: str, model: str,
                       created_at: int | None = None) -> dict[str, Any]:
    """A (non-streamed) chat completion → the Response object."""
    choices = reply.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    msg = choice.get("message") or {}
    output: list[dict[str, Any]] = []
    if msg.get("reasoning_content"):
        output.append(reasoning_item(new_id("rs"), msg["reasoning_content"]))
    if msg.get("content") or not msg.get("tool_calls"):
        output.append(message_item(new_id("msg"), msg.get("content") or ""))
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") or {}
        output.append(function_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name") or "",
                                    fn.get("arguments") or ""))
    status, incomplete = _status_of(choice.get("finish_reason"))
    return response_object(req, response_id=response_id, created_at=created_at or int(time.time()), model=model,
                           status=status, output=output, usage=usage_of(reply.get("usage")), incomplete=incomplete)


def assistant_messages(output: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A response's output items as chat history (for a later ``previous_response_id``)."""
    out: list[dict[str, Any]] = []
    for item in output:
        if item["type"] == "message":
            out.append({"role": "assistant", "content": "".join(c.get("text", "") for c in item["content"])})
        elif item["type"] == "function_call":
            call = {"id": item["call_id"], "type": "function",
                    "function": {"name": item["name"], "arguments": item["arguments"]}}
            if out and out[-1]["role"] == "assistant":
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
    return out


# --- chat chunks → Responses events -----------------------------------------------------------------------------


def sse(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + _encode(data) + b"\n\n"


class ResponseStream:
    """Chat-completion chunks (decoded dicts) → Responses SSE events. One instance per request.

    :meth:`start` gives ``response.created`` and ``response.in_progress``; :meth:`feed` one chunk's events;
    :meth:`finish` closes the open item and gives ``response.completed`` (or ``response.incomplete``);
    :meth:`fail` gives ``error`` and ``response.failed``. :attr:`response` is the final Response object.
    """

    def __init__(self, req: Mapping[str, Any], model: str, response_id: str | None = None,
                 created_at: int | None = None) -> None:
        self.req, self.model = req, model
        self.id = response_id or new_id("resp")
        self.created_at = created_at or int(time.time())
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None  # the item receiving deltas
        self._text: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}  # chat tool-call index → its function_call item
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.response: dict[str, Any] | None = None
        self._created = False
        self._delta_head = b""

    def _event(self, kind: str, **data: Any) -> bytes:
        data["type"] = kind
        data["sequence_number"] = self.seq
        self.seq += 1
        return sse(kind, data)

    def _snapshot(self, status: str, **kw: Any) -> dict[str, Any]:
        return response_object(self.req, response_id=self.id, created_at=self.created_at, model=self.model,
                               status=status, output=list(self.output), **kw)

    def queued(self, metadata: dict[str, Any]) -> bytes:
        """The response waits (its model loads): ``response.created`` with status ``queued`` the first time, then
        ``response.queued``; ``metadata`` says why (shown in the snapshot's ``metadata``)."""
        snapshot = self._snapshot("queued")
        snapshot["metadata"] = {**snapshot["metadata"], **metadata}
        if not self._created:
            self._created = True
            return self._event("response.created", response=snapshot)
        return self._event("response.queued", response=snapshot)

    def start(self) -> bytes:
        created = b"" if self._created else self._event("response.created", response=self._snapshot("in_progress"))
        self._created = True
        return created + self._event("response.in_progress", response=self._snapshot("in_progress"))

    def _close(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        self._open = None
        idx = len(self.output) - 1
        text = "".join(self._text)
        self._text = []
        if item["type"] == "message":
            item["content"][0]["text"] = text
            item["status"] = "completed"
            part = item["content"][0]
            return (self._event("response.output_text.done", item_id=item["id"], output_index=idx, content_index=0,
                                text=text, logprobs=[])
                    + self._event("response.content_part.done", item_id=item["id"], output_index=idx,
                                  content_index=0, part=part)
                    + self._event("response.output_item.done", output_index=idx, item=item))
        if item["type"] == "reasoning":
            item["content"][0]["text"] = text
            return (self._event("response.reasoning_text.done", item_id=item["id"], output_index=idx,
                                content_index=0, text=text)
                    + self._event("response.content_part.done", item_id=item["id"], output_index=idx,
                                  content_index=0, part=item["content"][0])
                    + self._event("response.output_item.done", output_index=idx, item=item))
        item["arguments"] = text
        item["status"] = "completed"
        return (self._event("response.function_call_arguments.done", item_id=item["id"], output_index=idx,
                            arguments=text, name=item["name"])
                + self._event("response.output_item.done", output_index=idx, item=item))

    def _begin(self, item: dict[str, Any]) -> bytes:
        out = self._close()
        self.output.append(item)
        self._open = item
        idx = len(self.output) - 1
        added = dict(item)
        if item["type"] == "message":
            added["content"] = []
            out += self._event("response.output_item.added", output_index=idx, item=added)
            out += self._event("response.content_part.added", item_id=item["id"], output_index=idx,
                               content_index=0, part={"type": "output_text", "text": "", "annotations": [],
                                                      "logprobs": []})
        elif item["type"] == "reasoning":
            added["content"] = []
            out += self._event("response.output_item.added", output_index=idx, item=added)
            out += self._event("response.content_part.added", item_id=item["id"], output_index=idx,
                               content_index=0, part={"type": "reasoning_text", "text": ""})
        else:
            out += self._event("response.output_item.added", output_index=idx, item=added)
        return out

    def feed(self, chunk: Mapping[str, Any]) -> bytes:
        out = b""
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            reasoning = delta.get("reasoning_content")
            if reasoning:
                if self._open is None or self._open["type"] != "reasoning":
                    out += self._begin(reasoning_item(new_id("rs"), ""))
                self._text.append(reasoning)
                out += self._event("response.reasoning_text.delta", item_id=self._open["id"],  # type: ignore[index]
                                   output_index=len(self.output) - 1, content_index=0, delta=reasoning)
            content = delta.get("content")
            if content:
                if self._open is None or self._open["type"] != "message":
                    out += self._begin(message_item(new_id("msg"), "", status="in_progress"))
                    self._delta_head = (b'event: response.output_text.delta\ndata: {"type":"response.output_text.'
                                        b'delta","item_id":"' + self._open["id"].encode()  # type: ignore[index]
                                        + b'","output_index":%d,"content_index":0,"logprobs":[],"delta":'
                                        % (len(self.output) - 1))
                self._text.append(content)
                # the hot path (one event per token): a prepared head, only the text and the number encoded
                out += self._delta_head + _encode(content) + b',"sequence_number":%d}\n\n' % self.seq
                self.seq += 1
            for call in delta.get("tool_calls") or ():
                index = call.get("index", 0)
                fn = call.get("function") or {}
                item = self._calls.get(index)
                if item is None:
                    item = function_item(new_id("fc"), call.get("id") or new_id("call"), fn.get("name") or "", "",
                                         status="in_progress")
                    self._calls[index] = item
                    out += self._begin(item)
                elif item is not self._open:  # fragments of an earlier call after another item began: rare
                    item["arguments"] += fn.get("arguments") or ""
                    continue
                if fn.get("arguments"):
                    self._text.append(fn["arguments"])
                    out += self._event("response.function_call_arguments.delta", item_id=item["id"],
                                       output_index=len(self.output) - 1, delta=fn["arguments"])
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def finish(self) -> bytes:
        out = self._close()
        if not self.output:  # an empty reply is still one (empty) message, as OpenAI sends it
            out += self._begin(message_item(new_id("msg"), "", status="in_progress")) + self._close()
        status, incomplete = _status_of(self.finish_reason)
        self.response = self._snapshot(status, usage=usage_of(self.usage), incomplete=incomplete)
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return out + self._event(kind, response=self.response)

    def fail(self, message: str, code: str = "server_error") -> bytes:
        error = {"code": "server_error", "message": message}
        created = b"" if self._created else self._event("response.created", response=self._snapshot("in_progress"))
        self._created = True
        self.response = self._snapshot("failed", error=error, usage=usage_of(self.usage))
        return (created + self._event("error", code=code, message=message, param=None)
                + self._event("response.failed", response=self.response))


# --- previous_response_id ---------------------------------------------------------------------------------------


@dataclass
class Stored:
    response: dict[str, Any]
    #: the conversation up to and including this response's output, as chat messages (without instructions)
    messages: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0


class ResponseStore:
    """Past responses by id, least recently used first out, bounded by ``max_entries`` and ``max_bytes``
    (each entry's size taken as its JSON length). In memory only: a restart forgets them."""

    def __init__(self, max_entries: int = 1000, max_bytes: int = 64 * 2**20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[str, Stored] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, response_id: str) -> Stored | None:
        entry = self._items.get(response_id)
        if entry is not None:
            self._items.move_to_end(response_id)
        return entry

    def put(self, response: dict[str, Any], messages: list[dict[str, Any]]) -> None:
        size = len(_encode(response)) + len(_encode(messages))
        if size > self.max_bytes or self.max_entries <= 0:
            return
        self.delete(response["id"])
        self._items[response["id"]] = Stored(response, messages, size)
        self.bytes += size
        while len(self._items) > self.max_entries or self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= old.size

    def delete(self, response_id: str) -> bool:
        old = self._items.pop(response_id, None)
        if old is None:
            return False
        self.bytes -= old.size
        return True
