"""What discovery keeps about one GGUF file: its kind (model, projector, split part, skipped) and model metadata."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from .reader import GGUFArray, GGUFFile, scalar_metadata

Kind = Literal["model", "part", "projector", "skip"]

#: Architectures of GGUF files that llama-server cannot run as a language model (image/video diffusion models
#: converted for ComfyUI and similar). Files without a tokenizer are skipped too, whatever their architecture.
NON_LLM_ARCHITECTURES = frozenset({
    "flux", "sd1", "sd2", "sdxl", "sd3", "aura", "ltxv", "hyvid", "hunyuan_video", "wan", "lumina2", "hidream",
    "cosmos", "chroma", "qwen_image", "stable-diffusion", "unet", "vae", "t5", "umt5",
})
#: Architectures that are embedding (encoder) models even without a pooling type key.
EMBEDDING_ARCHITECTURES = frozenset({
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "neo-bert", "t5encoder",
})
POOLING_TYPES = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
_TOOLS = re.compile(r"\btools\b")


@dataclass(slots=True)
class FileFacts:
    """The discovery view of one file, cached per (path, size, mtime)."""

    kind: Kind
    metadata: dict[str, Any] = field(default_factory=dict)
    #: Why the file is skipped (kind "skip").
    reason: str | None = None
    #: (part number, part count) of a split model file.
    split: tuple[int, int] | None = None
    #: Elements of the tensors stored in this file (a parameter count when the key is absent).
    n_elements: int = 0
    #: Projectors: the text-model embedding size they feed (``clip.*.projection_dim``), vision / audio encoders.
    projection_dim: int | None = None
    vision: bool = False
    audio: bool = False


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, GGUFArray) and value.values:
        numbers = [v for v in value.values if isinstance(v, int) and not isinstance(v, bool)]
        return max(numbers) if numbers else None
    return None


def parameter_size(count: int | None) -> str | None:
    """``7_615_616_512`` → ``"7.6B"``, ``494_032_768`` → ``"494.03M"`` (the style of Ollama's ``parameter_size``)."""
    if not count:
        return None
    for unit, scale, digits in (("T", 10**12, 1), ("B", 10**9, 1), ("M", 10**6, 2), ("K", 10**3, 2)):
        if count >= scale:
            return f"{count / scale:.{digits}f}{unit}"
    return str(count)


def facts_of(file: GGUFFile) -> FileFacts:
    """Classify a read file and extract the model metadata the host, the scheduler and the surfaces use."""
    kv = file.metadata
    arch = file.architecture
    gtype = kv.get("general.type")
    split_count = _int(kv.get("split.count"))
    split_no = _int(kv.get("split.no"))
    split = (split_no + 1, split_count) if split_count and split_count > 1 and split_no is not None else None
    n_elements = file.n_elements

    if arch == "clip" or gtype == "mmproj":
        dims = _int(kv.get("clip.vision.projection_dim")) or _int(kv.get("clip.audio.projection_dim"))
        has_vision = bool(kv.get("clip.has_vision_encoder", "clip.vision.image_size" in kv))
        has_audio = bool(kv.get("clip.has_audio_encoder", False))
        return FileFacts("projector", metadata={"architecture": arch, "size": file.size},
                         n_elements=n_elements, projection_dim=dims, vision=has_vision, audio=has_audio)
    if split is not None and split[0] > 1:
        return FileFacts("part", split=split, n_elements=n_elements, metadata={"size": file.size})
    if gtype == "adapter":
        return FileFacts("skip", reason="a LoRA adapter, not a model (pass it to a model with params.lora)")
    if not arch:
        return FileFacts("skip", reason="no general.architecture key")
    if arch in NON_LLM_ARCHITECTURES:
        return FileFacts("skip", reason=f"architecture {arch!r} is not a language model llama-server can run")
    has_token_embd = any(t.name == "token_embd.weight" for t in file.tensors)
    if "tokenizer.ggml.model" not in kv and not has_token_embd and split is None:
        return FileFacts("skip", reason=f"architecture {arch!r} has no tokenizer: not a language model")

    templates = [v for k, v in kv.items() if k.startswith("tokenizer.chat_template") and isinstance(v, str)]
    pooling = _int(kv.get(f"{arch}.pooling_type"))
    reranker = pooling == 4
    embedding = (pooling in (1, 2, 3)) or (arch in EMBEDDING_ARCHITECTURES and not reranker)
    declared = _int(kv.get("general.parameter_count"))
    file_type = _int(kv.get("general.file_type"))
    meta: dict[str, Any] = {
        "format": "gguf",
        "architecture": arch,
        "name": kv.get("general.name") if isinstance(kv.get("general.name"), str) else None,
        "parameter_count": declared if declared else n_elements,
        "quantization": file.quantization,
        "file_type": file_type,
        "context_length": _int(kv.get(f"{arch}.context_length")),
        "embedding_length": _int(kv.get(f"{arch}.embedding_length")),
        "block_count": _int(kv.get(f"{arch}.block_count")),
        "head_count": _int(kv.get(f"{arch}.attention.head_count")),
        "head_count_kv": _int(kv.get(f"{arch}.attention.head_count_kv")),
        "key_length": _int(kv.get(f"{arch}.attention.key_length")),
        "value_length": _int(kv.get(f"{arch}.attention.value_length")),
        "sliding_window": _int(kv.get(f"{arch}.attention.sliding_window")),
        "expert_count": _int(kv.get(f"{arch}.expert_count")),
        "vocab_size": _int(kv.get(f"{arch}.vocab_size")) or _len(kv.get("tokenizer.ggml.tokens")),
        "has_chat_template": bool(templates),
        "tools": any(_TOOLS.search(t) for t in templates),
        "embedding": embedding,
        "reranker": reranker,
        "pooling": POOLING_TYPES.get(pooling) if pooling is not None else None,
        "vision": False,
        "audio": False,
        "size": file.size,
        "mtime": file.mtime,
        "gguf": scalar_metadata(kv),
    }
    if meta["head_count_kv"] is None:
        meta["head_count_kv"] = meta["head_count"]
    meta["parameter_size"] = parameter_size(meta["parameter_count"])
    return FileFacts("model", metadata=meta, split=split, n_elements=n_elements,
                     projection_dim=None)


def _len(value: Any) -> int | None:
    return len(value) if isinstance(value, GGUFArray) else None
