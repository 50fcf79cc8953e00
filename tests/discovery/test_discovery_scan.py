"""Scanning folders: names, depth, symlinks, split models, projectors, skipped and broken files, the cache."""

from __future__ import annotations

import logging
import os

import pytest

from llama_host_discovery_gguf.facts import parameter_size
from llama_host_discovery_gguf.scan import Scanner, model_name

pytest.importorskip("gguf")

TINY_PARAMS = 153_792  # elements of the tiny model's tensors


def names(result):
    return [m.name for m in result.models]


def test_model_names():
    assert model_name("Qwen2.5-7B-Instruct-Q4_K_M.gguf") == "qwen2.5-7b-instruct-q4_k_m"
    assert model_name("Llama-3-70B-Q4_K_M-00001-of-00003.gguf") == "llama-3-70b-q4_k_m"
    assert model_name("model.GGUF") == "model"


def test_parameter_size_labels():
    assert parameter_size(7_615_616_512) == "7.6B"
    assert parameter_size(494_032_768) == "494.03M"
    assert parameter_size(153_792) == "153.79K"
    assert parameter_size(None) is None


def test_finds_models_with_metadata(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "Tiny-Chat-Q8.gguf", name="Tiny Chat")
    gguf_files.model(tmp_path / "emb.gguf", embedding=True)
    result = Scanner().scan([tmp_path])
    assert sorted(names(result)) == ["emb", "tiny-chat-q8"]
    chat = next(m for m in result.models if m.name == "tiny-chat-q8")
    md = chat.metadata
    assert md["architecture"] == "llama"
    assert md["name"] == "Tiny Chat"
    assert md["parameter_count"] == TINY_PARAMS
    assert md["quantization"] == "F32" and md["file_type"] == 0
    assert (md["context_length"], md["embedding_length"], md["block_count"]) == (2048, 64, 2)
    assert (md["head_count"], md["head_count_kv"]) == (4, 4)
    assert md["has_chat_template"] and md["tools"] and not md["embedding"] and not md["vision"]
    assert md["size"] == os.path.getsize(chat.path)
    assert md["gguf"]["llama.context_length"] == 2048
    assert md["gguf"]["tokenizer.ggml.tokens"] == 559  # arrays as their length
    emb = next(m for m in result.models if m.name == "emb").metadata
    assert emb["embedding"] and emb["pooling"] == "mean" and not emb["has_chat_template"]
    assert result.errors == [] and result.skipped == []


def test_declared_parameter_count_wins(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "m.gguf", extra_kv={"general.parameter_count": 7_000_000_000})
    (model,) = Scanner().scan([tmp_path]).models
    assert model.metadata["parameter_count"] == 7_000_000_000
    assert model.metadata["parameter_size"] == "7.0B"


def test_depth_hidden_folders_and_missing_dirs(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "a" / "b" / "c" / "deep.gguf")
    gguf_files.model(tmp_path / "a" / "shallow.gguf")
    gguf_files.model(tmp_path / ".cache" / "hidden.gguf")
    assert names(Scanner(max_depth=6).scan([tmp_path])) == ["deep", "shallow"]
    assert names(Scanner(max_depth=1).scan([tmp_path])) == ["shallow"]
    assert sorted(names(Scanner(skip_hidden=False).scan([tmp_path]))) == ["deep", "hidden", "shallow"]
    result = Scanner().scan([tmp_path / "nope", tmp_path / "a"])
    assert sorted(names(result)) == ["deep", "shallow"]
    assert result.errors[0]["path"] == str(tmp_path / "nope")
    assert "not readable" in result.errors[0]["error"]


def test_symlinks_followed_once_without_loops(tmp_path, gguf_files):
    models = tmp_path / "models"
    other = tmp_path / "elsewhere"
    real = gguf_files.model(other / "linked.gguf")
    gguf_files.model(models / "local.gguf")
    (models / "loop").symlink_to(models)  # a loop back to the root
    (models / "sub").mkdir()
    (models / "sub" / "up").symlink_to(models)  # another way round
    (models / "linked.gguf").symlink_to(real)
    (models / "other-dir").symlink_to(other)  # the same file again, through a folder link
    (models / "broken.gguf").symlink_to(tmp_path / "gone.gguf")
    result = Scanner().scan([models])
    assert sorted(names(result)) == ["linked", "local"]
    assert {e["error"] for e in result.errors} == {"broken symbolic link"}
    assert sorted(names(Scanner(follow_symlinks=False).scan([models]))) == ["local"]


