"""OpenAI's audio API against the real whisper-server and a generated tiny whisper model, through the real host."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llama_host.testing import serve_host

from audio_helpers import whisper_site, write_tone

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def running(whisper_server_bin, tiny_whisper_model, tmp_path_factory) -> Iterator:
    site = whisper_site(tiny_whisper_model, whisper_server_bin,
                        plugins={"whisper_server": {"binary": whisper_server_bin, "max_upload_size": "1MiB"}})
    with serve_host(site, plugins=["whisper_server"], log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture
def client(running) -> openai.OpenAI:
    return openai.OpenAI(base_url=running.url() + "/v1", api_key="any", max_retries=0)


def multipart(parts: list[tuple[str, bytes, str | None]], boundary: str = "test-boundary") -> tuple[bytes, dict]:
    """A hand-made multipart body (so a test chooses the field order); ``(name, value, filename)``."""
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + value + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def assert_openai_error(response: httpx.Response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.mark.parametrize(("fmt", "content_type"), [
    ("text", "text/plain; charset=utf-8"),
    ("srt", "application/x-subrip; charset=utf-8"),
    ("vtt", "text/vtt; charset=utf-8"),
])
def test_plain_formats(client, tone_wav, fmt, content_type):
    with open(tone_wav, "rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-tiny", file=f, response_format=fmt)
    assert raw.headers["content-type"] == content_type
    text = raw.parse()
    assert isinstance(text, str)
    assert "hello" in text
    if fmt == "text":
        assert text == "hello\n"
    if fmt == "srt":
        assert text.startswith("1\n00:00:00,000 --> 00:00:01,000\n")
    if fmt == "vtt":
        assert text.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n")


def test_json(client, tone_wav):
    with open(tone_wav, "rb") as f:
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=f)  # an alias
    assert raw.headers["content-type"] == "application/json"
    assert raw.parse().text == "hello"


def test_verbose_json_detects_the_language(client, tone_wav):
    with open(tone_wav, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-tiny", file=f, response_format="verbose_json")
    assert result.text == "hello"
    assert result.task == "transcribe"
    assert result.language == "english"  # no language sent → whisper detects it (the tiny model always says en)
    assert result.duration == pytest.approx(2.0)
    [segment] = result.segments
    assert (segment.start, segment.end, segment.text.strip()) == (0.0, 1.0, "hello")
    assert result.words is None


def test_verbose_json_words_and_language(client, tone_wav):
    with open(tone_wav, "rb") as f:
        result = client.audio.transcriptions.create(model="whisper-tiny", file=f, response_format="verbose_json",
                                                    language="de", prompt="Guten Tag", temperature=0.2,
                                                    timestamp_granularities=["word"])
    assert result.language == "german"
    assert [(w.word, w.start, w.end) for w in result.words] == [("hello", 0.0, 1.0)]
    assert result.segments is None


def test_translation(client, tone_wav):
    # the SDK marks translations deprecated (OpenAI's own models moved on); whisper models still translate
    with open(tone_wav, "rb") as f, pytest.deprecated_call():
        result = client.audio.translations.create(model="whisper-tiny", file=f, response_format="verbose_json")
    assert result.task == "translate"
    assert result.text == "hello"
    with open(tone_wav, "rb") as f, pytest.deprecated_call():
        assert client.audio.translations.create(model="whisper-tiny", file=f).text == "hello"


def test_long_audio_has_one_segment_per_window(client, tmp_path):
    wav = write_tone(tmp_path / "long.wav", 31.0, rate=8000)  # whisper-server resamples to 16 kHz
    with open(wav, "rb") as f:
        srt = client.audio.transcriptions.create(model="whisper-tiny", file=f, response_format="srt")
    assert "00:00:30,000 --> 00:00:31,000" in srt


def test_model_named_after_the_file(running, tone_wav):
    body, headers = multipart([("file", tone_wav.read_bytes(), "tone.wav"), ("response_format", b"text", None),
                               ("model", b"whisper-tiny", None), ("language", b"en", None)])
    r = httpx.post(running.url() + "/v1/audio/transcriptions", content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.text.strip() == "hello"
    assert r.headers["content-type"] == "text/plain; charset=utf-8"


def test_no_file(running):
    body, headers = multipart([("model", b"whisper-tiny", None)])
    r = httpx.post(running.url() + "/v1/audio/transcriptions", content=body, headers=headers)
    assert_openai_error(r, 400, "file")


def test_not_multipart(running):
    r = httpx.post(running.url() + "/v1/audio/transcriptions", json={"model": "whisper-tiny"})
    assert_openai_error(r, 400)


def test_undecodable_audio_gets_the_runners_reason(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-tiny", file=("noise.wav", b"RIFF....WAVEnot audio at all"))
    error = caught.value.body
    assert caught.value.status_code == 400
    assert error["param"] == "file"
    assert "failed to read audio data" in error["message"]
    assert "Invalid request" not in error["message"]


def test_too_large(client):
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.transcriptions.create(model="whisper-tiny", file=("big.wav", b"\0" * (2 * 2**20)))
    assert caught.value.status_code == 413
    assert "1 MiB" in caught.value.body["message"]


def test_too_large_without_content_length(running):
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-tiny\r\n'
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * 65536
        yield b"\r\n--b--\r\n"

    r = httpx.post(running.url() + "/v1/audio/transcriptions", content=chunks(),
                   headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert_openai_error(r, 413)


@pytest.mark.parametrize(("field", "value"), [
    ("response_format", "xml"), ("language", "klingon"), ("temperature", "hot"), ("temperature", "3"),
])
def test_bad_fields(client, tone_wav, field, value):
    with open(tone_wav, "rb") as f, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-tiny", file=f, extra_body={field: value})
    assert caught.value.body["param"] == field


def test_bad_field_after_the_file(running, tone_wav):
    body, headers = multipart([("model", b"whisper-tiny", None), ("file", tone_wav.read_bytes(), "tone.wav"),
                               ("response_format", b"xml", None)])
    r = httpx.post(running.url() + "/v1/audio/transcriptions", content=body, headers=headers)
    assert_openai_error(r, 400, "response_format")


def test_unknown_model(client, tone_wav):
    with open(tone_wav, "rb") as f, pytest.raises(openai.NotFoundError) as caught:
        client.audio.transcriptions.create(model="no-such-model", file=f)
    assert caught.value.body["param"] == "model"


def test_upload_streams_through(whisper_server_bin, tiny_whisper_model, tmp_path):
    """A 48 MiB upload passes through while the host allocates a small fraction of it."""
    size, chunk = 48 * 2**20, b"\x01" * 2**16
    site = whisper_site(tiny_whisper_model, whisper_server_bin,
                        plugins={"whisper_server": {"binary": whisper_server_bin, "max_upload_size": "64MiB"}})
    with serve_host(site, plugins=["whisper_server"], log_dir=tmp_path) as running:
        running.call(running.host.scheduler.load("whisper-tiny"))

        def body():
            yield b'--b\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper-tiny\r\n'
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="noise.wav"\r\n\r\n'
            for _ in range(size // len(chunk)):
                yield chunk
            yield b"\r\n--b--\r\n"

        tracemalloc.start()
        try:
            r = httpx.post(running.url() + "/v1/audio/transcriptions", content=body(), timeout=120,
                           headers={"Content-Type": "multipart/form-data; boundary=b"})
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    error = assert_openai_error(r, 400, "file")  # whisper-server read all of it, and could not decode it
    assert "failed to read audio data" in error["message"]
    print(f"peak {peak / 2**20:.2f} MiB")
    assert peak < size / 8, f"peak {peak / 2**20:.1f} MiB"


def test_other_api_ports_serve_audio(whisper_server_bin, tiny_whisper_model, tone_wav, tmp_path):
    site = whisper_site(tiny_whisper_model, whisper_server_bin)
    with serve_host(site, plugins=["whisper_server", "lmstudio_api"], log_dir=tmp_path) as running:
        client = openai.OpenAI(base_url=running.url("lmstudio_api") + "/v1", api_key="any", max_retries=0)
        with open(tone_wav, "rb") as f:
            assert client.audio.transcriptions.create(model="whisper-tiny", file=f).text == "hello"
        assert running.host.scheduler.status("whisper-tiny").state == "loaded"


def test_model_of_another_runtime(whisper_server_bin, tiny_whisper_model, tone_wav, tmp_path):
    site = whisper_site(tiny_whisper_model, whisper_server_bin)
    site["models"]["chat"] = {"path": str(Path(tmp_path) / "never-started.gguf")}
    with serve_host(site, plugins=["whisper_server", "llama_server"], log_dir=tmp_path) as running:
        client = openai.OpenAI(base_url=running.url() + "/v1", api_key="any", max_retries=0)
        with open(tone_wav, "rb") as f, pytest.raises(openai.BadRequestError) as caught:
            client.audio.transcriptions.create(model="chat", file=f)
        assert caught.value.body["param"] == "model"
        assert running.host.scheduler.status("chat").state == "unloaded"
