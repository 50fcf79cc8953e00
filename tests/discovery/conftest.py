"""GGUF files for the discovery tests, written with the reference ``gguf`` package, and its reading of them."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

gguf = pytest.importorskip("gguf")

from llama_host.tinymodel import write_tiny_model  # noqa: E402


def _tokens(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz.\u0120\u2581"
    return [f"{''.join(rng.choice(alphabet) for _ in range(rng.randint(1, 12)))}{i}" for i in range(n)]


def vocab_kv(n: int, *, seed: int = 0, merges: int = 0, scores: bool = True,
             tricky: list[str] | None = None) -> dict[str, Any]:
    """Tokenizer keys with an ``n``-entry token list (plus scores, types, merges), as converters write them."""
    tokens = _tokens(n, seed)
    if tricky:
        tokens[-len(tricky):] = tricky
    kv: dict[str, Any] = {"tokenizer.ggml.tokens": tokens}
    if scores:
        kv["tokenizer.ggml.scores"] = [float(i % 7) for i in range(n)]
    kv["tokenizer.ggml.token_type"] = [1] * n
    if merges:
        kv["tokenizer.ggml.merges"] = [f"{tokens[i % n][:3]} {tokens[(i * 7) % n][:3]}" for i in range(merges)]
    return kv


@pytest.fixture
def vocab_model(tmp_path: Path) -> Callable[..., Path]:
    """``vocab_model(name, n_tokens, **kw)``: a tiny model whose metadata carries a big vocabulary."""

    def make(name: str = "vocab", n_tokens: int = 20_000, *, folder: Path | None = None, merges: int = 0,
             scores: bool = True, tricky: list[str] | None = None, extra: dict[str, Any] | None = None,
             **kw: Any) -> Path:
        kv = vocab_kv(n_tokens, merges=merges, scores=scores, tricky=tricky)
        kv.update(extra or {})
        folder = folder or tmp_path
        folder.mkdir(parents=True, exist_ok=True)
        return write_tiny_model(folder / f"{name}.gguf", n_vocab_words=20, extra_kv=kv, **kw)

    return make


_REFERENCE: dict[tuple[str, int, int], tuple[dict[str, Any], list[tuple[str, int, int, int, int]]]] = {}


def read_reference(path: Path) -> tuple[dict[str, Any], list[tuple[str, int, int, int, int]]]:
    """What ``gguf.GGUFReader`` reads (it takes seconds on big vocabularies: cached per file version).

    Metadata: scalars as values, arrays as their length. Tensors: (name, ggml type, elements, bytes, absolute data
    offset).
    """
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _REFERENCE:
        reader = gguf.GGUFReader(path)
        meta: dict[str, Any] = {}
        for name, field in reader.fields.items():
            if name.startswith("GGUF."):
                continue
            if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
                meta[name] = len(field.data)
            else:
                meta[name] = field.contents()
        tensors = [(t.name, int(t.tensor_type), int(t.n_elements), int(t.n_bytes), int(t.data_offset))
                   for t in reader.tensors]
        _REFERENCE[key] = (meta, tensors)
    return _REFERENCE[key]


@pytest.fixture
def reference() -> Any:
    """``reference.metadata(path)`` and ``reference.tensors(path)``: the gguf package's reading."""
    import types

    return types.SimpleNamespace(metadata=lambda p: read_reference(p)[0], tensors=lambda p: read_reference(p)[1])


def _write(path: Path, arch: str, kv: dict[str, Any], tensors: dict[str, Any]) -> Path:
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, arch)
    for key, value in kv.items():
        if isinstance(value, bool):
            w.add_bool(key, value)
        elif isinstance(value, int):
            w.add_uint32(key, value)
        elif isinstance(value, str):
            w.add_string(key, value)
        else:
            w.add_key_value(key, value, gguf.GGUFValueType.ARRAY)
    for name, shape in tensors.items():
        w.add_tensor(name, np.zeros(shape, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def write_projector(path: Path, *, projection_dim: int | None = 64, audio: bool = False) -> Path:
    """A small multimodal projector (``clip`` architecture) as llama.cpp's converters write them."""
    kv: dict[str, Any] = {"general.type": "mmproj", "clip.has_vision_encoder": not audio,
                          "clip.has_audio_encoder": audio}
    if projection_dim is not None:
        kv["clip.audio.projection_dim" if audio else "clip.vision.projection_dim"] = projection_dim
    return _write(path, "clip", kv, {"mm.0.weight": (8, 8)})


def write_image_model(path: Path) -> Path:
    """A diffusion model converted to GGUF (no tokenizer): not something llama-server runs."""
    return _write(path, "flux", {}, {"double_blocks.0.img_attn.proj.weight": (8, 8)})


def write_adapter(path: Path) -> Path:
    return _write(path, "llama", {"general.type": "adapter", "adapter.type": "lora"},
                  {"blk.0.attn_q.weight.lora_a": (4, 8)})


@pytest.fixture
def gguf_files() -> Any:
    """``gguf_files.projector(path, ...)``, ``.image_model(path)``, ``.adapter(path)``, ``.model(path, **kw)``."""
    import types

    return types.SimpleNamespace(projector=write_projector, image_model=write_image_model, adapter=write_adapter,
                                 model=write_tiny_model)
