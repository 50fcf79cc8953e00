"""The GGUF reader against the reference reader (the ``gguf`` package) on generated files, and on broken files."""

from __future__ import annotations

import os
import struct
import tracemalloc

import pytest

from llama_host.tinymodel import write_tiny_model
from llama_host_discovery_gguf import reader as rd
from llama_host_discovery_gguf.reader import (
    CorruptError,
    GGUFArray,
    NotGGUFError,
    TruncatedError,
    quantization_label,
    read_gguf,
    scalar_metadata,
)

gguf = pytest.importorskip("gguf")


def assert_same_as_reference(path, reference, *, fast=True):
    f = read_gguf(path, fast=fast)
    assert scalar_metadata(f.metadata) == reference.metadata(path)
    ours = [(t.name, t.type, t.n_elements, t.nbytes, f.data_offset + t.offset) for t in f.tensors]
    assert ours == reference.tensors(path)
    return f


def test_tiny_model_matches_reference(tmp_path, reference):
    path = write_tiny_model(tmp_path / "tiny.gguf")
    f = assert_same_as_reference(path, reference)
    assert f.architecture == "llama"
    assert f.version == 3 and f.byte_order == "little"
    assert f.tensor_count == 21
    assert f.quantization == "F32"
    tokens = f.metadata["tokenizer.ggml.tokens"]
    assert isinstance(tokens, GGUFArray) and tokens.count == 559 and tokens.values is None
    assert f.skip_mode == "exact"  # 559 tokens: below the fast path's threshold


def test_embedding_model_matches_reference(tmp_path, reference):
    assert_same_as_reference(write_tiny_model(tmp_path / "e.gguf", embedding=True), reference)


@pytest.mark.parametrize("merges", [0, 5_000])
def test_big_vocabulary_skipped_fast_and_exact(vocab_model, reference, merges):
    path = vocab_model(n_tokens=6_000, merges=merges)
    fast = assert_same_as_reference(path, reference, fast=True)
    exact = assert_same_as_reference(path, reference, fast=False)
    assert fast.skip_mode == "fast"
    assert exact.skip_mode == "exact"
    assert fast.metadata["tokenizer.ggml.tokens"].count == 6_000


def test_token_array_followed_by_another_namespace(vocab_model, reference):
    # tokens, then a key outside "tokenizer." (scores absent): the fast path must look for other namespaces.
    path = vocab_model(n_tokens=6_000, scores=False, extra={"tokenizer.ggml.token_type": [1] * 6_000})
    assert_same_as_reference(path, reference)
    from llama_host_discovery_gguf.reader import read_gguf as again

    mixed = write_tiny_model(path.with_name("mixed.gguf"), n_vocab_words=10, extra_kv={
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(6_000)], "general.after": "x", "zz.last": 3})
    f = assert_same_as_reference(mixed, reference)
    assert f.metadata["general.after"] == "x"
    assert again(mixed, fast=False).metadata == f.metadata

    # A key of another namespace between the tokens and a later "tokenizer." key: the fast path lands on the
    # later key, the keys that follow do not add up, and the reader starts over with exact walks.
    skipped = write_tiny_model(path.with_name("skipped.gguf"), n_vocab_words=10, extra_kv={
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(6_000)], "general.between": 7,
        "tokenizer.ggml.scores": [0.0] * 6_000})
    f = assert_same_as_reference(skipped, reference)
    assert f.metadata["general.between"] == 7
    assert f.skip_mode == "exact"


def test_adversarial_tokens_fall_back_to_exact(vocab_model, reference):
    # A token that is byte for byte a key header, placed where the fast path looks first: the verification
    # catches the false boundary and the reader starts over with exact walks.
    fake_header = "\x15" + "\x00" * 7 + "tokenizer.ggml.scores" + "\x09\x00\x00\x00\x06\x00\x00\x00"
    tricky = [fake_header, "tokenizer.ggml.scores", "general.name", "tokenizer."]
    path = vocab_model(n_tokens=6_000, tricky=tricky)
    f = assert_same_as_reference(path, reference)
    assert f.skip_mode == "exact"


