"""The known models without a host: merging configured over discovered models, and name lookup."""

from llama_host.models import NameIndex, merge
from llama_host.types import ModelSpec


def test_configured_wins_and_takes_discovered_facts():
    found = ModelSpec(name="qwen-q4", path="/m/qwen.gguf", metadata={"context_length": 4096}, mmproj="/m/mm.gguf",
                      source="discovery_gguf")
    other = ModelSpec(name="other", path="/m/other.gguf", source="discovery_gguf")
    mine = ModelSpec(name="qwen", path="/m/qwen.gguf", aliases=["q"])
    merged = merge({"qwen": mine, "other": ModelSpec(name="other", path="/x.gguf")}, [found, other])
    assert set(merged) == {"qwen", "qwen-q4", "other"}
    assert merged["qwen"].metadata == {"context_length": 4096} and merged["qwen"].mmproj == "/m/mm.gguf"
    assert merged["other"].path == "/x.gguf"  # a configured name wins over a discovered one


def test_configured_metadata_is_kept():
    merged = merge({"a": ModelSpec(name="a", path="/a", metadata={"x": 1})},
                   [ModelSpec(name="a-disc", path="/a", metadata={"x": 2})])
    assert merged["a"].metadata == {"x": 1}


def test_lookup_order():
    index = NameIndex([ModelSpec(name="Qwen", aliases=["q", "chat"]), ModelSpec(name="llama3", aliases=["chat"]),
                       ModelSpec(name="qwen")])
    assert index.lookup("Qwen") == "Qwen" and index.lookup("qwen") == "qwen"  # exact names first
    assert index.lookup("Q") == "Qwen" and index.lookup("LLAMA3:latest") == "llama3"
    assert index.lookup("chat") == "Qwen"  # the first model to claim an alias keeps it
    assert index.lookup("llama3:8b") is None and index.lookup("nope") is None
