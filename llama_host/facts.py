"""One source of model facts: what a model really runs with and what it can do, computed once per catalogue change
(and once per start with load parameters), read by the scheduler, every surface and the dashboard alike.

Two parts make the facts of a model:
- the runtime's part, through the core interface (``register(name, factory, facts=...)`` in ``register_runtimes``):
  the flags the runner really runs with (plugin-level defaults, the model's ``params``, the request's load
  parameters), the context those flags give and whether they serve embeddings. Only the runtime knows its flags
  (llama-server's ``ctx_size``, ``-c``, ``--embeddings``); the core names no runtime.
- the file's part, from ``ModelSpec.metadata`` (GGUF facts a discovery plugin read, or configured): the trained
  context, architecture, quantization, parameter count, chat template (tools, thinking), projector (vision).

A runtime without a ``facts`` function takes no load parameters (a remote server, a command): surfaces' load
parameters are dropped for it, the same way from every dialect.

The memory estimate (``ModelFacts.memory``, what ``scheduler.memory_budget`` counts) is ``memory:`` when configured;
else the runtime's own ``memory(spec, facts)`` estimate (llama-server's: weights + KV cache); else, for a runtime that
occupies local memory, the size of the model's files; a runtime registered with ``local=False`` occupies none (0).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from llama_host.host import Host
    from llama_host.types import ModelSpec, RuntimeInfo

# Architectures that only embed (GGUF ``general.architecture``).
EMBEDDING_ARCHS = frozenset({"bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "t5encoder",
                             "modern-bert", "neo-bert"})
_THINKING_MARKERS = ("enable_thinking", "<think>", "reasoning_content")


@dataclass(frozen=True)
class RuntimeFacts:
    """A runtime's part of a model's facts, returned by the ``facts`` function it registers.

    ``params``: the flags the runner runs with, every level merged (e.g. plugin defaults < model ``params`` < load
    parameters). ``context``: the context those flags give (``None``: the model's trained context).
    ``embedding``: the flags make the runner serve embeddings.
    """

    params: Mapping[str, Any] = field(default_factory=dict)
    context: int | None = None
    embedding: bool = False


RuntimeFactsFunction = Callable[["ModelSpec", "Host"], RuntimeFacts]
"""``facts(spec, host) -> RuntimeFacts``: ``spec.params`` already holds the request's load parameters."""


class ModelFacts(msgspec.Struct, kw_only=True, frozen=True):
    """What a model runs with and can do (``GET /api/v1/models`` serves it as ``facts``)."""

    #: the context the runner runs (or will run) with: configured or load-time, else the trained one
    context_length: int | None = None
    #: the context the model was trained for (GGUF ``context_length``)
    trained_context: int | None = None
    #: the runner's effective flags (empty for a runtime that takes none)
    params: dict[str, Any] = {}
    embedding: bool = False
    vision: bool = False
    tools: bool = False
    thinking: bool = False
    architecture: str | None = None
    quantization: str | None = None
    parameter_count: int | None = None
    #: bytes of the model file (plus projector), when known
    file_size: int | None = None
    #: the scheduler's memory estimate in bytes: ``memory:``, else the runtime's estimate, else the files' size (0 for
    #: a runtime that occupies no local memory)
    memory: int = 0

    @property
    def capabilities(self) -> list[str]:
        """``embedding`` alone for an embedding model; else ``completion`` and what the model supports."""
        if self.embedding:
            return ["embedding"]
        caps = ["completion"]
        caps += [name for name, on in (("tools", self.tools), ("thinking", self.thinking),
                                       ("vision", self.vision)) if on]
        return caps


def truthy(value: Any) -> bool:
    """A flag's value as a switch: ``true``, ``1``, ``"yes"``, ``"on"`` are on."""
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return value is not None and value is not False and value != 0


def _pick(meta: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = meta.get(key)
        if value is not None and value != "":
            return value
    return None


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)) and value > 0:
        return int(value)
    if isinstance(value, str) and value.isdigit() and int(value) > 0:
        return int(value)
    return None


def architecture(meta: Mapping[str, Any]) -> str | None:
    value = _pick(meta, "architecture", "arch", "general.architecture")
    return str(value) if value is not None else None


