"""Pure translation between Ollama's API and llama-server's OpenAI-compatible API (no I/O, no host).

Requests: ``/api/chat`` → ``POST /v1/chat/completions``. ``/api/generate`` → ``/v1/chat/completions`` with the
prompt as one user message (plus ``system``), so the model's own chat template applies as it does in Ollama;
``raw: true`` → ``/v1/completions`` with the prompt as is; a ``suffix`` → llama-server's ``/infill`` (fill in the
middle, for models with FIM tokens). Ollama's ``template`` and ``context`` are not supported (ignored).

Replies: OpenAI chunks become NDJSON lines. Tool-call fragments are gathered and sent as one chunk (arguments parsed
into JSON objects) before the final ``done`` chunk, which carries ``done_reason`` and the counts and durations (ns)
from llama-server's ``timings``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable
from typing import Any

import msgspec

from .wire import ChatRequest, GenerateRequest, Message

# --- small helpers ---------------------------------------------------------------------------------------------------

_encode = msgspec.json.Encoder().encode
NS = 1_000_000_000

_stamp_second = -1
_stamp_prefix = ""


def created_at(now_ns: int | None = None) -> str:
    """RFC 3339 UTC time with nanoseconds, as Ollama writes ``created_at``."""
    global _stamp_second, _stamp_prefix
    t = time.time_ns() if now_ns is None else now_ns
    sec, frac = divmod(t, NS)
    if sec != _stamp_second:
        _stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
        _stamp_second = sec
    return f"{_stamp_prefix}.{frac:09d}Z"


def ndjson(obj: Any) -> bytes:
    """One NDJSON line (never blank: an object always encodes to at least ``{}``)."""
    return _encode(obj) + b"\n"


def error_line(message: str) -> bytes:
    return ndjson({"error": message})


# --- keep_alive ------------------------------------------------------------------------------------------------------

_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


class BadKeepAlive(ValueError):
    pass


def parse_duration(text: str) -> float:
    """A Go duration string (``"5m"``, ``"1h30m"``, ``"300ms"``, ``"-1s"``, ``"0"``) in seconds.

    A bare number is taken as seconds, as Ollama clients commonly send ``"300"`` or ``"-1"``.
    """
    s = text.strip()
    try:
        return float(s)
    except ValueError:
        pass
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    pos, total = 0, 0.0
    while pos < len(s):
        m = _DURATION_PART.match(s, pos)
        if not m:
            raise BadKeepAlive(f'time: invalid duration "{text}"')
        total += float(m.group(1)) * _DURATION_UNITS[m.group(2)]
        pos = m.end()
    if not s:
        raise BadKeepAlive(f'time: invalid duration "{text}"')
    return sign * total


def keep_alive_ttl(value: float | str | None) -> float | None:
    """``keep_alive`` → the scheduler's per-request ttl: ``None`` (model default), 0 (unload after the request),
    seconds, or -1 (never unload) for any negative value."""
    if value is None:
        return None
    seconds = parse_duration(value) if isinstance(value, str) else float(value)
    if math.isnan(seconds):
        raise BadKeepAlive("keep_alive: not a number")
    if seconds < 0:
        return -1.0
    return seconds


# --- options ---------------------------------------------------------------------------------------------------------

_SAMPLING_SAME = (
    "temperature", "top_p", "top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n", "presence_penalty",
    "frequency_penalty", "seed", "stop", "mirostat", "mirostat_tau", "mirostat_eta",
)
# Ollama option → llama-server flag (as a ``params`` key: ``ctx_size`` → ``--ctx-size``); need a runner restart.
LOAD_TIME_OPTIONS = {
    "num_ctx": "ctx_size",
    "num_batch": "batch_size",
    "num_gpu": "n_gpu_layers",
    "main_gpu": "main_gpu",
    "num_thread": "threads",
}


def split_options(options: dict[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Ollama ``options`` → (sampling fields for the request body, ``load_params`` for the scheduler).

    Unknown and unsupported options (``numa``, ``low_vram``, ``tfs_z``, ``penalize_newline``, ...) are ignored, as
    Ollama ignores options a runner does not know.
    """
    sampling: dict[str, Any] = {}
    load: dict[str, Any] = {}
    if not options:
        return sampling, load
    for key in _SAMPLING_SAME:
        value = options.get(key)
        if value is not None:
            sampling[key] = value
    if isinstance(sampling.get("stop"), str):
        sampling["stop"] = [sampling["stop"]]
    num_keep = options.get("num_keep")
    if num_keep is not None:
        sampling["n_keep"] = num_keep
    num_predict = options.get("num_predict")
    if isinstance(num_predict, (int, float)) and num_predict >= 0:
        sampling["max_tokens"] = int(num_predict)
    for option, param in LOAD_TIME_OPTIONS.items():
        value = options.get(option)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
            load[param] = int(value)
    if options.get("use_mmap") is False:
        load["no_mmap"] = True
    if options.get("use_mlock") is True:
        load["mlock"] = True
    return sampling, load


