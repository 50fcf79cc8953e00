"""LM Studio's view of a model (``/api/v0/models`` and ``/api/v1/models``), computed from the host's model data.

Facts come from ``ModelSpec.metadata`` (GGUF facts a discovery plugin read: ``architecture``, ``quantization``,
``context_length``, ``parameter_count``, ``tools``, ``embedding``, ``vision``, ...) and from the spec itself
(``mmproj``, ``params``); the file name is the last resort for the quantization.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any, Literal

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
_CTX_PARAM_KEYS = ("ctx_size", "ctx-size", "c", "n_ctx")
_CTX_FLAGS = ("-c", "--ctx-size")
_EMBEDDING_FLAGS = ("--embedding", "--embeddings")


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


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in ("", "0", "false", "no", "off")
    return bool(value)


def model_kind(spec: ModelSpec, meta: Mapping[str, Any]) -> ModelKind:
    """``embeddings`` for a model served with ``--embeddings``, ``vlm`` with a projector, else ``llm``."""
    if (
        _truthy(spec.params.get("embeddings"))
        or _truthy(spec.params.get("embedding"))
        or any(arg in _EMBEDDING_FLAGS for arg in spec.args)
        or _truthy(meta.get("embedding"))
    ):
        return "embeddings"
    if spec.mmproj or _truthy(spec.params.get("mmproj")) or _truthy(meta.get("vision")):
        return "vlm"
    return "llm"


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


def configured_context(spec: ModelSpec) -> int | None:
    """The context size the runner is started with (``params.ctx_size`` or ``-c`` in ``args``), if set and > 0."""
    for key in _CTX_PARAM_KEYS:
        value = spec.params.get(key)
        if isinstance(value, (int, str)) and str(value).isdigit() and int(value) > 0:
            return int(value)
    for i, arg in enumerate(spec.args[:-1]):
        if arg in _CTX_FLAGS and spec.args[i + 1].isdigit() and int(spec.args[i + 1]) > 0:
            return int(spec.args[i + 1])
    return None


def max_context_length(spec: ModelSpec, meta: Mapping[str, Any]) -> int:
    """The context the model was trained for (GGUF ``context_length``), else the configured one, else 0."""
    value = _first(meta, "context_length", "n_ctx_train", "max_context_length")
    try:
        if value is not None and int(value) > 0:
            return int(value)
    except (TypeError, ValueError):
        pass
    return configured_context(spec) or 0


def loaded_context(spec: ModelSpec, meta: Mapping[str, Any], runner_n_ctx: int | None = None) -> int:
    """The context of a loaded instance: what the runner reports, else the configured size, else the trained one."""
    if runner_n_ctx:
        return runner_n_ctx
    return configured_context(spec) or max_context_length(spec, meta)


def is_loaded(status: ModelStatus | None) -> bool:
    return status is not None and status.state == "loaded"


def v0_model(spec: ModelSpec, status: ModelStatus | None, *, default_publisher: str) -> V0Model:
    meta = facts(spec, status)
    caps = ["tool_use"] if _truthy(meta.get("tools")) else []
    return V0Model(
        id=spec.name,
        type=model_kind(spec, meta),
        publisher=publisher(spec, meta, default_publisher),
        arch=architecture(meta),
        quantization=quantization(spec, meta),
        state="loaded" if is_loaded(status) else "not-loaded",
        max_context_length=max_context_length(spec, meta),
        capabilities=caps,
    )


def v1_model(
    spec: ModelSpec,
    status: ModelStatus | None,
    *,
    default_publisher: str,
    size_bytes: int | None = None,
    runner_n_ctx: int | None = None,
) -> V1Model:
    meta = facts(spec, status)
    kind = model_kind(spec, meta)
    quant = quantization(spec, meta)
    instances = []
    if is_loaded(status):
        instances.append(
            V1LoadedInstance(
                id=spec.name,
                config=V1InstanceConfig(context_length=loaded_context(spec, meta, runner_n_ctx)),
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
        max_context_length=max_context_length(spec, meta),
        format="gguf",
    )
    if kind != "embeddings":  # LM Studio leaves these out for embedding models
        model.architecture = architecture(meta)
        model.capabilities = V1Capabilities(vision=kind == "vlm", trained_for_tool_use=_truthy(meta.get("tools")))
        description = _first(meta, "description", "general.description")
        model.description = str(description) if description is not None else None
    return model


def v1_type(spec: ModelSpec, status: ModelStatus | None = None) -> Literal["llm", "embedding"]:
    return "embedding" if model_kind(spec, facts(spec, status)) == "embeddings" else "llm"
