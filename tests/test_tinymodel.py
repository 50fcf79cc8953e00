"""The tiny model generator writes a GGUF file that the reference reader parses back with the expected keys."""

from __future__ import annotations

import subprocess
import sys

import pytest

from llama_host.tinymodel import CHAT_TEMPLATE, main, write_tiny_model

gguf = pytest.importorskip("gguf")


def _fields(path):
    reader = gguf.GGUFReader(path)
    return reader, {name: field for name, field in reader.fields.items()}


def test_tiny_model_parses_back(tmp_path):
    path = write_tiny_model(tmp_path / "tiny.gguf")
    assert path == tmp_path / "tiny.gguf"
    reader, fields = _fields(path)

    assert fields["general.architecture"].contents() == "llama"
    assert fields["general.name"].contents() == "tiny"
    assert fields["general.file_type"].contents() == 0
    assert fields["llama.context_length"].contents() == 2048
    assert fields["llama.embedding_length"].contents() == 64
    assert fields["llama.block_count"].contents() == 2
    assert fields["llama.feed_forward_length"].contents() == 128
    assert fields["llama.attention.head_count"].contents() == 4
    assert fields["llama.attention.head_count_kv"].contents() == 4
    assert fields["tokenizer.ggml.model"].contents() == "llama"

    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    assert tokens[:3] == ["<unk>", "<s>", "</s>"]
    assert tokens[3:259] == [f"<0x{b:02X}>" for b in range(256)]
    assert set(types[3:259]) == {int(gguf.TokenType.BYTE)}
    assert len(tokens) == 3 + 256 + 300 == fields["llama.vocab_size"].contents()
    assert len(set(tokens)) == len(tokens)

    template = fields["tokenizer.chat_template"].contents()
    assert template == CHAT_TEMPLATE
    assert "tools" in template and "<|im_start|>" in template

    names = {t.name for t in reader.tensors}
    assert {"token_embd.weight", "output_norm.weight", "output.weight", "blk.1.ffn_down.weight"} <= names
    assert len(reader.tensors) == 3 + 2 * 9


def test_special_and_byte_tokens_are_never_likely(tmp_path):
    reader, _ = _fields(write_tiny_model(tmp_path / "tiny.gguf"))
    output = next(t for t in reader.tensors if t.name == "output.weight").data
    assert (output[:259, 0] < -10).all()
    assert (output[259:, 0] == 0).all()


def test_variants_and_extra_keys(tmp_path):
    path = write_tiny_model(
        tmp_path / "emb.gguf", name="emb", embedding=True, context_length=512, n_vocab_words=40, seed=3,
        extra_kv={"general.parameter_count": 12345, "general.name": "renamed", "custom.list": [1, 2, 3]},
    )
    _, fields = _fields(path)
    assert "tokenizer.chat_template" not in fields
    assert fields["llama.pooling_type"].contents() == int(gguf.PoolingType.MEAN)
    assert fields["llama.context_length"].contents() == 512
    assert fields["general.parameter_count"].contents() == 12345
    assert fields["general.name"].contents() == "renamed"
    assert fields["custom.list"].contents() == [1, 2, 3]
    assert len(fields["tokenizer.ggml.tokens"].contents()) == 3 + 256 + 40


def test_same_seed_same_bytes(tmp_path):
    a = write_tiny_model(tmp_path / "a.gguf", seed=7).read_bytes()
    b = write_tiny_model(tmp_path / "b.gguf", seed=7).read_bytes()
    c = write_tiny_model(tmp_path / "c.gguf", seed=8).read_bytes()
    assert a == b != c


def test_main_writes_the_file(tmp_path, capsys):
    assert main([str(tmp_path / "m.gguf"), "--name", "demo"]) == 0
    assert "wrote" in capsys.readouterr().out
    _, fields = _fields(tmp_path / "m.gguf")
    assert fields["general.name"].contents() == "demo"


def test_module_entry_point(tmp_path):
    out = tmp_path / "cli.gguf"
    proc = subprocess.run([sys.executable, "-m", "llama_host.tinymodel", str(out)], capture_output=True, text=True,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 100_000


def test_missing_gguf_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    with pytest.raises(RuntimeError, match="pip install gguf"):
        write_tiny_model(tmp_path / "x.gguf")


def test_split_model(tmp_path):
    first = write_tiny_model(tmp_path / "big.gguf", split_max_tensors=8)
    parts = sorted(tmp_path.glob("big-*-of-*.gguf"))
    assert first == tmp_path / "big-00001-of-00003.gguf" == parts[0]
    assert len(parts) == 3 and not (tmp_path / "big.gguf").exists()
    _, fields = _fields(parts[1])
    assert fields["split.no"].contents() == 1
    assert fields["split.count"].contents() == 3
    assert sum(len(gguf.GGUFReader(p).tensors) for p in parts) == 21