def response_format(fmt: Any) -> dict[str, Any] | None:
    """Ollama ``format`` → OpenAI ``response_format`` (``""``/``null`` → none)."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "json_object"}
    if isinstance(fmt, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": fmt}}
    raise ValueError(f"invalid format: {json.dumps(fmt)[:80]}; expected \"json\" or a JSON schema object")


def json_schema_param(fmt: Any) -> dict[str, Any] | None:
    """Ollama ``format`` → llama-server's native ``json_schema`` (for ``/v1/completions`` and ``/infill``)."""
    rf = response_format(fmt)
    if rf is None:
        return None
    return fmt if isinstance(fmt, dict) else {"type": "object"}


def logprob_fields(logprobs: bool | None, top_logprobs: int | None) -> dict[str, Any]:
    """Ollama ``logprobs``/``top_logprobs`` → the OpenAI chat fields of the same names."""
    if not logprobs:
        return {}
    out: dict[str, Any] = {"logprobs": True}
    if top_logprobs:
        out["top_logprobs"] = int(top_logprobs)
    return out


def logprobs_to_ollama(logprobs: Any) -> list[dict[str, Any]] | None:
    """OpenAI ``choice.logprobs`` (``{"content": [{token, logprob, bytes, top_logprobs}]}``) → Ollama's list."""
    if not isinstance(logprobs, dict):
        return None
    content = logprobs.get("content")
    if not content:
        return None

    def one(entry: dict[str, Any]) -> dict[str, Any]:
        item = {"token": entry.get("token", ""), "logprob": entry.get("logprob", 0.0)}
        if entry.get("bytes") is not None:
            item["bytes"] = entry["bytes"]
        return item

    out = []
    for entry in content:
        item = one(entry)
        top = entry.get("top_logprobs")
        if top:
            item["top_logprobs"] = [one(t) for t in top]
        out.append(item)
    return out


def think_fields(think: bool | str | None) -> dict[str, Any]:
    """Ollama ``think`` → llama-server's chat-template switches (``"high"`` etc. → ``reasoning_effort``)."""
    if think is None:
        return {}
    if isinstance(think, str):
        if think.lower() in ("false", "none", "off"):
            return {"chat_template_kwargs": {"enable_thinking": False}}
        if think.lower() == "true":
            return {"chat_template_kwargs": {"enable_thinking": True}}
        return {"chat_template_kwargs": {"enable_thinking": True}, "reasoning_effort": think.lower()}
    return {"chat_template_kwargs": {"enable_thinking": bool(think)}}


# --- messages --------------------------------------------------------------------------------------------------------

_IMAGE_MAGIC = (("iVBORw0KGgo", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"),
                ("Qk", "image/bmp"))


def image_url(b64: str) -> str:
    """Raw base64 (what Ollama clients send) → a ``data:`` URL; data URLs and http(s) URLs pass through."""
    if b64.startswith(("data:", "http://", "https://")):
        return b64
    mime = next((m for prefix, m in _IMAGE_MAGIC if b64.startswith(prefix)), "image/png")
    return f"data:{mime};base64,{b64}"


def _content(text: str | None, images: list[str] | None) -> str | list[dict[str, Any]]:
    if not images:
        return text or ""
    parts: list[dict[str, Any]] = []
    if text:
        parts.append({"type": "text", "text": text})
    parts.extend({"type": "image_url", "image_url": {"url": image_url(img)}} for img in images)
    return parts


def _arguments_text(arguments: dict[str, Any] | str | None) -> str:
    if arguments is None:
        return "{}"
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=False)


