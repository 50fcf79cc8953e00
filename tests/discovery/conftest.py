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
