"""Ollama's model listings (``/api/tags``, ``/api/show``, ``/api/ps``) from model specs, the core's model facts
(``host.scheduler.facts(name)``: effective context and flags, capabilities) and GGUF metadata. Pure.

GGUF facts come from ``ModelSpec.metadata`` (filled by a discovery plugin, or by the core from the file). Both the
discovery plugin's short names (``architecture``, ``parameter_count``, ``quantization``, ``context_length``, ``tools``,
``embedding``, ...) with its ``gguf`` map of raw key/values, and raw GGUF keys at the top level
(``general.architecture``, ``llama.context_length``) are understood.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
from typing import Any

from llama_host.facts import ModelFacts
from llama_host.types import ModelSpec

# llama.cpp's ``llama_ftype`` (``general.file_type``) → the quantization label Ollama shows.
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K", 11: "Q3_K_S",
    12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS",
    20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M",
    28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0", 38: "MXFP4",
}
FOREVER = dt.datetime(2318, 1, 1, tzinfo=dt.UTC)  # what Ollama shows for keep_alive < 0 (now + max Go duration)


def _pick(meta: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = meta.get(key)
        if value is not None and value != "":
            return value
    return None


def format_parameter_size(count: int | float | None) -> str:
    """Ollama's ``HumanNumber``: 8030261248 → ``"8.0B"``, 8e9 → ``"8B"``, 137e6 → ``"137M"``,
    1.5e6 → ``"1.50M"``."""
    if not count:
        return ""
    n = float(count)
    for size, unit, digits in ((1e9, "B", 1), (1e6, "M", 2)):
        if n >= size:
            value = n / size
            if value == math.floor(value):
                return f"{value:.0f}{unit}"
            return f"{value:.{digits}f}{unit}"
    if n >= 1e3:
        return f"{n / 1e3:.0f}K"
    return str(int(n))


def architecture(spec: ModelSpec) -> str:
    meta = spec.metadata or {}
    return str(_pick(meta, "architecture", "arch", "general.architecture") or "")


def quantization(spec: ModelSpec) -> str:
    meta = spec.metadata or {}
    label = _pick(meta, "quantization", "quantization_level", "quant", "file_type_name")
    if isinstance(label, dict):  # e.g. {"name": "Q4_K_M", "bits_per_weight": 4.8}
        label = label.get("name")
    if label:
        return str(label)
    ftype = _pick(meta, "file_type", "general.file_type")
    if isinstance(ftype, int):
        return FILE_TYPES.get(ftype, "unknown")
    if isinstance(ftype, str):
        return ftype
    return ""


def parameter_count(spec: ModelSpec) -> int | None:
    value = _pick(spec.metadata or {}, "parameter_count", "general.parameter_count", "parameters", "n_params")
    return int(value) if isinstance(value, (int, float)) else None


def details(spec: ModelSpec) -> dict[str, Any]:
    arch = architecture(spec)
    return {
        "parent_model": "",
        "format": "gguf",
        "family": arch,
        "families": [arch] if arch else None,
        "parameter_size": format_parameter_size(parameter_count(spec)),
        "quantization_level": quantization(spec),
    }


def raw_gguf(spec: ModelSpec) -> dict[str, Any]:
    """Raw GGUF key/values: the discovery plugin's ``gguf`` map (arrays given as their length), or dotted keys."""
    meta = spec.metadata or {}
    raw = meta.get("gguf")
    if isinstance(raw, dict):
        return raw
    return {k: v for k, v in meta.items() if "." in k}


def chat_template(spec: ModelSpec) -> str:
    meta = spec.metadata or {}
    value = _pick(meta, "chat_template") or raw_gguf(spec).get("tokenizer.chat_template")
    return value if isinstance(value, str) else ""


def capabilities(spec: ModelSpec, facts: ModelFacts) -> list[str]:
    """Ollama capabilities: the core's (``embedding`` alone, else ``completion``, ``tools``, ``thinking``,
    ``vision``), plus ``audio`` when the metadata says so."""
    caps = facts.capabilities
    meta = spec.metadata or {}
    if not facts.embedding and (meta.get("audio") is True or str(meta.get("audio")).lower() in ("1", "true")):
        caps.append("audio")
    return caps


def display_name(name: str) -> str:
    """Ollama names carry a tag; a bare name is shown as ``name:latest`` (and resolves back: the core strips it)."""
    return name if ":" in name else f"{name}:latest"


def digest(spec: ModelSpec, size: int, mtime: float) -> str:
    """A stable 64-hex identity for the file (hashing gigabytes on every listing is not an option)."""
    key = f"{spec.name}\0{spec.path}\0{size}\0{mtime}".encode()
    return hashlib.sha256(key).hexdigest()


def timestamp(ts: float | None) -> str:
    """RFC 3339 with the local offset, as Ollama writes ``modified_at`` / ``expires_at``."""
    if ts is None:
        return FOREVER.isoformat()
    return dt.datetime.fromtimestamp(ts).astimezone().isoformat()