def messages_to_openai(messages: Iterable[Message]) -> list[dict[str, Any]]:
    """Ollama chat messages → OpenAI messages.

    Tool results name their tool (``tool_name``); OpenAI wants the id of the call they answer, so ids are given to
    the assistant's calls and each tool message is matched to the oldest unanswered call of that name.
    """
    out: list[dict[str, Any]] = []
    pending: list[tuple[str, str]] = []  # (call id, function name), unanswered
    n_calls = 0
    for msg in messages:
        item: dict[str, Any] = {"role": msg.role, "content": _content(msg.content, msg.images)}
        if msg.thinking:
            item["reasoning_content"] = msg.thinking
        if msg.tool_calls:
            calls = []
            for call in msg.tool_calls:
                call_id = call.id or f"call_{n_calls}"
                n_calls += 1
                calls.append({"id": call_id, "type": "function",
                              "function": {"name": call.function.name,
                                           "arguments": _arguments_text(call.function.arguments)}})
                pending.append((call_id, call.function.name))
            item["tool_calls"] = calls
        if msg.role == "tool":
            name = msg.tool_name or msg.name
            call_id = msg.tool_call_id
            if call_id is None and pending:
                idx = next((i for i, (_, n) in enumerate(pending) if n == name), 0)
                call_id = pending.pop(idx)[0]
            elif call_id is not None:
                pending = [p for p in pending if p[0] != call_id]
            if call_id is not None:
                item["tool_call_id"] = call_id
            if name:
                item["name"] = name
        out.append(item)
    return out


# --- request bodies --------------------------------------------------------------------------------------------------


def _common(body: dict[str, Any], sampling: dict[str, Any], stream: bool) -> dict[str, Any]:
    body.update(sampling)
    body["stream"] = stream
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def chat_body(req: ChatRequest, model: str, sampling: dict[str, Any], stream: bool) -> dict[str, Any]:
    """The ``/v1/chat/completions`` body for an Ollama chat request (``sampling`` from :func:`split_options`)."""
    body: dict[str, Any] = {"model": model, "messages": messages_to_openai(req.messages or [])}
    if req.tools:
        body["tools"] = req.tools
    rf = response_format(req.format)
    if rf is not None:
        body["response_format"] = rf
    body.update(think_fields(req.think))
    body.update(logprob_fields(req.logprobs, req.top_logprobs))
    return _common(body, sampling, stream)


def generate_request(req: GenerateRequest, model: str, sampling: dict[str, Any],
                     stream: bool) -> tuple[str, dict[str, Any]]:
    """(upstream path, body) for an Ollama generate request: see the module docstring for the choice of endpoint."""
    if req.suffix:
        body: dict[str, Any] = {"input_prefix": req.prompt or "", "input_suffix": req.suffix, "prompt": ""}
        schema = json_schema_param(req.format)
        if schema is not None:
            body["json_schema"] = schema
        sampling = dict(sampling)
        if "max_tokens" in sampling:  # the native endpoint's name
            sampling["n_predict"] = sampling.pop("max_tokens")
        body.update(sampling)
        body["stream"] = stream
        return "/infill", body
    if req.raw:
        if req.images:
            raise ValueError("images are not supported with raw: true")
        body = {"model": model, "prompt": req.prompt or ""}
        schema = json_schema_param(req.format)
        if schema is not None:
            body["json_schema"] = schema
        return "/v1/completions", _common(body, sampling, stream)
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": req.system})
    messages.append({"role": "user", "content": _content(req.prompt, req.images)})
    body = {"model": model, "messages": messages}
    rf = response_format(req.format)
    if rf is not None:
        body["response_format"] = rf
    body.update(think_fields(req.think))
    body.update(logprob_fields(req.logprobs, req.top_logprobs))
    return "/v1/chat/completions", _common(body, sampling, stream)


# --- replies ---------------------------------------------------------------------------------------------------------


def done_reason(finish_reason: str | None) -> str:
    """OpenAI ``finish_reason`` → Ollama ``done_reason`` (a tool call ends with ``stop`` in Ollama)."""
    return "length" if finish_reason == "length" else "stop"


def parse_arguments(arguments: Any) -> dict[str, Any]:
    """llama-server's tool-call ``arguments`` (a JSON string) → the JSON object Ollama clients require.

    Unparseable or non-object arguments are kept under ``"_raw"`` rather than dropped.
    """
    if isinstance(arguments, dict):
        return arguments
    if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
        return {}
    if isinstance(arguments, str):
        try:
            value = json.loads(arguments)
        except ValueError:
            return {"_raw": arguments}
        if isinstance(value, dict):
            return value
    return {"_raw": arguments}


