"""The SDK protocol's model calls: predictions (``respond`` and ``complete``), tokenize, prompt templates, embeddings.

A ``predict`` channel carries the chat history and a stack of prediction settings (KV config layers, a later layer
winning). ``respond`` sends the chat to the runner's ``/v1/chat/completions``; ``complete`` (the SDKs add a
``completeModeFormatting`` layer whose template joins the messages unformatted) sends the joined text to
``/v1/completions``. The reply streams back as ``fragment`` messages, ends with ``success`` (stats, model info, the
configs used) and the channel's close. A client ``cancel`` closes the runner's connection (generation stops there)
and the prediction ends with ``stopReason: "userStopped"``.

Settings read (``llm.prediction.*``): ``maxPredictedTokens``, ``temperature``, ``stopStrings``, ``topKSampling``,
``topPSampling``, ``minPSampling``, ``repeatPenalty``, ``structured`` (``json`` → llama-server's JSON schema
constraint, ``gbnf`` → its grammar); a checkbox setting (``{checked, value}``) applies when checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from . import sdk_calls, stats
from .sdk_models import KvStack, Specifier, find, load_config, one_info
from .sdk_ws import Channel, Context, ProtocolError, convert

COMPLETE_LAYER = "completeModeFormatting"
_PREFIX = "llm.prediction."
#: SDK sampling settings → the runner's body keys
_SAMPLING = {"temperature": "temperature", "topKSampling": "top_k", "topPSampling": "top_p",
             "minPSampling": "min_p", "repeatPenalty": "repeat_penalty"}


# --- parameters -------------------------------------------------------------------------------------------------

class MessagePart(msgspec.Struct, kw_only=True, rename="camel"):
    type: str
    text: str | None = None
    content: str | None = None
    tool_call_id: str | None = None
    tool_call_request: dict[str, Any] | None = None
    name: str | None = None


class HistoryMessage(msgspec.Struct, kw_only=True):
    role: str
    content: str | list[MessagePart] = []


class History(msgspec.Struct, kw_only=True):
    messages: list[HistoryMessage] = []


class PredictParam(msgspec.Struct, kw_only=True, rename="camel"):
    model_specifier: Specifier
    history: History
    prediction_config_stack: KvStack = msgspec.field(default_factory=KvStack)
    fuzzy_preset_identifier: str | None = None


class TextParam(msgspec.Struct, kw_only=True, rename="camel"):
    specifier: Specifier
    input_string: str


class EmbedParam(msgspec.Struct, kw_only=True, rename="camel"):
    model_specifier: Specifier
    input_string: str


class TemplateParam(msgspec.Struct, kw_only=True, rename="camel"):
    specifier: Specifier
    history: History
    prediction_config_stack: KvStack = msgspec.field(default_factory=KvStack)


# --- history and settings → the runner's body --------------------------------------------------------------------

def _text(message: HistoryMessage, i: int) -> str:
    if isinstance(message.content, str):
        return message.content
    texts = []
    for part in message.content:
        if part.type == "text":
            texts.append(part.text or "")
        elif part.type == "file":
            raise ProtocolError(f"history message {i}: file attachments are not supported by this server",
                                suggestion="send the file's text as a text part")
    return "\n".join(texts)


def openai_messages(history: History) -> list[dict[str, Any]]:
    """LM Studio's chat history as OpenAI chat messages (tool calls and results included)."""
    out: list[dict[str, Any]] = []
    for i, message in enumerate(history.messages):
        if message.role in ("system", "user"):
            out.append({"role": message.role, "content": _text(message, i)})
        elif message.role == "assistant":
            turn: dict[str, Any] = {"role": "assistant", "content": _text(message, i)}
            calls = [p.tool_call_request for p in message.content
                     if not isinstance(message.content, str) and p.type == "toolCallRequest" and p.tool_call_request]
            if calls:
                turn["tool_calls"] = [{"id": c.get("id") or f"call_{i}_{n}", "type": "function",
                                       "function": {"name": c.get("name", ""),
                                                    "arguments": json.dumps(c.get("arguments") or {})}}
                                      for n, c in enumerate(calls)]
            out.append(turn)
        elif message.role == "tool":
            for part in message.content if not isinstance(message.content, str) else ():
                if part.type == "toolCallResult":
                    out.append({"role": "tool", "content": part.content or "", "tool_call_id": part.tool_call_id})
        else:
            raise ProtocolError(f"history message {i}: unknown role '{message.role}'")
    return out


