"""A tiny whisper model in whisper.cpp's legacy ggml ``.bin`` format, made for tests (no download).

The weights are arranged so that every 30-second window transcribes to one fixed word, whatever the audio:
the encoder and all attention weights are zero, so each decoder step sees only its input token, and one
decoder MLP maps that token to the next one, like a lookup table::

    <|startoftranscript|>          -> <|en|>            (language detection)
    <|transcribe|> / <|translate|> -> <|0.00|>
    <|0.00|>                       -> word
    word                           -> <|1.00|>  (or <|endoftext|> when timestamps are off)
    <|1.00|>                       -> <|endoftext|>
    <|notimestamps|>               -> word

The token embedding (also the output projection) is zero except for those tokens, so their logits win by a
wide margin and decoding never falls back to higher temperatures. Dimensions: 64 wide, one layer each side,
51,865 vocabulary entries (multilingual layout) — about 7 MB, written in well under a second with the standard
library only.
"""

from __future__ import annotations

import struct
from pathlib import Path

GGML_FILE_MAGIC = 0x67676D6C
N_VOCAB = 51865  # multilingual: 50257 text tokens, then <|endoftext|>, <|startoftranscript|>, 99 languages, ...
N_TEXT_TOKENS = 50257
TOKEN_EOT = 50257
TOKEN_SOT = 50258
TOKEN_LANG_EN = 50259
TOKEN_TRANSLATE = 50358
TOKEN_TRANSCRIBE = 50359
TOKEN_NOT = 50363  # <|notimestamps|>
TOKEN_BEG = 50364  # <|0.00|>; timestamp k is TOKEN_BEG + k, 20 ms apart
WORD_TOKEN = 256  # the ids below are the 256 single bytes

N_STATE = 64
N_HEAD = 1
N_LAYER = 1
N_AUDIO_CTX = 1500
N_TEXT_CTX = 448
N_MELS = 80
N_FFT = 201
FTYPE_F16 = 1
TYPE_F32, TYPE_F16 = 0, 1

# Residual-stream directions: each token on the decoding path owns one dimension.
_EMBED_SCALE = 8.0  # logit margin of the next token is about 8 * sqrt(64)
_NEXT_GAIN = 80.0  # the MLP's push towards the next token, ten times the embedding