def test_long_strings_in_arrays(tmp_path, reference):
    long_tokens = [f"tok{i}" for i in range(5_000)]
    long_tokens[10] = "x" * 300  # longer than a one-byte length
    long_tokens[20] = "y" * (rd.WINDOW + 17)  # longer than the read window
    path = write_tiny_model(tmp_path / "long.gguf", n_vocab_words=10, extra_kv={
        "tokenizer.ggml.tokens": long_tokens, "tokenizer.ggml.scores": [0.5] * 5_000,
        "tokenizer.chat_template": "{{ tools }}" + "z" * 70_000})
    for fast in (True, False):
        assert_same_as_reference(path, reference, fast=fast)


def test_value_types_and_short_arrays(tmp_path, reference):
    vt = gguf.GGUFValueType
    extra = {
        "t.u8": (7, vt.UINT8), "t.i8": (-7, vt.INT8), "t.u16": (700, vt.UINT16), "t.i16": (-700, vt.INT16),
        "t.u32": 70_000, "t.i32": -70_000, "t.f32": 0.25, "t.bool": True, "t.u64": 2**40, "t.i64": -(2**40),
        "t.f64": (0.1, vt.FLOAT64), "t.str": "héllo", "t.arr_i": [1, 2, 3], "t.arr_f": [0.5, 1.5],
        "t.arr_s": ["a", "b"], "t.arr_b": [True, False], "t.big_numeric": list(range(5_000)),
        "llama.attention.head_count_kv": [2, 4],
    }
    path = write_tiny_model(tmp_path / "types.gguf", extra_kv=extra)
    f = assert_same_as_reference(path, reference)
    assert f.metadata["t.arr_s"].values == ("a", "b")
    assert f.metadata["t.arr_i"].values == (1, 2, 3)
    assert f.metadata["t.big_numeric"].values is None and len(f.metadata["t.big_numeric"]) == 5_000
    assert f.metadata["llama.attention.head_count_kv"].values == (2, 4)


def test_big_endian_file(tmp_path, reference):
    import numpy as np

    path = tmp_path / "be.gguf"
    w = gguf.GGUFWriter(path, "llama", endianess=gguf.GGUFEndian.BIG)
    w.add_name("be")
    w.add_context_length(512)
    w.add_token_list([f"w{i}" for i in range(5_000)])
    w.add_token_scores([0.0] * 5_000)
    w.add_tensor("token_embd.weight", np.ones((8, 4), dtype=np.float32))  # the writer swaps the bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = assert_same_as_reference(path, reference)
    assert f.byte_order == "big"
    assert f.metadata["llama.context_length"] == 512


def test_parameter_count_and_quantization_from_tensors(tmp_path, reference):
    import numpy as np

    path = tmp_path / "q8.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_token_list(["a", "b"])
    w.add_tokenizer_model("llama")
    # A Q8_0 tensor of 4 × 64 elements: 2 blocks of 34 bytes per row.
    raw = np.zeros((4, 2 * 34), dtype=np.uint8)
    w.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    f = assert_same_as_reference(path, reference)
    assert "general.file_type" not in f.metadata
    assert f.n_elements == 4 * 64 + 64
    assert f.quantization == "Q8_0"


def test_file_type_labels():
    assert quantization_label(15) == "Q4_K_M"
    assert quantization_label(7) == "Q8_0"
    assert quantization_label(1) == "F16"
    assert quantization_label(32) == "BF16"
    assert quantization_label(0) == "F32"
    assert quantization_label(15 | 1024) == "Q4_K_M"  # the "guessed" flag
    assert quantization_label(999) == "FT999"
    for ft in gguf.LlamaFileType:
        if ft.name.startswith("MOSTLY_") or ft.name == "ALL_F32":
            assert quantization_label(int(ft)) == ft.name.removeprefix("MOSTLY_").removeprefix("ALL_")


