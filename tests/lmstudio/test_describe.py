"""Model descriptions (v0 and v1) from ModelSpec / ModelStatus: fast, no runner."""

from __future__ import annotations

import msgspec
import pytest

from llama_host.facts import model_facts
from llama_host.types import ModelSpec, ModelStatus, RuntimeInfo
from llama_host_llama_server import LlamaServerRunner, runtime_facts
from llama_host_lmstudio_api import describe

LLAMA_SERVER = RuntimeInfo("llama-server", LlamaServerRunner, "llama_server", facts=runtime_facts)


def f(spec: ModelSpec):
    """The core's facts of a llama-server model (no host: the plugin's default settings)."""
    return model_facts(spec, LLAMA_SERVER)


def status(spec: ModelSpec, state: str = "unloaded", **metadata) -> ModelStatus:
    return ModelStatus(
        name=spec.name, state=state, runtime=spec.runtime, source=spec.source, aliases=spec.aliases, memory=0,
        in_flight=0, pinned=False, unlisted=False, missing=False, ttl=None, last_used=None, expires_at=None,
        loaded_at=None, load_seconds=None, pid=None, error=None, path=spec.path, metadata=metadata,
    )


GGUF_FACTS = {
    "architecture": "qwen2", "quantization": "Q4_K_M", "context_length": 32768, "parameter_count": 7_615_616_512,
    "tools": True, "name": "Qwen2.5 7B Instruct",
}


def test_v0_llm_from_gguf_facts():
    spec = ModelSpec(name="qwen", path="/m/qwen.gguf", metadata=GGUF_FACTS)
    model = describe.v0_model(spec, status(spec), f(spec), default_publisher="local")
    assert msgspec.to_builtins(model) == {
        "id": "qwen", "object": "model", "type": "llm", "publisher": "local", "arch": "qwen2",
        "compatibility_type": "gguf", "quantization": "Q4_K_M", "state": "not-loaded", "max_context_length": 32768,
        "capabilities": ["tool_use"],
        "scheduling": {"pinned": False, "priority": 0, "group": None, "max_concurrent": None},
    }


def test_v0_state_follows_the_scheduler():
    spec = ModelSpec(name="m", path="/m/m.gguf")
    assert describe.v0_model(spec, status(spec, "loaded"), f(spec), default_publisher="x").state == "loaded"
    assert describe.v0_model(spec, status(spec, "loading"), f(spec), default_publisher="x").state == "not-loaded"
    assert describe.v0_model(spec, None, f(spec), default_publisher="x").state == "not-loaded"


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        (ModelSpec(name="e", params={"embeddings": True}), "embeddings"),
        (ModelSpec(name="e", args=["--embedding"]), "embeddings"),
        (ModelSpec(name="e", metadata={"embedding": True}), "embeddings"),
        (ModelSpec(name="v", mmproj="/m/proj.gguf"), "vlm"),
        (ModelSpec(name="v", metadata={"vision": True}), "vlm"),
        (ModelSpec(name="e", params={"embeddings": 1}), "embeddings"),  # as Ollama sees it
        (ModelSpec(name="l", params={"embeddings": False}), "llm"),
    ],
)
def test_model_kind(spec, kind):
    assert describe.model_kind(f(spec)) == kind


@pytest.mark.parametrize(
    ("path", "quant"),
    [
        ("/m/qwen2.5-7b-instruct-q4_k_m.gguf", "Q4_K_M"),
        ("/m/Llama-3.2-1B-Instruct-Q8_0.gguf", "Q8_0"),
        ("/m/model.IQ2_XXS.gguf", "IQ2_XXS"),
        ("/m/nomic-embed-f16.gguf", "F16"),
        ("/m/gemma-bf16.gguf", "BF16"),
        ("/m/tiny.gguf", None),
    ],
)
def test_quantization_from_file_name(path, quant):
    spec = ModelSpec(name="m", path=path)
    assert describe.quantization(spec, {}) == quant


