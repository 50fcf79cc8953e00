"""LM Studio's generation statistics, computed from llama-server's ``timings`` and ``finish_reason``.

llama-server reports, on its non-streamed reply and on its last streamed chunk::

    "timings": {"prompt_n", "prompt_ms", "prompt_per_second", "predicted_n", "predicted_ms",
                "predicted_per_second", "cache_n"}

LM Studio's v0 ``stats``: ``tokens_per_second`` ← ``predicted_per_second``,
``generation_time`` (s) ← ``predicted_ms``,
``time_to_first_token`` (s) ← time spent waiting for the model (load, queue) plus ``prompt_ms``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .wire import V0Stats, V1ChatStats

STOP_REASONS = (
    "eosFound",
    "stopStringFound",
    "maxPredictedTokensReached",
    "contextLengthReached",
    "toolCalls",
    "userStopped",
    "modelUnloaded",
    "failed",
)


def _number(timings: Mapping[str, Any] | None, key: str) -> float | None:
    if not timings:
        return None
    value = timings.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def stop_reason(
    finish_reason: str | None,
    *,
    stop_type: str | None = None,
    max_tokens: int | None = None,
    predicted_n: int | None = None,
) -> str:
    """Map llama-server's end of generation to LM Studio's ``stop_reason``.

    ``length`` means the token limit when the request set one and generation reached it; otherwise the context ran
    out (llama-server reports both as ``length``). ``stop_type`` (llama-server's native field: ``eos``, ``word``,
    ``limit``) is used when present.
    """
    if stop_type == "word":
        return "stopStringFound"
    if finish_reason == "tool_calls":
        return "toolCalls"
    if finish_reason == "length" or stop_type == "limit":
        limited = max_tokens is not None and max_tokens >= 0
        if limited and (predicted_n is None or predicted_n >= max_tokens):
            return "maxPredictedTokensReached"
        return "contextLengthReached"
    if finish_reason == "stop" or stop_type == "eos":
        return "eosFound"
    if finish_reason in ("cancelled", "abort"):
        return "userStopped"
    return "failed"


def tokens_per_second(timings: Mapping[str, Any] | None) -> float:
    rate = _number(timings, "predicted_per_second")
    if rate is not None:
        return rate
    n, ms = _number(timings, "predicted_n"), _number(timings, "predicted_ms")
    return n / (ms / 1000.0) if n and ms else 0.0


def generation_time(timings: Mapping[str, Any] | None) -> float:
    return (_number(timings, "predicted_ms") or 0.0) / 1000.0


def time_to_first_token(timings: Mapping[str, Any] | None, waited: float = 0.0) -> float:
    """Seconds from the request's arrival to its first token: ``waited`` (load and queue) plus prompt processing."""
    return max(waited, 0.0) + (_number(timings, "prompt_ms") or 0.0) / 1000.0


def v0_stats(
    timings: Mapping[str, Any] | None,
    *,
    finish_reason: str | None,
    waited: float = 0.0,
    max_tokens: int | None = None,
    stop_type: str | None = None,
) -> V0Stats:
    predicted_n = _number(timings, "predicted_n")
    return V0Stats(
        tokens_per_second=tokens_per_second(timings),
        time_to_first_token=time_to_first_token(timings, waited),
        generation_time=generation_time(timings),
        stop_reason=stop_reason(
            finish_reason,
            stop_type=stop_type,
            max_tokens=max_tokens,
            predicted_n=int(predicted_n) if predicted_n is not None else None,
        ),
    )


def input_tokens(timings: Mapping[str, Any] | None, usage: Mapping[str, Any] | None) -> int:
    """Prompt tokens, cached ones included (llama-server's ``prompt_n`` counts only the tokens it evaluated)."""
    if usage and isinstance(usage.get("prompt_tokens"), int):
        return int(usage["prompt_tokens"])
    return int((_number(timings, "prompt_n") or 0) + (_number(timings, "cache_n") or 0))


def output_tokens(timings: Mapping[str, Any] | None, usage: Mapping[str, Any] | None) -> int:
    if usage and isinstance(usage.get("completion_tokens"), int):
        return int(usage["completion_tokens"])
    return int(_number(timings, "predicted_n") or 0)


def v1_stats(
    timings: Mapping[str, Any] | None,
    usage: Mapping[str, Any] | None = None,
    *,
    reasoning_tokens: int = 0,
    waited: float = 0.0,
    load_seconds: float = 0.0,
) -> V1ChatStats:
    """v1 ``stats``; ``model_load_time_seconds`` only when this request loaded the model (as LM Studio does)."""
    stats = V1ChatStats(
        input_tokens=input_tokens(timings, usage),
        total_output_tokens=output_tokens(timings, usage),
        reasoning_output_tokens=reasoning_tokens,
        tokens_per_second=tokens_per_second(timings),
        time_to_first_token_seconds=time_to_first_token(timings, waited - load_seconds),
    )
    if load_seconds > 0:
        stats.model_load_time_seconds = load_seconds
    return stats
