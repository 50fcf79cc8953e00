"""The v0 inference path: an OpenAI body goes to the runner nearly as is; the reply gains LM Studio's extras.

``stats``, ``model_info`` and ``runtime`` go on the reply, and on the last chunk of a stream: llama-server puts its
``timings`` on its last chunk (the one with ``finish_reason``, or the ``usage`` chunk after it when
``stream_options.include_usage`` is set). A runtime that sends no timings gets one extra chunk at the end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from .stats import v0_stats
from .wire import V0ModelInfo, V0Runtime

_MAX_TOKEN_KEYS = ("max_tokens", "max_completion_tokens", "n_predict")


def upstream_body(body: dict[str, Any], model_name: str) -> dict[str, Any]:
    """The body the runner gets: LM Studio-only keys removed, ``max_tokens: -1`` (unlimited) left to the runner."""
    out = {k: v for k, v in body.items() if k != "ttl"}
    out["model"] = model_name
    for key in _MAX_TOKEN_KEYS:
        value = out.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value < 0:
            del out[key]
    return out


def token_limit(body: dict[str, Any]) -> int | None:
    for key in _MAX_TOKEN_KEYS:
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
    return None


def finish_reason(obj: dict[str, Any]) -> str | None:
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return str(choice["finish_reason"])
    return None


def is_last_chunk(chunk: dict[str, Any]) -> bool:
    """llama-server's closing chunk: it carries ``timings`` and ends generation (or is the trailing usage chunk)."""
    if "timings" not in chunk:
        return False
    choices = chunk.get("choices")
    return not choices or finish_reason(chunk) is not None


@dataclass
class Extras:
    """What LM Studio adds to a reply, fixed for one request."""

    model_info: V0ModelInfo
    runtime: V0Runtime
    waited: float = 0.0
    max_tokens: int | None = None

    def apply(self, obj: dict[str, Any], *, finish: str | None = None) -> dict[str, Any]:
        """Add ``stats``, ``model_info`` and ``runtime`` to a reply or last chunk (in place; returns it)."""
        stats = v0_stats(
            obj.get("timings"),
            finish_reason=finish or finish_reason(obj),
            waited=self.waited,
            max_tokens=self.max_tokens,
            stop_type=obj.get("stop_type"),
        )
        obj["stats"] = msgspec.to_builtins(stats)
        obj["model_info"] = msgspec.to_builtins(self.model_info)
        obj["runtime"] = msgspec.to_builtins(self.runtime)
        return obj


@dataclass
class StreamDecorator:
    """Follows a v0 stream chunk by chunk and puts the extras on its last chunk."""

    extras: Extras
    finish: str | None = None
    done: bool = False
    template: dict[str, Any] = field(default_factory=dict)

    def chunk(self, chunk: dict[str, Any]) -> dict[str, Any]:
        self.finish = finish_reason(chunk) or self.finish
        if not self.template:
            self.template = {k: chunk[k] for k in ("id", "object", "created", "model") if k in chunk}
        if not self.done and is_last_chunk(chunk):
            self.done = True
            self.extras.apply(chunk, finish=self.finish)
        return chunk

    def trailer(self) -> dict[str, Any] | None:
        """A closing chunk with the extras, when no chunk could carry them (a runtime without timings)."""
        if self.done:
            return None
        self.done = True
        chunk = {**self.template, "choices": []}
        chunk.setdefault("created", int(time.time()))
        return self.extras.apply(chunk, finish=self.finish)