def _checkbox(value: Any) -> Any:
    """A ``{checked, value}`` setting's value when checked (``None`` when not); a plain value as is."""
    if isinstance(value, dict) and "checked" in value:
        return value.get("value") if value.get("checked") else None
    return value


def _number(name: str, value: Any) -> float | int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ProtocolError(f"invalid {name}: {value!r} is not a number")
    return value


@dataclass
class Request:
    """One prediction's runner request: the path, the body and the token limit it sets."""

    path: str
    body: dict[str, Any]
    max_tokens: int | None = None


def runner_request(param: PredictParam, model_name: str) -> Request:
    settings = {k.removeprefix(_PREFIX): v for k, v in param.prediction_config_stack.flat().items()
                if k.startswith(_PREFIX)}
    if param.fuzzy_preset_identifier:
        raise ProtocolError(f"preset '{param.fuzzy_preset_identifier}' not found: this server has no presets",
                            display={"code": "generic.presetNotFound",
                                     "specifiedFuzzyPresetIdentifier": param.fuzzy_preset_identifier,
                                     "availablePresetsSample": [], "totalAvailablePresets": 0})
    tools = settings.get("tools")
    if isinstance(tools, dict) and tools.get("type") not in (None, "none"):
        raise ProtocolError("tool use (act) is not supported by this server yet")
    body: dict[str, Any] = {"model": model_name, "stream": True, "stream_options": {"include_usage": True}}
    if param.prediction_config_stack.has_layer(COMPLETE_LAYER):
        # the completion template joins every message's text, unformatted
        path, schema_key = "/v1/completions", "json_schema"
        body["prompt"] = "".join(_text(m, i) for i, m in enumerate(param.history.messages))
    else:
        path, schema_key = "/v1/chat/completions", "response_format"
        body["messages"] = openai_messages(param.history)
        body["return_progress"] = True  # llama-server then reports prompt processing as `prompt_progress`
    max_tokens = _checkbox(settings.get("maxPredictedTokens"))
    if max_tokens is not None and max_tokens is not False:
        max_tokens = _number("maxPredictedTokens", max_tokens)
        if max_tokens is not None and max_tokens >= 0:
            body["max_tokens"] = int(max_tokens)
    for name, key in _SAMPLING.items():
        value = _number(name, _checkbox(settings.get(name)))
        if value is not None:
            body[key] = value
    stops = settings.get("stopStrings")
    if stops:
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ProtocolError(f"invalid stopStrings: {stops!r}")
        body["stop"] = stops
    structured = settings.get("structured")
    if isinstance(structured, dict) and structured.get("type") == "json":
        schema = structured.get("jsonSchema")
        if not isinstance(schema, dict):
            raise ProtocolError("structured output of type 'json' needs a 'jsonSchema' object")
        body[schema_key] = schema if schema_key == "json_schema" else {
            "type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
    elif isinstance(structured, dict) and structured.get("type") == "gbnf":
        if not isinstance(structured.get("gbnfGrammar"), str):
            raise ProtocolError("structured output of type 'gbnf' needs a 'gbnfGrammar' string")
        body["grammar"] = structured["gbnfGrammar"]
    return Request(path, body, body.get("max_tokens"))


# --- the prediction -----------------------------------------------------------------------------------------------

@dataclass
class Fold:
    """What the runner's chunks add up to: fragments sent, the last timings and usage, the finish reason."""

    fragments: int = 0
    first_at: float | None = None
    finish_reason: str | None = None
    timings: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    progress: float = -1.0
    messages: list[dict[str, Any]] = field(default_factory=list)

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        """The channel messages for one chunk: prompt progress, then fragments."""
        out: list[dict[str, Any]] = []
        progress = chunk.get("prompt_progress")
        if isinstance(progress, dict) and self.fragments == 0:
            total, done = progress.get("total") or 0, progress.get("processed") or 0
            if isinstance(total, (int, float)) and isinstance(done, (int, float)) and total > 0:
                value = min(1.0, max(0.0, done / total))
                if value > self.progress:
                    self.progress = value
                    out.append({"type": "promptProcessingProgress", "progress": value})
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
            for text, kind in ((delta.get("reasoning_content"), "reasoning"),
                               (delta.get("content") if delta else choice.get("text"), "none")):
                if isinstance(text, str) and text:
                    out.append(_fragment(text, kind))
                    self.fragments += 1
                    if self.first_at is None:
                        self.first_at = time.monotonic()
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out


def _fragment(text: str, reasoning: str) -> dict[str, Any]:
    return {"type": "fragment", "fragment": {"content": text, "tokensCount": 1, "containsDrafted": False,
                                             "reasoningType": reasoning, "isStructural": False}}


def prediction_stats(fold: Fold, facts: sdk_calls.CallFacts, request: Request, cancelled: bool,
                     started: float) -> dict[str, Any]:
    timings = fold.timings
    predicted = stats.output_tokens(timings, fold.usage) or fold.fragments
    prompt = stats.input_tokens(timings, fold.usage)
    if cancelled:
        reason = "userStopped"
    else:
        predicted_n = timings.get("predicted_n") if timings else None
        reason = stats.stop_reason(fold.finish_reason, max_tokens=request.max_tokens,
                                   predicted_n=predicted_n if isinstance(predicted_n, int) else predicted)
    out: dict[str, Any] = {"stopReason": reason, "totalTimeSec": time.monotonic() - started,
                           "predictedTokensCount": predicted, "promptTokensCount": prompt,
                           "totalTokensCount": prompt + predicted}
    if timings:
        out["tokensPerSecond"] = stats.tokens_per_second(timings)
        out["timeToFirstTokenSec"] = stats.time_to_first_token(timings, facts.queue_wait - facts.load_seconds)
    elif fold.first_at is not None:
        out["timeToFirstTokenSec"] = fold.first_at - started - facts.load_seconds
    return out


async def predict(ctx: Context, channel: Channel, param: Any) -> None:
    p = convert(param, PredictParam, "predict")
    spec = find(ctx, p.model_specifier)
    request = runner_request(p, spec.name)
    facts = sdk_calls.CallFacts()
    fold = Fold()
    endpoint = f"/{ctx.namespace} predict"
    started = time.monotonic()

    async def pump() -> None:
        async with contextlib.aclosing(sdk_calls.stream(ctx.host, spec, request.path, request.body, endpoint,
                                                        facts)) as chunks:
            async for chunk in chunks:
                for message in fold.feed(chunk):
                    await channel.send(message)

    task = asyncio.ensure_future(pump())
    waiter = asyncio.ensure_future(channel.cancelled.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()  # closing the stream closes the runner's connection: generation stops there
            await asyncio.gather(task, return_exceptions=True)
    cancelled = task.cancelled()
    if not cancelled:
        task.result()  # the runner's error becomes the channel's error
    await channel.send({"type": "success", "stats": prediction_stats(fold, facts, request, cancelled, started),
                        "modelInfo": await one_info(ctx, spec), "loadModelConfig": load_config(ctx, spec),
                        "predictionConfig": {"fields": [{"key": k, "value": v} for k, v in
                                                        p.prediction_config_stack.flat().items()]}})


# --- the other model calls --------------------------------------------------------------------------------------

async def tokenize(ctx: Context, param: Any) -> dict[str, Any]:
    p = convert(param, TextParam, "tokenize")
    spec = find(ctx, p.specifier)
    return {"tokens": await sdk_calls.tokenize(ctx.host, spec, p.input_string, f"/{ctx.namespace} tokenize")}


async def count_tokens(ctx: Context, param: Any) -> dict[str, Any]:
    p = convert(param, TextParam, "countTokens")
    spec = find(ctx, p.specifier)
    tokens = await sdk_calls.tokenize(ctx.host, spec, p.input_string, f"/{ctx.namespace} countTokens")
    return {"tokenCount": len(tokens)}


async def apply_prompt_template(ctx: Context, param: Any) -> dict[str, Any]:
    p = convert(param, TemplateParam, "applyPromptTemplate")
    spec = find(ctx, p.specifier)
    prompt = await sdk_calls.apply_template(ctx.host, spec, openai_messages(p.history),
                                            f"/{ctx.namespace} applyPromptTemplate")
    return {"formatted": prompt}


async def embed_string(ctx: Context, param: Any) -> dict[str, Any]:
    p = convert(param, EmbedParam, "embedString")
    spec = find(ctx, p.model_specifier)
    return {"embedding": await sdk_calls.embed(ctx.host, spec, p.input_string, f"/{ctx.namespace} embedString")}