def trained_context(meta: Mapping[str, Any]) -> int | None:
    arch = architecture(meta) or ""
    return _positive_int(_pick(meta, "context_length", "n_ctx_train", f"{arch}.context_length", "max_context_length"))


def chat_template(meta: Mapping[str, Any]) -> str:
    raw = meta.get("gguf")
    value = _pick(meta, "chat_template") or (raw.get("tokenizer.chat_template") if isinstance(raw, dict) else None) \
        or meta.get("tokenizer.chat_template")
    return value if isinstance(value, str) else ""


def _quantization(meta: Mapping[str, Any]) -> str | None:
    label = _pick(meta, "quantization", "quantization_level", "quant", "file_type_name")
    if isinstance(label, dict):  # e.g. {"name": "Q4_K_M", "bits_per_weight": 4.8}
        label = label.get("name")
    return str(label) if label else None


def file_size(spec: ModelSpec) -> int | None:
    """The model file plus its projector, from discovery metadata or ``stat`` (a few µs; once per catalogue
    change)."""
    size = _positive_int(spec.metadata.get("size") or spec.metadata.get("file_size")) or 0
    for path in ([] if size else [spec.path]) + [spec.mmproj]:
        if path:
            with contextlib.suppress(OSError):
                size += os.stat(os.path.expanduser(path)).st_size
    return size or None


def model_facts(spec: ModelSpec, runtime: RuntimeInfo | None, host: Host | None = None) -> ModelFacts:
    """The facts of ``spec`` (whose ``params`` hold any load parameters) run by ``runtime``. Pure but for ``stat``."""
    meta = spec.metadata or {}
    rt = runtime.facts(spec, host) if runtime is not None and runtime.facts is not None else RuntimeFacts()
    trained = trained_context(meta)
    context = rt.context or trained
    arch = architecture(meta)
    template = chat_template(meta)
    from llama_host.config import parse_size  # config imports types, which imports this module

    size = file_size(spec)
    embedding = rt.embedding or truthy(meta.get("embedding")) or truthy(meta.get("is_embedding")) \
        or meta.get("type") in ("embedding", "embeddings") or arch in EMBEDDING_ARCHS
    count = _pick(meta, "parameter_count", "general.parameter_count", "parameters", "n_params")
    facts = ModelFacts(
        context_length=context, trained_context=trained, params=dict(rt.params), embedding=bool(embedding),
        vision=bool(spec.mmproj) or truthy(meta.get("vision")) or bool(meta.get("mmproj")),
        tools=truthy(meta.get("tools")) or truthy(meta.get("tool_use")) or truthy(meta.get("supports_tools"))
        or "tools" in template or "tool_call" in template,
        thinking=truthy(meta.get("thinking")) or any(m in template for m in _THINKING_MARKERS),
        architecture=arch, quantization=_quantization(meta),
        parameter_count=int(count) if isinstance(count, (int, float)) and not isinstance(count, bool) else None,
        file_size=size)
    if spec.memory is not None:
        memory = parse_size(spec.memory)
    elif runtime is not None and not runtime.local:
        return facts  # a remote server: no local memory
    elif runtime is not None and runtime.memory is not None:
        memory = runtime.memory(spec, facts)
    else:
        memory = size or 0
    return msgspec.structs.replace(facts, memory=memory)


def applicable_load_params(runtime: RuntimeInfo | None, load_params: Mapping[str, Any] | None) -> dict[str, Any]:
    """Load parameters a runtime takes: none for a runtime without a ``facts`` function (it has no flags)."""
    if not load_params or runtime is None or runtime.facts is None:
        return {}
    return dict(load_params)


def with_load_params(spec: ModelSpec, load_params: Mapping[str, Any]) -> ModelSpec:
    return msgspec.structs.replace(spec, params={**spec.params, **load_params}) if load_params else spec


def params_match(running: ModelFacts, load_params: Mapping[str, Any]) -> bool:
    """A load request equal to what the runner runs with needs no restart."""
    return all(running.params.get(k) == v for k, v in load_params.items())