def tool_calls_to_ollama(calls: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function") or {}
        item: dict[str, Any] = {"function": {"index": i, "name": fn.get("name") or "",
                                             "arguments": parse_arguments(fn.get("arguments"))}}
        if call.get("id"):
            item["id"] = call["id"]
        out.append(item)
    return out


def metrics(usage: dict[str, Any] | None, timings: dict[str, Any] | None, *, total_ns: int,
            load_ns: int) -> dict[str, int]:
    """Ollama's counts and durations (ns) from llama-server's ``usage`` and ``timings``."""
    usage = usage or {}
    timings = timings or {}
    # usage counts the whole prompt (cached tokens too), as Ollama does; timings only what was evaluated now.
    prompt_n = usage.get("prompt_tokens") or timings.get("prompt_n")
    eval_n = timings.get("predicted_n", usage.get("completion_tokens"))
    out = {
        "total_duration": int(total_ns),
        "load_duration": int(load_ns),
        "prompt_eval_count": int(prompt_n or 0),
        "prompt_eval_duration": int(float(timings.get("prompt_ms") or 0.0) * 1_000_000),
        "eval_count": int(eval_n or 0),
        "eval_duration": int(float(timings.get("predicted_ms") or 0.0) * 1_000_000),
    }
    return out


def _logprobs_field(logprobs: Any) -> bytes:
    converted = logprobs_to_ollama(logprobs)
    return b',"logprobs":' + _encode(converted) if converted else b""


class _Stream:
    """State shared by the chat and generate stream translators."""

    def __init__(self, model: str, started_ns: int, load_ns: int) -> None:
        self.model = model
        self.started_ns = started_ns
        self.load_ns = load_ns
        # Lines are assembled from pre-encoded pieces: this runs once per token.
        self._head = b'{"model":' + _encode(model) + b',"created_at":"'
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None
        self.timings: dict[str, Any] | None = None
        self.tool_calls: dict[int, dict[str, Any]] = {}

    def _note(self, event: dict[str, Any]) -> None:
        usage = event.get("usage")
        if usage:
            self.usage = usage
        timings = event.get("timings")
        if timings:
            self.timings = timings

    def _gather_tool_calls(self, fragments: list[dict[str, Any]]) -> None:
        for frag in fragments:
            idx = frag.get("index", len(self.tool_calls))
            call = self.tool_calls.get(idx)
            fn = frag.get("function") or {}
            if call is None:
                call = self.tool_calls[idx] = {"id": frag.get("id"), "function": {"name": "", "arguments": ""}}
            elif frag.get("id"):
                call["id"] = frag["id"]
            if fn.get("name"):
                call["function"]["name"] += fn["name"]
            args = fn.get("arguments")
            if args:
                if isinstance(args, str):
                    call["function"]["arguments"] += args
                else:
                    call["function"]["arguments"] = args

    def final_fields(self, now_ns: int | None = None) -> dict[str, Any]:
        now = time.monotonic_ns() if now_ns is None else now_ns
        fields: dict[str, Any] = {"done": True, "done_reason": done_reason(self.finish_reason)}
        fields.update(metrics(self.usage, self.timings, total_ns=now - self.started_ns, load_ns=self.load_ns))
        return fields


class ChatStream(_Stream):
    """OpenAI chat chunks → Ollama ``/api/chat`` NDJSON lines.

    ``started_ns`` is a ``time.monotonic_ns()`` reading taken when the request arrived.
    """

    def feed(self, event: dict[str, Any], stamp: str | None = None) -> bytes:
        """One upstream event → the bytes to send now (``b""`` when there is nothing to send yet).

        ``stamp``: the ``created_at`` to write (one reading for the events that arrived together).
        """
        choices = event.get("choices")
        if not choices:
            self._note(event)
            return b""
        choice = choices[0]
        delta = choice.get("delta")
        if choice.get("finish_reason") or "usage" in event or "timings" in event:
            self._note(event)
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if not delta:
            return b""
        fragments = delta.get("tool_calls")
        if fragments:
            self._gather_tool_calls(fragments)
        content = delta.get("content")
        thinking = delta.get("reasoning_content")
        if not content and not thinking:
            return b""
        stamp = stamp or created_at()
        line = self._head + stamp.encode() + b'","message":{"role":"assistant","content":' + _encode(content or "")
        if thinking:
            line += b',"thinking":' + _encode(thinking)
        line += b"}"
        if choice.get("logprobs"):
            line += _logprobs_field(choice["logprobs"])
        return line + b',"done":false}\n'

    def finish(self) -> bytes:
        """The pending tool-call chunk (if any) and the final ``done`` chunk."""
        out = b""
        if self.tool_calls:
            calls = tool_calls_to_ollama(self.tool_calls[i] for i in sorted(self.tool_calls))
            out = ndjson({"model": self.model, "created_at": created_at(),
                          "message": {"role": "assistant", "content": "", "tool_calls": calls}, "done": False})
        final = {"model": self.model, "created_at": created_at(), "message": {"role": "assistant", "content": ""}}
        final.update(self.final_fields())
        return out + ndjson(final)


class GenerateStream(_Stream):
    """OpenAI chat or text-completion chunks (or native ``/infill`` chunks) → Ollama ``/api/generate`` lines."""

    def feed(self, event: dict[str, Any], stamp: str | None = None) -> bytes:
        self._note(event)
        choices = event.get("choices")
        thinking = None
        if choices:
            choice = choices[0]
            fr = choice.get("finish_reason")
            if fr:
                self.finish_reason = fr
            delta = choice.get("delta")
            if delta is not None:
                text = delta.get("content")
                thinking = delta.get("reasoning_content")
            else:
                text = choice.get("text")
        elif "content" in event:  # native llama-server reply (/infill)
            text = event.get("content")
            if event.get("stop"):
                self.finish_reason = "length" if event.get("stop_type") == "limit" else "stop"
                if self.usage is None:
                    self.usage = {"prompt_tokens": event.get("tokens_evaluated")}
        else:
            return b""
        if not text and not thinking:
            return b""
        head = self._head + (stamp or created_at()).encode() + b'","response":' + _encode(text or "")
        if thinking:
            head += b',"thinking":' + _encode(thinking)
        if choices and choices[0].get("logprobs"):
            head += _logprobs_field(choices[0]["logprobs"])
        return head + b',"done":false}\n'

    def finish(self) -> bytes:
        final = {"model": self.model, "created_at": created_at(), "response": ""}
        final.update(self.final_fields())
        return ndjson(final)


def chat_reply(reply: dict[str, Any], model: str, *, started_ns: int, load_ns: int) -> dict[str, Any]:
    """A non-streamed ``chat.completion`` → one Ollama chat response."""
    choice = (reply.get("choices") or [{}])[0]
    msg = choice.get("message") or {}
    message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
    if msg.get("reasoning_content"):
        message["thinking"] = msg["reasoning_content"]
    if msg.get("tool_calls"):
        message["tool_calls"] = tool_calls_to_ollama(msg["tool_calls"])
    out: dict[str, Any] = {"model": model, "created_at": created_at(), "message": message, "done": True,
                           "done_reason": done_reason(choice.get("finish_reason"))}
    logprobs = logprobs_to_ollama(choice.get("logprobs"))
    if logprobs:
        out["logprobs"] = logprobs
    out.update(metrics(reply.get("usage"), reply.get("timings"),
                       total_ns=time.monotonic_ns() - started_ns, load_ns=load_ns))
    return out


def generate_reply(reply: dict[str, Any], model: str, *, started_ns: int, load_ns: int) -> dict[str, Any]:
    """A non-streamed chat, text completion or native ``/infill`` reply → one Ollama generate response."""
    thinking = None
    logprobs = None
    usage = reply.get("usage")
    if reply.get("choices"):
        choice = reply["choices"][0]
        logprobs = logprobs_to_ollama(choice.get("logprobs"))
        msg = choice.get("message")
        if msg is not None:
            text = msg.get("content") or ""
            thinking = msg.get("reasoning_content")
        else:
            text = choice.get("text") or ""
        reason = done_reason(choice.get("finish_reason"))
    else:
        text = reply.get("content") or ""
        reason = "length" if reply.get("stop_type") == "limit" else "stop"
        usage = usage or {"prompt_tokens": reply.get("tokens_evaluated")}
    out: dict[str, Any] = {"model": model, "created_at": created_at(), "response": text}
    if thinking:
        out["thinking"] = thinking
    if logprobs:
        out["logprobs"] = logprobs
    out.update({"done": True, "done_reason": reason})
    out.update(metrics(usage, reply.get("timings"), total_ns=time.monotonic_ns() - started_ns, load_ns=load_ns))
    return out


def load_reply(model: str, *, chat: bool, unloaded: bool) -> dict[str, Any]:
    """The answer to an empty request: the model was loaded (or unloaded, with ``keep_alive: 0``)."""
    out: dict[str, Any] = {"model": model, "created_at": created_at()}
    if chat:
        out["message"] = {"role": "assistant", "content": ""}
    else:
        out["response"] = ""
    out["done"] = True
    out["done_reason"] = "unload" if unloaded else "load"
    return out


# --- embeddings ------------------------------------------------------------------------------------------------------


def embed_inputs(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


def _normalize(vec: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vec))
    return [x / norm for x in vec] if norm > 0 else vec


def embeddings_from(reply: dict[str, Any], dimensions: int | None = None) -> list[list[float]]:
    """OpenAI embedding list → vectors in input order; ``dimensions`` truncates (and re-normalises) as Ollama does."""
    data = sorted(reply.get("data") or [], key=lambda d: d.get("index", 0))
    vectors = [list(d.get("embedding") or []) for d in data]
    if dimensions and dimensions > 0:
        vectors = [_normalize(v[:dimensions]) for v in vectors]
    return vectors