def test_metadata_quantization_wins_over_the_name():
    spec = ModelSpec(name="m", path="/m/x-q8_0.gguf")
    assert describe.quantization(spec, {"quantization": "Q4_0"}) == "Q4_0"


@pytest.mark.parametrize(
    ("quant", "bits"), [("Q4_K_M", 4), ("Q8_0", 8), ("IQ2_XXS", 2), ("F16", 16), ("BF16", 16), ("F32", 32), ("X", None)]
)
def test_bits_per_weight(quant, bits):
    assert describe.bits_per_weight(quant) == bits


@pytest.mark.parametrize(
    ("count", "text"), [(7_615_616_512, "7.6B"), (270_000_000, "270M"), (13_000_000_000, "13B"), (1_500_000_000, "1.5B"),
                        (120_000, "120K"), (0, None)]
)
def test_params_string(count, text):
    assert describe.params_string({"parameter_count": count}) == text


def test_context_lengths():
    spec = ModelSpec(name="m", params={"ctx_size": 4096}, metadata={"context_length": 32768})
    assert describe.max_context_length(f(spec)) == 32768
    assert describe.loaded_context(f(spec)) == 4096
    bare = ModelSpec(name="m", args=["-c", "1024"])
    assert describe.max_context_length(f(bare)) == 1024
    assert describe.max_context_length(f(ModelSpec(name="m"))) == 0


def test_v1_llm_shape():
    spec = ModelSpec(name="qwen", path="/m/qwen.gguf", params={"ctx_size": 4096}, metadata=GGUF_FACTS)
    model = msgspec.to_builtins(describe.v1_model(spec, status(spec, "loaded"), f(spec), default_publisher="local", size_bytes=123))
    assert model == {
        "type": "llm", "publisher": "local", "key": "qwen", "display_name": "Qwen2.5 7B Instruct",
        "architecture": "qwen2", "quantization": {"name": "Q4_K_M", "bits_per_weight": 4}, "size_bytes": 123,
        "params_string": "7.6B", "loaded_instances": [{"id": "qwen", "config": {"context_length": 4096}}],
        "max_context_length": 32768, "format": "gguf",
        "capabilities": {"vision": False, "trained_for_tool_use": True}, "description": None,
    }


def test_v1_embedding_leaves_out_llm_fields():
    spec = ModelSpec(name="emb", path="/m/nomic-f16.gguf", params={"embeddings": True}, metadata={"context_length": 2048})
    model = msgspec.to_builtins(describe.v1_model(spec, status(spec), f(spec), default_publisher="nomic"))
    assert model["type"] == "embedding"
    assert model["loaded_instances"] == []
    assert model["quantization"] == {"name": "F16", "bits_per_weight": 16}
    for absent in ("architecture", "capabilities", "description"):
        assert absent not in model


def test_v1_vlm_is_an_llm_with_vision():
    spec = ModelSpec(name="v", mmproj="/m/proj.gguf")
    model = describe.v1_model(spec, None, f(spec), default_publisher="p")
    assert model.type == "llm"
    assert model.capabilities.vision is True
    assert model.quantization is None


@pytest.mark.parametrize(
    ("path", "meta", "expected"),
    [
        ("/home/u/.lmstudio/models/lmstudio-community/Qwen-GGUF/qwen-q4_k_m.gguf", {}, "lmstudio-community"),
        ("/home/u/.cache/lm-studio/models/bartowski/X-GGUF/sub/x.gguf", {}, "bartowski"),
        ("/home/u/.lmstudio/models/x.gguf", {}, "local"),
        ("/srv/models/acme/repo/x.gguf", {}, "local"),
        ("/srv/models/acme/repo/x.gguf", {"publisher": "acme"}, "acme"),
    ],
)
def test_publisher(path, meta, expected):
    assert describe.publisher(ModelSpec(name="m", path=path), meta, "local") == expected
