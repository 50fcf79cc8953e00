"""The ``<name>@embed`` variants of the catalogue (pure: specs and the llama-server runtime's flags)."""

from __future__ import annotations

from llama_host.types import ModelSpec, RuntimeInfo
from llama_host.variants import embedding_variant, embedding_variants
from llama_host_llama_server import embedding_params, runtime_facts

RT = RuntimeInfo("llama-server", lambda spec, host: None, "llama_server", facts=lambda s, h: runtime_facts(s, None),
                 embedding=embedding_params)
NO_EMBED = RuntimeInfo("remote", lambda spec, host: None, "remote_runtime")


def test_a_chat_model_gets_an_unlisted_embedding_runner():
    chat = ModelSpec(name="chat", path="/m/chat.gguf", aliases=["c"], pinned=True,
                     params={"ctx_size": 4096, "reranking": True})
    v = embedding_variant(chat, RT)
    assert v is not None and v.name == "chat@embed" and v.unlisted and not v.pinned and v.aliases == []
    assert v.path == chat.path and v.metadata["variant_of"] == "chat"
    assert v.params == {"ctx_size": 4096, "embeddings": True, "pooling": "mean", "ubatch_size": 2048}
    own = ModelSpec(name="chat", path="/m/chat.gguf", params={"pooling": "last", "batch_size": 512})
    assert embedding_params(own) == {"pooling": "last", "batch_size": 512, "embeddings": True, "ubatch_size": 512}


def test_no_variant_for_embedding_models_other_runtimes_and_variants():
    assert embedding_variant(ModelSpec(name="e", path="/m/e.gguf", params={"embeddings": True}), RT) is None
    assert embedding_variant(ModelSpec(name="e", path="/m/e.gguf", metadata={"embedding": True}), RT) is None
    assert embedding_variant(ModelSpec(name="r", runtime="remote", url="http://x"), NO_EMBED) is None
    assert embedding_variant(ModelSpec(name="x@embed", path="/m/x.gguf"), RT) is None
    assert embedding_variant(ModelSpec(name="gone", path="/m/x.gguf", missing=True), RT) is None


def test_a_configured_model_of_that_name_wins():
    models = {"a": ModelSpec(name="a", path="/m/a.gguf"), "b": ModelSpec(name="b", path="/m/b.gguf"),
              "b@embed": ModelSpec(name="b@embed", path="/m/other.gguf")}
    assert list(embedding_variants(models, {"llama-server": RT})) == ["a@embed"]
