"""A tiny random-weight llama model in GGUF, written in a fraction of a second (tests, demos, benchmarks).

The model is a real llama: llama-server loads it, chats through its ChatML template (tool calls included), and
embeds with ``--embeddings --pooling mean``. Its output is random but always printable: the output weights of the
special and byte tokens are very negative, so ``</s>`` is never picked and ``max_tokens=N`` yields exactly N tokens.

Writing needs the PyPI ``gguf`` package (a test dependency of llama-host, imported only here and only when called)::

    python -m llama_host.tinymodel tiny.gguf
    llama-server -m tiny.gguf --port 8080 -c 1024
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

N_EMBD = 64
N_HEAD = 4
N_LAYER = 2
N_FF = 128

CHAT_TEMPLATE = """\
{%- if tools %}
{{- '<|im_start|>system\\n' }}
{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}
{{- '# Tools\\n\\nYou may call one or more functions. Function signatures:\\n<tools>' }}
{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}
{{- '\\n</tools>\\n\\nReturn each call as <tool_call>{"name": <name>, "arguments": <args>}</tool_call><|im_end|>\\n' }}
{%- elif messages[0]['role'] == 'system' %}
{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
{%- if message['role'] == 'system' %}
{%- elif message['role'] == 'tool' %}
{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}
{%- elif message['role'] == 'assistant' and message.get('tool_calls') %}
{{- '<|im_start|>assistant\\n' }}{%- if message['content'] %}{{- message['content'] }}{%- endif %}
{%- for call in message['tool_calls'] %}
{%- if call['function'] is defined %}{%- set call = call['function'] %}{%- endif %}
{{- '\\n<tool_call>\\n{"name": "' + call['name'] + '", "arguments": ' }}
{%- if call['arguments'] is string %}{{- call['arguments'] }}{%- else %}{{- call['arguments'] | tojson }}{%- endif %}
{{- '}\\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\\n' }}
{%- else %}
{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}
"""

_CONSONANTS = "bcdfghjklmnprstvz"
_VOWELS = "aeiou"


def _words(count: int, rng: Any) -> list[str]:
    """``count`` unique pronounceable lowercase words, deterministic for a given generator."""
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < count:
        syllables = int(rng.integers(1, 4))
        word = "".join(
            _CONSONANTS[int(rng.integers(len(_CONSONANTS)))] + _VOWELS[int(rng.integers(len(_VOWELS)))]
            for _ in range(syllables)
        )
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def _add_extra(writer: Any, gguf: Any, key: str, value: Any) -> None:
    """Add one extra key; the value type follows the Python type unless given as ``(value, GGUFValueType[, sub])``."""
    vt = gguf.GGUFValueType
    if isinstance(value, tuple):
        writer.add_key_value(key, value[0], *value[1:])
    elif isinstance(value, bool):
        writer.add_bool(key, value)
    elif isinstance(value, int):
        if value < 0:
            writer.add_int64(key, value) if value < -(2**31) else writer.add_int32(key, value)
        else:
            writer.add_uint64(key, value) if value >= 2**32 else writer.add_uint32(key, value)
    elif isinstance(value, float):
        writer.add_float32(key, value)
    elif isinstance(value, str):
        writer.add_string(key, value)
    elif isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"extra_kv[{key!r}]: empty arrays cannot be written (give (value, type, subtype))")
        writer.add_key_value(key, list(value), vt.ARRAY)
    else:
        raise TypeError(f"extra_kv[{key!r}]: unsupported value type {type(value).__name__}")


def _import_gguf() -> Any:
    try:
        import gguf
    except ImportError as exc:
        raise RuntimeError(
            "writing a tiny GGUF model needs the 'gguf' package: pip install gguf "
            "(or pip install 'llama-host[test]')"
        ) from exc
    return gguf


def write_tiny_model(
    path: str | Path,
    *,
    name: str = "tiny",
    embedding: bool = False,
    context_length: int = 2048,
    n_vocab_words: int = 300,
    seed: int = 0,
    extra_kv: Mapping[str, Any] | None = None,
    split_max_tensors: int = 0,
) -> Path:
    """Write a tiny random llama model to ``path`` and return the path.

    :param name: ``general.name``.
    :param embedding: an embedding model: ``llama.pooling_type`` = mean and no chat template.
    :param context_length: ``llama.context_length`` (the training context llama-server uses with ``-c 0``).
    :param n_vocab_words: word pieces after the 3 special and 256 byte tokens.
    :param seed: weights and words are deterministic for a seed.
    :param extra_kv: more metadata keys; a value's GGUF type follows its Python type (int → uint32, or uint64 /
        int32 / int64 when needed; float → float32; list → array), or is given as ``(value, GGUFValueType[, sub])``.
        A key that the model already has is replaced.
    :param split_max_tensors: write a split model (``NAME-00001-of-0000N.gguf`` ... next to ``path``, at most this
        many tensors per file, as llama.cpp's ``gguf-split`` does); the path of the first part is returned.
    """
    gguf = _import_gguf()
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    # Without a space prefix llama-server can build grammars for it (format=json, json_schema, tool_choice).
    extra = {"tokenizer.ggml.add_space_prefix": False, **(extra_kv or {})}

    words = _words(n_vocab_words, rng)
    specials = ["<unk>", "<s>", "</s>"]
    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    # SentencePiece marks a leading space with U+2581; half the pieces are word starts, half continuations.
    pieces = [("\u2581" + w) if i % 2 == 0 else w for i, w in enumerate(words)]
    tokens = specials + byte_tokens + pieces
    n_vocab = len(tokens)
    if len(set(tokens)) != n_vocab:  # pragma: no cover - _words guarantees uniqueness
        raise AssertionError("token strings must be unique")
    tt = gguf.TokenType
    types = [tt.UNKNOWN, tt.CONTROL, tt.CONTROL] + [tt.BYTE] * 256 + [tt.NORMAL] * len(pieces)
    # Higher scores merge first; longer pieces score higher so words stay whole.
    scores = [0.0, 0.0, 0.0] + [0.0] * 256 + [float(len(p)) - i * 1e-4 for i, p in enumerate(pieces)]
    n_banned = len(specials) + len(byte_tokens)

    arch = "llama"
    writer = gguf.GGUFWriter(path, arch, split_max_tensors=split_max_tensors)
    overridden = set(extra)

    def add(key: str, fn: Any, *args: Any) -> None:
        if key not in overridden:
            fn(*args)

    add("general.name", writer.add_name, name)
    add("general.file_type", writer.add_file_type, int(gguf.LlamaFileType.ALL_F32))
    add(f"{arch}.vocab_size", writer.add_vocab_size, n_vocab)
    add(f"{arch}.context_length", writer.add_context_length, context_length)
    add(f"{arch}.embedding_length", writer.add_embedding_length, N_EMBD)
    add(f"{arch}.block_count", writer.add_block_count, N_LAYER)
    add(f"{arch}.feed_forward_length", writer.add_feed_forward_length, N_FF)
    add(f"{arch}.attention.head_count", writer.add_head_count, N_HEAD)
    add(f"{arch}.attention.head_count_kv", writer.add_head_count_kv, N_HEAD)
    add(f"{arch}.rope.dimension_count", writer.add_rope_dimension_count, N_EMBD // N_HEAD)
    add(f"{arch}.rope.freq_base", writer.add_rope_freq_base, 10000.0)
    add(f"{arch}.attention.layer_norm_rms_epsilon", writer.add_layer_norm_rms_eps, 1e-5)
    if embedding:
        add(f"{arch}.pooling_type", writer.add_pooling_type, gguf.PoolingType.MEAN)
    add("tokenizer.ggml.model", writer.add_tokenizer_model, "llama")
    add("tokenizer.ggml.tokens", writer.add_token_list, tokens)
    add("tokenizer.ggml.scores", writer.add_token_scores, scores)
    add("tokenizer.ggml.token_type", writer.add_token_types, [int(t) for t in types])
    add("tokenizer.ggml.unknown_token_id", writer.add_unk_token_id, 0)
    add("tokenizer.ggml.bos_token_id", writer.add_bos_token_id, 1)
    add("tokenizer.ggml.eos_token_id", writer.add_eos_token_id, 2)
    add("tokenizer.ggml.add_bos_token", writer.add_add_bos_token, True)
    add("tokenizer.ggml.add_eos_token", writer.add_add_eos_token, False)
    if not embedding:
        add("tokenizer.chat_template", writer.add_chat_template, CHAT_TEMPLATE)
    for key, value in extra.items():
        _add_extra(writer, gguf, key, value)

    def randn(*shape: int, scale: float = 0.1) -> Any:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # Dimension 0 of the residual stream is a constant positive carrier: every token embeds 1.0 there and no layer
    # writes to it, so after the final norm it stays positive and the output rows of special/byte tokens (-100 on
    # that dimension) give them logits far below every word piece's.
    tok_embd = randn(n_vocab, N_EMBD)
    tok_embd[:, 0] = 1.0
    writer.add_tensor("token_embd.weight", tok_embd)
    for layer in range(N_LAYER):
        blk = f"blk.{layer}"
        writer.add_tensor(f"{blk}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{blk}.attn_q.weight", randn(N_EMBD, N_EMBD))
        writer.add_tensor(f"{blk}.attn_k.weight", randn(N_EMBD, N_EMBD))
        writer.add_tensor(f"{blk}.attn_v.weight", randn(N_EMBD, N_EMBD))
        attn_out = randn(N_EMBD, N_EMBD)
        attn_out[0, :] = 0.0
        writer.add_tensor(f"{blk}.attn_output.weight", attn_out)
        writer.add_tensor(f"{blk}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        writer.add_tensor(f"{blk}.ffn_gate.weight", randn(N_FF, N_EMBD))
        writer.add_tensor(f"{blk}.ffn_up.weight", randn(N_FF, N_EMBD))
        ffn_down = randn(N_EMBD, N_FF)
        ffn_down[0, :] = 0.0
        writer.add_tensor(f"{blk}.ffn_down.weight", ffn_down)
    writer.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    output = randn(n_vocab, N_EMBD, scale=1.0)
    output[:, 0] = 0.0
    output[:n_banned, :] = 0.0
    output[:n_banned, 0] = -100.0
    writer.add_tensor("output.weight", output)

    first: Path = writer.format_shard_names(path)[0]
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return first


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m llama_host.tinymodel",
        description="Write a tiny random-weight llama GGUF model (needs: pip install gguf).",
    )
    parser.add_argument("out", type=Path, help="output .gguf file")
    parser.add_argument("--name", default="tiny", help="general.name (default: tiny)")
    parser.add_argument("--embedding", action="store_true", help="an embedding model (mean pooling, no chat template)")
    parser.add_argument("--context-length", type=int, default=2048)
    parser.add_argument("--words", type=int, default=300, help="word pieces in the vocabulary")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        out = write_tiny_model(args.out, name=args.name, embedding=args.embedding,
                               context_length=args.context_length, n_vocab_words=args.words, seed=args.seed)
    except (RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