def tag_entry(spec: ModelSpec, facts: ModelFacts, size: int, mtime: float) -> dict[str, Any]:
    name = display_name(spec.name)
    return {
        "name": name,
        "model": name,
        "modified_at": timestamp(mtime or 0.0),
        "size": size,
        "digest": digest(spec, size, mtime),
        "details": details(spec),
        "capabilities": capabilities(spec, facts),
    }


_VOCAB_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.merges")


def model_info(spec: ModelSpec, verbose: bool = False) -> dict[str, Any]:
    """GGUF key/values in Ollama's ``model_info`` shape (token arrays as ``[]`` unless ``verbose``)."""
    meta = spec.metadata or {}
    info: dict[str, Any] = {}
    for key, value in raw_gguf(spec).items():
        if key.startswith("tokenizer.chat_template"):
            continue
        if key in _VOCAB_KEYS and (not verbose or not isinstance(value, list)):
            value = []  # Ollama sends token arrays only when verbose (and discovery keeps only their length)
        elif not verbose and isinstance(value, list) and len(value) > 64:
            value = []
        info[key] = value
    arch = architecture(spec)
    if arch:
        info.setdefault("general.architecture", arch)
        shorts = {
            "context_length": "context_length", "embedding_length": "embedding_length",
            "block_count": "block_count", "feed_forward_length": "feed_forward_length",
            "head_count": "attention.head_count", "head_count_kv": "attention.head_count_kv",
            "n_layers": "block_count", "layers": "block_count", "n_embd": "embedding_length",
            "n_head": "attention.head_count", "n_head_kv": "attention.head_count_kv",
            "heads": "attention.head_count", "kv_heads": "attention.head_count_kv",
            "rope_freq_base": "rope.freq_base", "vocab_size": "vocab_size",
        }
        for short, gguf_key in shorts.items():
            value = meta.get(short)
            if isinstance(value, (int, float)):
                info.setdefault(f"{arch}.{gguf_key}", value)
    count = parameter_count(spec)
    if count is not None:
        info.setdefault("general.parameter_count", count)
    ftype = _pick(meta, "file_type", "general.file_type")
    if isinstance(ftype, int):
        info.setdefault("general.file_type", ftype)
    name = _pick(meta, "name", "general.name")
    if isinstance(name, str):
        info.setdefault("general.name", name)
    return info


def parameters_text(facts: ModelFacts) -> str:
    """Ollama's ``parameters`` string (``key value`` lines) for what the runner is started with."""
    lines = []
    params = facts.params
    if isinstance(params.get("ctx_size"), int) and facts.context_length:
        lines.append(f"num_ctx {facts.context_length}")
    for option, param in (("num_batch", "batch_size"), ("num_gpu", "n_gpu_layers"), ("num_thread", "threads")):
        value = params.get(param)
        if isinstance(value, int):
            lines.append(f"{option} {value}")
    return "\n".join(lines)


def show(spec: ModelSpec, facts: ModelFacts, *, size: int, mtime: float, verbose: bool = False) -> dict[str, Any]:
    path = spec.path or ""
    out: dict[str, Any] = {
        "license": str((spec.metadata or {}).get("general.license") or (spec.metadata or {}).get("license") or ""),
        "modelfile": f"# Served by llama-host from {path or spec.runtime}\nFROM {path}\n",
        "parameters": parameters_text(facts),
        "template": chat_template(spec),
        "details": details(spec),
        "model_info": model_info(spec, verbose),
        "capabilities": capabilities(spec, facts),
        "modified_at": timestamp(mtime or 0.0),
    }
    if spec.mmproj:
        out["projector_info"] = {"path": spec.mmproj}
    if spec.system:  # a variant made by create/copy (or a model of the site file with a system prompt)
        out["system"] = spec.system
    variant = (spec.metadata or {}).get("variant") or {}
    if variant.get("template"):
        out["template"] = variant["template"]
    if variant.get("parent") or variant.get("from"):
        out["details"]["parent_model"] = variant.get("parent") or variant["from"]
    lines = [out["parameters"]] if out["parameters"] else []
    for key, value in (variant.get("parameters") or {}).items():
        if key not in ("num_ctx", "num_batch", "num_gpu", "num_thread"):  # those are in parameters_text already
            lines.extend(f"{key} {json.dumps(v) if isinstance(v, str) else v}"
                         for v in (value if isinstance(value, list) else [value]))
    out["parameters"] = "\n".join(lines)
    return out


def ps_entry(spec: ModelSpec, facts: ModelFacts, *, memory: int, expires_at: float | None, size: int,
             mtime: float) -> dict[str, Any]:
    """A loaded model: its context is the one the runner runs with (configured, plugin-level or load-time)."""
    name = display_name(spec.name)
    params = facts.params
    ngl = params.get("n_gpu_layers", params.get("ngl", params.get("gpu_layers")))
    on_gpu = (isinstance(ngl, int) and ngl != 0) or ngl in ("all", "auto")
    return {
        "name": name,
        "model": name,
        "size": memory,
        "digest": digest(spec, size, mtime),
        "details": details(spec),
        "expires_at": timestamp(expires_at),
        "size_vram": memory if on_gpu else 0,
        "context_length": facts.context_length or 0,
    }
