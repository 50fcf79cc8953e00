"""Fast tests of the whisper_server plugin's pure parts: argv, multipart streaming, options, replies, tiny model."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator

import msgspec
import pytest

from llama_host import ModelSpec
from llama_host.errors import BadRequest
from llama_host_whisper_server import tinymodel
from llama_host_whisper_server.form import FilePart, IncomingForm, OutgoingForm, Spool, boundary_of
from llama_host_whisper_server.options import (AudioOptions, decode_failure_reason, openai_reply, parse_options)
from llama_host_whisper_server.runtime import WhisperServerRunner, build_argv
from llama_host_whisper_server.settings import Settings

# --- argv ---------------------------------------------------------------------------------------------------------


def test_argv_maps_params_and_args():
    argv = build_argv("/bin/whisper-server", "~/models/ggml-base.bin", 4321,
                      {"threads": 4, "flash_attn": True, "no_gpu": False, "vad": None, "suppress_nst": True,
                       "dtw": "base"}, ["--tmp-dir", "/tmp"])
    assert argv[:10] == ["/bin/whisper-server", "-m", argv[2], "--host", "127.0.0.1", "--port", "4321",
                         "--inference-path", "/v1/audio/transcriptions", "--threads"]
    assert argv[2].endswith("/models/ggml-base.bin") and not argv[2].startswith("~")
    assert argv[9:] == ["--threads", "4", "--flash-attn", "--suppress-nst", "--dtw", "base", "--tmp-dir", "/tmp"]


def test_argv_repeats_list_params():
    assert build_argv("w", "m.bin", 1, {"x": ["a", "b"]})[-4:] == ["--x", "a", "--x", "b"]


class _Host:
    class site:
        log_dir = None

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def settings(self, name: str, kind: type) -> Settings:
        assert (name, kind) == ("whisper_server", Settings)
        return self._settings


def test_binary_model_wins_over_plugin(tmp_path):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for p in (mine, theirs):
        p.write_text("#!/bin/sh\n")
        p.chmod(0o755)
    spec = ModelSpec(name="w", runtime="whisper-server", path="m.bin", binary=str(mine))
    runner = WhisperServerRunner(spec, _Host(Settings(binary=str(theirs))))
    runner.port = 5
    assert runner.argv[0] == str(mine)
    runner = WhisperServerRunner(ModelSpec(name="w", runtime="whisper-server", path="m.bin"),
                                 _Host(Settings(binary=str(theirs))))
    assert runner.argv[0] == str(theirs)


def test_binary_falls_back_to_the_cache(tmp_path, monkeypatch):
    cached = tmp_path / "whisper-server-1.5.1" / "whisper-server"
    cached.parent.mkdir()
    cached.write_text("#!/bin/sh\n")
    cached.chmod(0o755)
    monkeypatch.setenv("LLAMA_HOST_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    runner = WhisperServerRunner(ModelSpec(name="w", runtime="whisper-server", path="m.bin"), _Host(Settings()))
    assert runner.argv[0] == str(cached)


async def test_missing_binary_or_model_fails_to_start(tmp_path, monkeypatch):
    from llama_host.errors import RunnerStartError

    monkeypatch.setenv("LLAMA_HOST_CACHE", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    runner = WhisperServerRunner(ModelSpec(name="w", runtime="whisper-server", path="m.bin"), _Host(Settings()))
    with pytest.raises(RunnerStartError, match="get-whisper-server"):
        await runner.start(1)
    runner = WhisperServerRunner(ModelSpec(name="w", runtime="whisper-server", path=str(tmp_path / "none.bin")),
                                 _Host(Settings(binary="/bin/true")))
    with pytest.raises(RunnerStartError, match="model file not found"):
        await runner.start(1)


# --- multipart ----------------------------------------------------------------------------------------------------


def body_of(parts: list[tuple[str, bytes, str | None]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]
    yield b""  # Litestar ends request.stream() with an empty chunk


AUDIO = bytes(range(256)) * 300 + b"\r\n--Xy almost a boundary\r\n"


@pytest.mark.parametrize("size", [1, 7, 1000, 10**6])
async def test_incoming_form_streams_the_file(size):
    data = body_of([("model", b"whisper-1", None), ("language", b"de", None), ("file", AUDIO, "a b%22.wav"),
                    ("response_format", b"srt", None), ("timestamp_granularities[]", b"word", None)])
    form = IncomingForm(chunked(data, size), "XyZ")
    part = await form.next_file()
    assert part == FilePart('a b".wav', "application/octet-stream")
    assert form.fields == {"model": ["whisper-1"], "language": ["de"]}
    got = [c async for c in form.file_chunks()]
    assert b"".join(got) == AUDIO
    if size < len(AUDIO):
        assert len(got) > 1  # handed over as it arrives
    await form.rest()
    assert form.fields["response_format"] == ["srt"]
    assert form.fields["timestamp_granularities[]"] == ["word"]


async def test_incoming_form_without_file():
    form = IncomingForm(chunked(body_of([("model", b"m", None)]), 5), "XyZ")
    assert await form.next_file() is None
    assert form.first("model") == "m"


async def test_incoming_form_two_files():
    form = IncomingForm(chunked(body_of([("file", b"a", "a"), ("file", b"b", "b")]), 5), "XyZ")
    await form.next_file()
    with pytest.raises(BadRequest, match="only one"):
        await form.rest()


@pytest.mark.parametrize("data", [
    b"garbage without boundary",
    body_of([("file", b"abc", "a.wav")])[:-20],  # cut inside the file
])
async def test_incoming_form_malformed(data):
    form = IncomingForm(chunked(data, 4), "XyZ")
    with pytest.raises(BadRequest):
        if await form.next_file() is not None:
            async for _ in form.file_chunks():
                pass
            await form.rest()


async def test_incoming_form_field_too_long():
    form = IncomingForm(chunked(body_of([("prompt", b"x" * 100, None)]), 16), "XyZ", max_field_size=64)
    with pytest.raises(BadRequest) as caught:
        await form.next_file()
    assert caught.value.param == "prompt"


def test_boundary_of():
    assert boundary_of('multipart/form-data; boundary="a b"') == "a b"
    for bad in (None, "application/json", "multipart/form-data"):
        with pytest.raises(BadRequest):
            boundary_of(bad)


async def test_outgoing_form_round_trips():
    out = OutgoingForm()
    data = (out.file_head(FilePart('we"ird\nname.wav', "audio/wav")) + AUDIO + out.file_tail()
            + out.fields([("language", "auto"), ("translate", "true")]) + out.end())
    form = IncomingForm(chunked(data, 333), boundary_of(out.content_type))
    part = await form.next_file()
    assert part.content_type == "audio/wav"
    assert b"".join([c async for c in form.file_chunks()]) == AUDIO
    await form.rest()
    assert form.fields == {"language": ["auto"], "translate": ["true"]}


async def test_spool_keeps_the_file_on_disk():
    spool = await Spool.fill(chunked(AUDIO, 1000))
    try:
        assert spool.size == len(AUDIO)
        assert b"".join([c async for c in spool.chunks()]) == AUDIO
    finally:
        await spool.close()


# --- options and replies ------------------------------------------------------------------------------------------


def test_options_defaults_and_runner_fields():
    options = parse_options({"model": ["m"]})
    assert options == AudioOptions()
    assert options.runner_fields(translate=False) == [
        ("response_format", "json"), ("language", "auto"), ("translate", "false")]


def test_options_pass_extras_and_drop_controlled():
    options = parse_options({"language": ["DE"], "prompt": ["hi"], "temperature": ["0.5"], "beam_size": ["5"],
                             "translate": ["true"], "response_format": ["verbose_json"],
                             "timestamp_granularities[]": ["word", "segment"]})
    assert options.granularities == ("word", "segment")
    assert options.runner_fields(translate=True) == [
        ("response_format", "verbose_json"), ("language", "de"), ("translate", "true"), ("prompt", "hi"),
        ("temperature", "0.5"), ("no_language_probabilities", "true"), ("beam_size", "5")]


@pytest.mark.parametrize(("fields", "param"), [
    ({"response_format": ["xml"]}, "response_format"),
    ({"language": ["xx"]}, "language"),
    ({"temperature": ["warm"]}, "temperature"),
    ({"temperature": ["-1"]}, "temperature"),
    ({"temperature": ["nan"]}, "temperature"),
    ({"timestamp_granularities[]": ["word"]}, "timestamp_granularities"),  # needs verbose_json
    ({"timestamp_granularities[]": ["char"], "response_format": ["verbose_json"]}, "timestamp_granularities"),
    ({"stream": ["true"]}, "stream"),
])
def test_options_rejected(fields, param):
    with pytest.raises(BadRequest) as caught:
        parse_options(fields)
    assert caught.value.param == param


def test_language_names_are_accepted():
    assert parse_options({"language": ["German"]}).language == "german"
    assert parse_options({"language": ["auto"]}).language == "auto"


WHISPER_VERBOSE = {
    "task": "transcribe", "language": "english", "duration": 2.0, "text": " hello\n world\n",
    "segments": [{"id": 0, "text": " hello", "start": 0.0, "end": 1.0, "tokens": [256],
                  "words": [{"word": " hello", "start": 0.0, "end": 1.0, "t_dtw": -1, "probability": 1.0}],
                  "temperature": 0.0, "avg_logprob": -0.1, "no_speech_prob": 0.01},
                 {"id": 1, "text": " world", "start": 1.0, "end": 2.0, "tokens": [257],
                  "words": [{"word": " world", "start": 1.0, "end": 2.0}]}],
    "detected_language": "english"}


def test_reply_json_is_trimmed():
    assert msgspec.json.decode(openai_reply(AudioOptions(), b'{"text":" hello\\n"}')) == {"text": "hello"}


def test_reply_verbose_json():
    reply = msgspec.json.decode(openai_reply(AudioOptions(response_format="verbose_json"),
                                             msgspec.json.encode(WHISPER_VERBOSE)))
    assert reply["text"] == "hello world"
    assert "words" not in reply and "detected_language" not in reply
    assert reply["segments"][0] == {"id": 0, "seek": 0, "start": 0.0, "end": 1.0, "text": " hello", "tokens": [256],
                                    "temperature": 0.0, "avg_logprob": -0.1, "compression_ratio": 0.0,
                                    "no_speech_prob": 0.01}
    assert reply["segments"][1]["seek"] == 100


def test_reply_verbose_json_words():
    options = AudioOptions(response_format="verbose_json", granularities=("word",))
    reply = msgspec.json.decode(openai_reply(options, msgspec.json.encode(WHISPER_VERBOSE)))
    assert reply["words"] == [{"word": "hello", "start": 0.0, "end": 1.0}, {"word": "world", "start": 1.0, "end": 2.0}]
    assert "segments" not in reply


@pytest.mark.parametrize("fmt", ["srt", "vtt"])
def test_reply_subtitles_pass_through(fmt):
    assert openai_reply(AudioOptions(response_format=fmt), b" hello\n") == b" hello\n"


def test_reply_text_is_one_line():
    assert openai_reply(AudioOptions(response_format="text"), b" Hello\n world.\n") == b"Hello world.\n"
    assert openai_reply(AudioOptions(response_format="text"), "\u4f60\u597d\n\u4e16\u754c\n".encode()) == (
        "\u4f60\u597d\u4e16\u754c\n".encode())


def test_decode_failure_reason():
    lines = ["whisper_init: loaded", "error: failed to decode audio data from memory buffer",
             "error: failed to read audio data"]
    assert decode_failure_reason(lines) == "failed to decode audio data from memory buffer; failed to read audio data"
    assert decode_failure_reason(["all good"]) is None


# --- the tiny model -----------------------------------------------------------------------------------------------


def test_tiny_model_layout(tmp_path):
    path = tinymodel.write_tiny_whisper_model(tmp_path / "m.bin", word=" llama")
    data = path.read_bytes()
    magic, *hparams = struct.unpack_from("<I11i", data)
    assert magic == tinymodel.GGML_FILE_MAGIC
    assert hparams[0] == 51865 and hparams[-1] == 1  # n_vocab (multilingual), ftype f16
    n_mel, n_fft = struct.unpack_from("<2i", data, 48)
    offset = 56 + 4 * n_mel * n_fft
    (n_tokens,) = struct.unpack_from("<i", data, offset)
    offset += 4
    tokens = []
    for _ in range(n_tokens):
        (length,) = struct.unpack_from("<I", data, offset)
        tokens.append(data[offset + 4:offset + 4 + length])
        offset += 4 + length
    assert n_tokens == 50257 and len(set(tokens)) == n_tokens
    assert tokens[32] == b" " and tokens[tinymodel.WORD_TOKEN] == b" llama"
    names = []
    while offset < len(data):
        n_dims, name_len, ttype = struct.unpack_from("<3i", data, offset)
        shape = struct.unpack_from(f"<{n_dims}i", data, offset + 12)
        offset += 12 + 4 * n_dims
        names.append(data[offset:offset + name_len].decode())
        offset += name_len
        count = 1
        for n in shape:
            count *= n
        offset += count * (4 if ttype == 0 else 2)
    assert offset == len(data)
    assert len(names) == len(set(names)) == 7 + 15 + 4 + 24  # whisper.cpp's count for one layer each side
    assert len(data) < 10 * 2**20


def test_tiny_model_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        tinymodel.write_tiny_whisper_model(tmp_path / "m.bin", end_seconds=31)
    with pytest.raises(ValueError):
        tinymodel.write_tiny_whisper_model(tmp_path / "m.bin", word="a")