def write_tiny_whisper_model(path: str | Path, *, word: str = " hello", end_seconds: float = 1.0) -> Path:
    """Write the model to ``path`` and return it.

    ``word``: the text every window transcribes to (one token; a leading space as whisper's tokens have).
    ``end_seconds``: the end timestamp of each segment, a multiple of 0.02 between 0.02 and 30.
    """
    path = Path(path)
    end_token = TOKEN_BEG + round(end_seconds / 0.02)
    if not TOKEN_BEG < end_token < N_VOCAB:
        raise ValueError("end_seconds must be within (0, 30]")
    if not word or len(word.encode()) < 2:
        raise ValueError("word must be at least two bytes long (single bytes are tokens of their own)")

    dims = {tok: d for d, tok in enumerate(
        [TOKEN_SOT, TOKEN_LANG_EN, TOKEN_TRANSCRIBE, TOKEN_TRANSLATE, TOKEN_NOT, TOKEN_BEG, WORD_TOKEN, end_token,
         TOKEN_EOT])}
    # input token -> [(next token, weight)]: the strongest one wins; the second one after WORD_TOKEN is what
    # remains when timestamps are suppressed (no_timestamps).
    successors = {
        TOKEN_SOT: [(TOKEN_LANG_EN, 1.0)],
        TOKEN_TRANSCRIBE: [(TOKEN_BEG, 1.0)],
        TOKEN_TRANSLATE: [(TOKEN_BEG, 1.0)],
        TOKEN_NOT: [(WORD_TOKEN, 1.0)],
        TOKEN_BEG: [(WORD_TOKEN, 1.0)],
        WORD_TOKEN: [(end_token, 1.0), (TOKEN_EOT, 0.5)],
        end_token: [(TOKEN_EOT, 1.0)],
    }

    out = bytearray()
    out += struct.pack("<I", GGML_FILE_MAGIC)
    out += struct.pack("<11i", N_VOCAB, N_AUDIO_CTX, N_STATE, N_HEAD, N_LAYER, N_TEXT_CTX, N_STATE, N_HEAD, N_LAYER,
                       N_MELS, FTYPE_F16)
    # mel filters: zeros are enough, the encoder ignores its input anyway
    out += struct.pack("<2i", N_MELS, N_FFT) + bytes(4 * N_MELS * N_FFT)
    out += _vocab(word)

    def tensor(name: str, shape: tuple[int, ...], ttype: int, data: bytes | bytearray | None = None) -> None:
        count = 1
        for n in shape:
            count *= n
        size = count * (4 if ttype == TYPE_F32 else 2)
        encoded = name.encode()
        out.extend(struct.pack(f"<3i{len(shape)}i", len(shape), len(encoded), ttype, *shape))
        out.extend(encoded)
        if data is None:
            out.extend(bytes(size))
        else:
            assert len(data) == size, name
            out.extend(data)

    ones = struct.pack(f"<{N_STATE}f", *([1.0] * N_STATE))
    d, d4 = N_STATE, 4 * N_STATE

    def block(prefix: str, attn: tuple[str, ...], mlp_0: bytes | None = None, mlp_0_b: bytes | None = None,
              mlp_1: bytes | None = None) -> None:
        for a in attn:
            tensor(f"{prefix}.{a}_ln.weight", (d,), TYPE_F32, ones)
            tensor(f"{prefix}.{a}_ln.bias", (d,), TYPE_F32)
            for proj in ("query", "key", "value", "out"):
                tensor(f"{prefix}.{a}.{proj}.weight", (d, d), TYPE_F16)
                if proj != "key":
                    tensor(f"{prefix}.{a}.{proj}.bias", (d,), TYPE_F32)
        tensor(f"{prefix}.mlp_ln.weight", (d,), TYPE_F32, ones)
        tensor(f"{prefix}.mlp_ln.bias", (d,), TYPE_F32)
        tensor(f"{prefix}.mlp.0.weight", (d, d4), TYPE_F16, mlp_0)
        tensor(f"{prefix}.mlp.0.bias", (d4,), TYPE_F32, mlp_0_b)
        tensor(f"{prefix}.mlp.2.weight", (d4, d), TYPE_F16, mlp_1)
        tensor(f"{prefix}.mlp.2.bias", (d,), TYPE_F32)

    # encoder: all zero, its output is zero for any audio
    tensor("encoder.positional_embedding", (d, N_AUDIO_CTX), TYPE_F32)
    tensor("encoder.conv1.weight", (3, N_MELS, d), TYPE_F16)
    tensor("encoder.conv1.bias", (1, d), TYPE_F32)
    tensor("encoder.conv2.weight", (3, d, d), TYPE_F16)
    tensor("encoder.conv2.bias", (1, d), TYPE_F32)
    tensor("encoder.ln_post.weight", (d,), TYPE_F32, ones)
    tensor("encoder.ln_post.bias", (d,), TYPE_F32)
    for i in range(N_LAYER):
        block(f"encoder.blocks.{i}", ("attn",))

    # decoder
    token_embedding = bytearray(2 * d * N_VOCAB)
    for token, dim in dims.items():
        struct.pack_into("<e", token_embedding, 2 * (token * d + dim), _EMBED_SCALE)
    tensor("decoder.positional_embedding", (d, N_TEXT_CTX), TYPE_F32)
    tensor("decoder.token_embedding.weight", (d, N_VOCAB), TYPE_F16, token_embedding)
    tensor("decoder.ln.weight", (d,), TYPE_F32, ones)
    tensor("decoder.ln.bias", (d,), TYPE_F32)

    # MLP as a lookup table: hidden unit k fires when the (layer-normed) input is token k's direction, where it
    # reads about sqrt(63) ~ 7.9 against -0.13 elsewhere; with a bias of -4 it outputs ~3.9, else ~0.
    mlp_0 = bytearray(2 * d * d4)
    mlp_0_b = [-10.0] * d4
    mlp_1 = bytearray(2 * d4 * d)
    active = 3.94
    for unit, (token, nexts) in enumerate(successors.items()):
        struct.pack_into("<e", mlp_0, 2 * (unit * d + dims[token]), 1.0)
        mlp_0_b[unit] = -4.0
        for nxt, weight in nexts:
            struct.pack_into("<e", mlp_1, 2 * (dims[nxt] * d4 + unit), _NEXT_GAIN * weight / active)
    for i in range(N_LAYER):
        block(f"decoder.blocks.{i}", ("attn", "cross_attn"), mlp_0, struct.pack(f"<{d4}f", *mlp_0_b), mlp_1)

    path.write_bytes(out)
    return path


def _vocab(word: str) -> bytes:
    """The 50,257 text tokens: the 256 single bytes (so any prompt tokenizes, and " " exists), the word, fillers."""
    tokens = [bytes([b]) for b in range(256)] + [word.encode()]
    tokens += [b"<|filler_%d|>" % i for i in range(len(tokens), N_TEXT_TOKENS)]
    out = bytearray(struct.pack("<i", len(tokens)))
    for tok in tokens:
        out += struct.pack("<I", len(tok)) + tok
    return bytes(out)


if __name__ == "__main__":  # pragma: no cover - manual use: python -m llama_host_whisper_server.tinymodel out.bin
    import sys

    print(write_tiny_whisper_model(sys.argv[1] if len(sys.argv) > 1 else "tiny-whisper.bin"))