def test_split_model_is_one_model(tmp_path, gguf_files):
    first = gguf_files.model(tmp_path / "Big-Model.gguf", split_max_tensors=8)
    assert first.name == "Big-Model-00001-of-00003.gguf"
    (model,) = Scanner().scan([tmp_path]).models
    assert model.name == "big-model"
    assert model.path == str(first)
    assert len(model.parts) == 3
    assert model.metadata["split_count"] == 3
    assert model.metadata["parameter_count"] == TINY_PARAMS  # summed over the parts
    assert model.metadata["size"] == sum(os.path.getsize(p) for p in model.parts)


def test_split_model_with_a_missing_part_is_an_error(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "big.gguf", split_max_tensors=8)
    os.remove(tmp_path / "big-00002-of-00003.gguf")
    result = Scanner().scan([tmp_path])
    assert result.models == []
    assert "missing part(s) 2" in result.errors[0]["error"]


def test_projector_attached_never_listed(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "gemma-vision-q4.gguf")
    proj = gguf_files.projector(tmp_path / "mmproj-model-f16.gguf")
    (model,) = Scanner().scan([tmp_path]).models
    assert model.mmproj == str(proj)
    assert model.metadata["vision"] is True and model.metadata["audio"] is False


def test_projectors_matched_by_name_and_size(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "alpha-7b-q4.gguf")
    gguf_files.model(tmp_path / "beta-2b-q8.gguf")
    alpha = gguf_files.projector(tmp_path / "mmproj-alpha-7b-f16.gguf")
    beta = gguf_files.projector(tmp_path / "mmproj-beta-2b-f16.gguf", audio=True)
    models = {m.name: m for m in Scanner().scan([tmp_path]).models}
    assert models["alpha-7b-q4"].mmproj == str(alpha)
    assert models["beta-2b-q8"].mmproj == str(beta)
    assert models["beta-2b-q8"].metadata["audio"] is True

    # A generic projector for a text size that no model of the folder has is not given to anyone blindly...
    other = tmp_path / "other"
    gguf_files.model(other / "one.gguf")
    gguf_files.model(other / "two.gguf", extra_kv={"llama.embedding_length": 4096})
    gguf_files.projector(other / "mmproj.gguf", projection_dim=4096)
    found = {m.name: m for m in Scanner().scan([other]).models}
    assert found["two"].mmproj is not None  # ...it goes to the model of the matching size
    assert found["one"].mmproj is None


def test_non_llm_files_skipped_with_a_log_line(tmp_path, gguf_files, caplog):
    gguf_files.image_model(tmp_path / "flux1-dev-q8_0.gguf")
    gguf_files.adapter(tmp_path / "lora.gguf")
    gguf_files.model(tmp_path / "ok.gguf")
    with caplog.at_level(logging.INFO, logger="llama_host.discovery_gguf"):
        result = Scanner().scan([tmp_path])
    assert names(result) == ["ok"]
    reasons = {os.path.basename(s["path"]): s["reason"] for s in result.skipped}
    assert "not a language model" in reasons["flux1-dev-q8_0.gguf"]
    assert "adapter" in reasons["lora.gguf"]
    assert "skipping" in caplog.text and "flux1-dev-q8_0.gguf" in caplog.text


def test_unreadable_files_are_reported_not_fatal(tmp_path, gguf_files):
    good = gguf_files.model(tmp_path / "good.gguf")
    (tmp_path / "text.gguf").write_text("not a model")
    (tmp_path / "cut.gguf").write_bytes(good.read_bytes()[:100_000])
    result = Scanner().scan([tmp_path])
    assert names(result) == ["good"]
    errors = {os.path.basename(e["path"]): e["error"] for e in result.errors}
    assert errors["text.gguf"].startswith("not a GGUF file")
    assert errors["cut.gguf"].startswith("truncated")


def test_rescan_reads_only_changed_files(tmp_path, gguf_files):
    a = gguf_files.model(tmp_path / "a.gguf")
    b = gguf_files.model(tmp_path / "b.gguf")
    (tmp_path / "bad.gguf").write_text("junk")
    scanner = Scanner()
    assert len(scanner.scan([tmp_path]).read) == 3
    again = scanner.scan([tmp_path])
    assert again.read == [] and sorted(names(again)) == ["a", "b"]
    assert len(again.errors) == 1  # a cached failure is still reported

    gguf_files.model(b, context_length=4096, seed=5)  # rewritten: new size/mtime
    st = os.stat(b)
    os.utime(b, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    third = scanner.scan([tmp_path])
    assert third.read == [str(b)]
    assert next(m for m in third.models if m.name == "b").metadata["context_length"] == 4096

    os.remove(a)
    fourth = scanner.scan([tmp_path])
    assert names(fourth) == ["b"]
    assert str(a) not in scanner._cache  # forgotten
