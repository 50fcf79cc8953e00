"""LM Studio's view of a model (``/api/v0/models`` and ``/api/v1/models``), computed from the host's model data.

What the model runs with and can do (its context, embedding, vision, tools) is the core's model facts
(``host.scheduler.facts(name)``, :class:`llama_host.facts.ModelFacts`); labels come from ``ModelSpec.metadata``
(GGUF facts a discovery plugin read: ``architecture``, ``quantization``, ``parameter_count``, ...); the file name is
the last resort for the quantization.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal

from llama_host.facts import ModelFacts
from llama_host.types import ModelSpec, ModelStatus

from .wire import (
    V1Capabilities,
    V1InstanceConfig,
    V1LoadedInstance,
    V0Model,
    V1Model,
    V1Quantization,
)

ModelKind = Literal["llm", "vlm", "embeddings"]

_QUANT_IN_NAME = re.compile(r"(?:^|[-_.])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|FP16|F16|F32)(?=$|[-_.])", re.IGNORECASE)


def facts(spec: ModelSpec, status: ModelStatus | None = None) -> dict[str, Any]:
    """The model's metadata: the spec's, overlaid with what the scheduler knows now."""
    merged = dict(spec.metadata)
    if status is not None:
        merged.update(status.metadata)
    return merged


def _first(meta: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        value = meta.get(key)
        if value not in (None, ""):
            return value
    return None


def model_kind(facts: ModelFacts) -> ModelKind:
    """``embeddings`` for a model served for embeddings, ``vlm`` with a projector, else ``llm``."""
    if facts.embedding:
        return "embeddings"
    return "vlm" if facts.vision else "llm"


_LMSTUDIO_HOMES = (".lmstudio", "lm-studio", "LM Studio")


def publisher(spec: ModelSpec, meta: Mapping[str, Any], default: str) -> str:
    """The metadata's publisher, else the folder of LM Studio's layout (``~/.lmstudio/models/<publisher>/<repo>/``)."""
    value = _first(meta, "publisher")
    if value is not None:
        return str(value)
    if spec.path:
        parts = PurePath(spec.path).parts
        for i in range(len(parts) - 4, 0, -1):
            if parts[i] == "models" and parts[i - 1] in _LMSTUDIO_HOMES:
                return parts[i + 1]
    return default


def architecture(meta: Mapping[str, Any]) -> str | None:
    value = _first(meta, "architecture", "arch", "general.architecture")
    return str(value) if value is not None else None


def quantization(spec: ModelSpec, meta: Mapping[str, Any]) -> str | None:
    """The quantization name (``Q4_K_M``, ``F16``): from the metadata, else from the file name."""
    value = _first(meta, "quantization", "quant", "file_type_name")
    if value is not None:
        return str(value)
    if spec.path:
        match = _QUANT_IN_NAME.search(PurePath(spec.path).stem)
        if match:
            return match.group(1).upper()
    return None


def bits_per_weight(quant: str | None) -> float | None:
    """Nominal bits per weight of a quantization name (``Q4_K_M`` → 4, ``BF16`` → 16)."""
    if not quant:
        return None
    name = quant.upper()
    if name in ("F32", "FP32"):
        return 32
    if name in ("F16", "BF16", "FP16"):
        return 16
    match = re.match(r"I?Q(\d+)", name)
    return int(match.group(1)) if match else None


def params_string(meta: Mapping[str, Any]) -> str | None:
    """Human-readable parameter count (``7B``, ``1.5B``, ``270M``) from ``parameter_count``."""
    value = _first(meta, "params_string")
    if value is not None:
        return str(value)
    count = _first(meta, "parameter_count", "n_params")
    try:
        n = float(count) if count is not None else 0.0
    except (TypeError, ValueError):
        return None
    if n <= 0:
        return None
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            value = n / scale
            text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".rstrip("0").rstrip(".")
            return text + unit
    return str(int(n))


def max_context_length(facts: ModelFacts) -> int:
    """The context the model was trained for, else the one it runs with, else 0."""
    return facts.trained_context or facts.context_length or 0


def loaded_context(facts: ModelFacts) -> int:
    """The context of a loaded instance: what the runner runs with (configured, plugin-level or load-time)."""
    return facts.context_length or 0


def is_loaded(status: ModelStatus | None) -> bool:
    return status is not None and status.state == "loaded"


def v0_model(spec: ModelSpec, status: ModelStatus | None, model: ModelFacts, *, default_publisher: str) -> V0Model:
    meta = facts(spec, status)
    caps = ["tool_use"] if model.tools else []
    return V0Model(
        id=spec.name,
        type=model_kind(model),
        publisher=publisher(spec, meta, default_publisher),
        arch=architecture(meta),
        quantization=quantization(spec, meta),
        state="loaded" if is_loaded(status) else "not-loaded",
        max_context_length=max_context_length(model),
        capabilities=caps,
        scheduling=status.scheduling if status is not None else {},
    )


def v1_model(
    spec: ModelSpec,
    status: ModelStatus | None,
    model_facts: ModelFacts,
    *,
    default_publisher: str,
    size_bytes: int | None = None,
) -> V1Model:
    meta = facts(spec, status)
    kind = model_kind(model_facts)
    quant = quantization(spec, meta)
    instances = []
    if is_loaded(status):
        instances.append(
            V1LoadedInstance(
                id=spec.name,
                config=V1InstanceConfig(context_length=loaded_context(model_facts)),
            )
        )
    size = _first(meta, "size_bytes", "file_size", "size")
    model = V1Model(
        type="embedding" if kind == "embeddings" else "llm",
        publisher=publisher(spec, meta, default_publisher),
        key=spec.name,
        display_name=str(_first(meta, "display_name", "name", "general.name") or spec.name),
        quantization=V1Quantization(name=quant, bits_per_weight=bits_per_weight(quant)) if quant else None,
        size_bytes=int(size) if isinstance(size, (int, float)) else (size_bytes or 0),
        params_string=params_string(meta),
        loaded_instances=instances,
        max_context_length=max_context_length(model_facts),
        format="gguf",
    )
    if kind != "embeddings":  # LM Studio leaves these out for embedding models
        model.architecture = architecture(meta)
        model.capabilities = V1Capabilities(vision=kind == "vlm", trained_for_tool_use=model_facts.tools)
        description = _first(meta, "description", "general.description")
        model.description = str(description) if description is not None else None
    return model


def v1_type(model: ModelFacts) -> Literal["llm", "embedding"]:
    return "embedding" if model.embedding else "llm"
