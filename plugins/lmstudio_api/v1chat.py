"""``POST /api/v1/chat``: LM Studio's input mapped to an OpenAI chat body, the runner's stream mapped to its events.

The surface always streams from the runner and folds the chunks with :class:`ChatFold`: a streaming client gets
the events as they come, a non-streaming one the folded result. Event order (LM Studio's)::

    chat.start, [model_load.start, model_load.progress, model_load.end], prompt_processing.start,
    [prompt_processing.progress...], prompt_processing.end, [reasoning.start, reasoning.delta..., reasoning.end],
    message.start, message.delta..., message.end, chat.end
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from llama_host.errors import BadRequest

from .stats import v1_stats
from .wire import V1ChatRequest, V1ChatResult, V1OutputItem

Event = tuple[str, dict[str, Any]]

_TEXT_TYPES = ("message", "text", "input_text")
_IMAGE_TYPES = ("image", "input_image")


def user_message(req: V1ChatRequest) -> dict[str, Any]:
    """The user turn of ``input``: a string, or text and image items (images become OpenAI ``image_url`` parts)."""
    if isinstance(req.input, str):
        return {"role": "user", "content": req.input}
    parts: list[dict[str, Any]] = []
    for i, item in enumerate(req.input):
        if item.type in _TEXT_TYPES:
            text = item.content if item.content is not None else item.text
            if text is None:
                raise BadRequest(f"input[{i}]: a '{item.type}' item needs 'content'", param=f"input[{i}].content")
            parts.append({"type": "text", "text": text})
        elif item.type in _IMAGE_TYPES:
            if not item.data_url:
                raise BadRequest(f"input[{i}]: an image item needs 'data_url'", param=f"input[{i}].data_url")
            parts.append({"type": "image_url", "image_url": {"url": item.data_url}})
        else:
            raise BadRequest(f"input[{i}]: unknown input type '{item.type}'", param=f"input[{i}].type")
    if not parts:
        raise BadRequest("'input' is empty", param="input")
    if all(p["type"] == "text" for p in parts):
        return {"role": "user", "content": "\n\n".join(p["text"] for p in parts)}
    return {"role": "user", "content": parts}


def messages(req: V1ChatRequest, history: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """The conversation to send: the earlier turns (``previous_response_id``), the system prompt, the new input.

    A ``system_prompt`` replaces the earlier conversation's system message.
    """
    turns = [m for m in (history or []) if not (req.system_prompt is not None and m.get("role") == "system")]
    if req.system_prompt is not None:
        turns.insert(0, {"role": "system", "content": req.system_prompt})
    turns.append(user_message(req))
    return turns


def openai_body(req: V1ChatRequest, conversation: list[dict[str, Any]], model_name: str) -> dict[str, Any]:
    """The streaming chat-completions body for the runner."""
    body: dict[str, Any] = {
        "model": model_name,
        "messages": conversation,
        "stream": True,
        "stream_options": {"include_usage": True},
        # llama-server then reports prompt processing as `prompt_progress` chunks; other servers ignore the key.
        "return_progress": True,
    }
    for key in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty"):
        value = getattr(req, key)
        if value is not None:
            body[key] = value
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    if req.reasoning == "off":
        body["chat_template_kwargs"] = {"enable_thinking": False}
    elif req.reasoning in ("low", "medium", "high"):
        body["reasoning_effort"] = req.reasoning
    return body


@dataclass
class ChatFold:
    """Folds the runner's chat chunks into LM Studio events and, at the end, the aggregated result."""

    model_instance_id: str
    reasoning: list[str] = field(default_factory=list)
    message: list[str] = field(default_factory=list)
    reasoning_deltas: int = 0
    timings: dict[str, Any] | None = None
    usage: dict[str, Any] | None = None
    finish_reason: str | None = None
    _phase: str = "prompt"  # prompt → reasoning / message → done
    _started: set[str] = field(default_factory=set)

    def start(self) -> list[Event]:
        """Events once the model is ready and the prompt goes to the runner."""
        return [("prompt_processing.start", {})]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        progress = chunk.get("prompt_progress")
        if isinstance(progress, dict) and self._phase == "prompt":
            total = progress.get("total") or 0
            done = progress.get("processed") or 0
            if total > 0:
                events.append(("prompt_processing.progress", {"progress": min(1.0, max(0.0, done / total))}))
        if isinstance(chunk.get("timings"), dict):
            self.timings = chunk["timings"]
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning_content")
            if thought:
                events += self._enter("reasoning")
                self.reasoning.append(thought)
                self.reasoning_deltas += 1
                events.append(("reasoning.delta", {"content": thought}))
            text = delta.get("content")
            if text:
                events += self._enter("message")
                self.message.append(text)
                events.append(("message.delta", {"content": text}))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _enter(self, phase: str) -> list[Event]:
        if self._phase == phase:
            return []
        events = self._leave()
        self._phase = phase
        events.append((f"{phase}.start", {}))
        return events

    def _leave(self) -> list[Event]:
        if self._phase == "prompt":
            return [("prompt_processing.end", {})]
        if self._phase in ("reasoning", "message"):
            return [(f"{self._phase}.end", {})]
        return []

    def close(self) -> list[Event]:
        """Events that end whatever is open once the runner's stream is over."""
        events = self._leave()
        self._phase = "done"
        return events

    def output(self) -> list[V1OutputItem]:
        items = []
        if self.reasoning:
            items.append(V1OutputItem(type="reasoning", content="".join(self.reasoning)))
        if self.message or not self.reasoning:
            items.append(V1OutputItem(type="message", content="".join(self.message)))
        return items

    def assistant_turn(self) -> dict[str, Any]:
        return {"role": "assistant", "content": "".join(self.message)}

    def result(self, *, waited: float = 0.0, load_seconds: float = 0.0, response_id: str | None = None) -> V1ChatResult:
        result = V1ChatResult(
            model_instance_id=self.model_instance_id,
            output=self.output(),
            stats=v1_stats(
                self.timings,
                self.usage,
                reasoning_tokens=self.reasoning_deltas,
                waited=waited,
                load_seconds=load_seconds,
            ),
        )
        if response_id is not None:
            result.response_id = response_id
        return result