def test_ggml_type_table_matches_reference():
    from gguf.constants import GGML_QUANT_SIZES

    for t, (block, size) in GGML_QUANT_SIZES.items():
        assert rd.GGML_TYPES[int(t)] == (t.name, block, size)


# --- broken files ---------------------------------------------------------------------------------------------


def test_not_gguf(tmp_path):
    (tmp_path / "text.gguf").write_text("hello, I am not a model\n" * 10)
    (tmp_path / "empty.gguf").write_bytes(b"")
    (tmp_path / "short.gguf").write_bytes(b"GG")
    for name in ("text.gguf", "empty.gguf", "short.gguf"):
        with pytest.raises(NotGGUFError, match="not a GGUF file"):
            read_gguf(tmp_path / name)


def test_unsupported_versions(tmp_path):
    good = write_tiny_model(tmp_path / "t.gguf").read_bytes()
    for version, message in ((1, "version 1"), (99, "unsupported GGUF version 99")):
        p = tmp_path / f"v{version}.gguf"
        p.write_bytes(good[:4] + struct.pack("<I", version) + good[8:])
        with pytest.raises(NotGGUFError, match=message):
            read_gguf(p)


def test_truncated_everywhere(vocab_model):
    path = vocab_model(n_tokens=6_000)
    data = path.read_bytes()
    f = read_gguf(path)
    cuts = sorted({4, 9, 20, 24, 40, 200, 5_000, 40_000, 60_000, f.data_offset - 50, f.data_offset - 1,
                   f.data_offset + 10, len(data) // 2, len(data) - 1})
    cut_file = path.with_name("cut.gguf")
    for cut in cuts:
        cut_file.write_bytes(data[:cut])
        with pytest.raises(TruncatedError, match="truncated") as info:
            read_gguf(cut_file)
        assert "incomplete download" in str(info.value)
        assert info.value.path == str(cut_file)


def test_corrupt_headers(tmp_path):
    good = bytearray(write_tiny_model(tmp_path / "t.gguf").read_bytes())
    bad = tmp_path / "bad.gguf"

    huge_kv = bytearray(good)
    huge_kv[16:24] = struct.pack("<Q", 10**12)
    bad.write_bytes(huge_kv)
    with pytest.raises(CorruptError, match="more than the file holds"):
        read_gguf(bad)

    huge_string = bytearray(good)
    huge_string[24:32] = struct.pack("<Q", 2**50)  # the first key's length
    bad.write_bytes(huge_string)
    with pytest.raises(CorruptError, match="larger than the file"):
        read_gguf(bad)

    bad_type = bytearray(good)
    key_len = struct.unpack_from("<Q", good, 24)[0]
    bad_type[32 + key_len:36 + key_len] = struct.pack("<I", 77)
    bad.write_bytes(bad_type)
    with pytest.raises(CorruptError, match="unknown value type 77"):
        read_gguf(bad)


def test_reading_is_bounded_in_memory(vocab_model, monkeypatch):
    # With a 64 KiB window, a 150,000-token vocabulary (megabytes of strings) is skipped within a few windows
    # of memory, by the fast path and by the exact walk alike.
    monkeypatch.setattr(rd, "WINDOW", 64 * 1024)
    monkeypatch.setattr(rd, "FIRST_WINDOW", 16 * 1024)
    large = vocab_model("large", n_tokens=150_000)
    assert os.path.getsize(large) > 40 * rd.WINDOW
    for fast in (True, False):
        tracemalloc.start()
        f = read_gguf(large, fast=fast)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert f.metadata["tokenizer.ggml.tokens"].count == 150_000
        assert peak < 3 * rd.WINDOW, (fast, peak)
