"""Unit tests of Ollama's model listings built from specs and GGUF metadata."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from llama_host.facts import model_facts
from llama_host.types import ModelSpec, RuntimeInfo
from llama_host_llama_server import LlamaServerRunner, runtime_facts
from llama_host_ollama_api import catalog as c

LLAMA_SERVER = RuntimeInfo("llama-server", LlamaServerRunner, "llama_server", facts=runtime_facts)


def f(spec: ModelSpec):
    """The core's facts of a llama-server model (no host: the plugin's default settings)."""
    return model_facts(spec, LLAMA_SERVER)


@pytest.mark.parametrize(("count", "text"), [
    (8_030_261_248, "8.0B"), (8_000_000_000, "8B"), (1_500_000_000, "1.5B"), (137_000_000, "137M"),
    (1_500_000, "1.50M"), (494_032_768, "494.03M"), (12_345, "12K"), (999, "999"), (None, ""), (0, ""),
])
def test_parameter_size(count, text):
    assert c.format_parameter_size(count) == text


SHORT = ModelSpec(name="qwen", path="/m/qwen.gguf", metadata={
    "architecture": "qwen2", "parameter_count": 7_615_616_512, "quantization": "Q4_K_M", "context_length": 32768,
    "embedding_length": 3584, "block_count": 28, "head_count": 28, "head_count_kv": 4,
    "chat_template": "{% if tools %}...{% endif %}"})
RAW = ModelSpec(name="tiny:q8", path="/m/tiny.gguf", params={"ctx_size": 2048}, metadata={
    "general.architecture": "llama", "general.file_type": 7, "general.parameter_count": 1_000_000,
    "llama.context_length": 4096, "tokenizer.ggml.tokens": ["a"] * 100, "tokenizer.chat_template": "<think>"})


def test_details_from_short_and_raw_keys():
    assert c.details(SHORT) == {"parent_model": "", "format": "gguf", "family": "qwen2", "families": ["qwen2"],
                                "parameter_size": "7.6B", "quantization_level": "Q4_K_M"}
    assert c.details(RAW)["quantization_level"] == "Q8_0"
    assert c.details(RAW)["parameter_size"] == "1M"
    assert c.details(ModelSpec(name="x"))["family"] == ""


def caps(spec: ModelSpec) -> list[str]:
    return c.capabilities(spec, f(spec))


def test_capabilities():
    assert caps(SHORT) == ["completion", "tools"]
    assert caps(RAW) == ["completion", "thinking"]
    assert caps(ModelSpec(name="e", params={"embeddings": True, "pooling": "mean"})) == ["embedding"]
    assert caps(ModelSpec(name="e1", params={"embeddings": 1})) == ["embedding"]  # as LM Studio sees it
    assert caps(ModelSpec(name="b", metadata={"architecture": "nomic-bert"})) == ["embedding"]
    assert "vision" in caps(ModelSpec(name="v", mmproj="/m/mmproj.gguf"))


def test_model_info_has_context_length_and_hides_vocab():
    info = c.model_info(SHORT)
    assert info["general.architecture"] == "qwen2"
    assert info["qwen2.context_length"] == 32768
    assert info["qwen2.attention.head_count_kv"] == 4
    assert info["general.parameter_count"] == 7_615_616_512
    raw = c.model_info(RAW)
    assert raw["llama.context_length"] == 4096 and raw["tokenizer.ggml.tokens"] == []
    assert len(c.model_info(RAW, verbose=True)["tokenizer.ggml.tokens"]) == 100
    assert c.model_info(ModelSpec(name="x")) == {}


def test_tag_entry_show_and_ps_shapes():
    tag = c.tag_entry(SHORT, f(SHORT), size=123, mtime=1_700_000_000.5)
    assert tag["name"] == tag["model"] == "qwen:latest"
    assert tag["size"] == 123 and re.fullmatch(r"[0-9a-f]{64}", tag["digest"])
    assert dt.datetime.fromisoformat(tag["modified_at"]).timestamp() == pytest.approx(1_700_000_000.5)
    assert c.tag_entry(RAW, f(RAW), size=1, mtime=0)["name"] == "tiny:q8"

    shown = c.show(RAW, f(RAW), size=1, mtime=1.0)
    assert "model_info" in shown and shown["capabilities"] == ["completion", "thinking"]
    assert shown["parameters"] == "num_ctx 2048"
    assert shown["template"] == "<think>"

    ps = c.ps_entry(RAW, f(RAW), memory=5000, expires_at=None, size=1, mtime=1.0)
    assert ps["size"] == 5000 and ps["size_vram"] == 0 and ps["context_length"] == 2048
    assert ps["expires_at"].startswith("2318-")
    gpu = ModelSpec(name="g", params={"n_gpu_layers": 99})
    assert c.ps_entry(gpu, f(gpu), memory=10, expires_at=1_700_000_000.0, size=1, mtime=1)["size_vram"] == 10
    # the context the runner runs with: a -c in args wins over params, as on llama-server's command line
    short_ctx = ModelSpec(name="s", params={"ctx_size": 2048}, args=["-c", "1024"], metadata={"context_length": 4096})
    assert c.ps_entry(short_ctx, f(short_ctx), memory=1, expires_at=None, size=1, mtime=1)["context_length"] == 1024


DISCOVERED = ModelSpec(name="qwen3", path="/m/qwen3.gguf", source="discovery_gguf", metadata={
    "format": "gguf", "architecture": "qwen3", "parameter_count": 4_022_468_096, "quantization": "Q4_K_M",
    "file_type": 15, "context_length": 40960, "embedding": False, "tools": True, "vision": False, "audio": False,
    "size": 2_497_280_256, "mtime": 1_700_000_000.0,
    "gguf": {"general.architecture": "qwen3", "qwen3.context_length": 40960, "tokenizer.ggml.tokens": 151936,
             "tokenizer.chat_template": "{%- if enable_thinking %}<think>{% endif %}{{ tools }}"}})


def test_discovery_metadata_shape():
    assert c.details(DISCOVERED)["parameter_size"] == "4.0B"
    assert c.details(DISCOVERED)["quantization_level"] == "Q4_K_M"
    assert caps(DISCOVERED) == ["completion", "tools", "thinking"]
    info = c.model_info(DISCOVERED)
    assert info["qwen3.context_length"] == 40960 and info["tokenizer.ggml.tokens"] == []
    assert "tokenizer.chat_template" not in info
    assert c.show(DISCOVERED, f(DISCOVERED), size=1, mtime=1.0)["template"].startswith("{%- if enable_thinking")
