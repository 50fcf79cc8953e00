"""Loading progress in the dialects (``loading_progress``): the text every dialect shows, and the OpenAI-style event
that the OpenAI and LM Studio surfaces send (see ``Exchange.loading`` in :mod:`llama_host.request`)."""

from __future__ import annotations

import time

import msgspec

_encode = msgspec.json.Encoder().encode


def loading_text(model: str, seconds: float, last_load: float | None) -> str:
    """``loading model qwen: 2.0 s (last load took 3.1 s)``."""
    about = f" (last load took {last_load:.1f} s)" if last_load else ""
    return f"loading model {model}: {seconds:.1f} s{about}"


def openai_loading_event(model: str, text: str, *, chat: bool) -> bytes:
    """A chat stream: a ``chat.completion.chunk`` (id ``chatcmpl-loading``) whose ``delta.reasoning_content`` holds
    the text, as llama-swap sends it (chat UIs show it as thinking; SDKs take it as an ordinary chunk). Any other
    stream: an SSE comment, which every SSE client skips."""
    if not chat:
        return b": " + text.encode() + b"\n\n"
    chunk = {"id": "chatcmpl-loading", "object": "chat.completion.chunk", "created": int(time.time()), "model": model,
             "choices": [{"index": 0, "delta": {"role": "assistant", "reasoning_content": text + "\n"},
                          "finish_reason": None}]}
    return b"data: " + _encode(chunk) + b"\n\n"
