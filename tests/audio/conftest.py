"""Fixtures for the audio tests: the real whisper-server, a tiny whisper model, generated WAV tones."""

from __future__ import annotations

import math
import os
import struct
import wave
from pathlib import Path

import pytest

from llama_host.binaries import find_binary


@pytest.fixture(scope="session")
def whisper_server_bin() -> str:
    """The real whisper-server: $WHISPER_SERVER, PATH or the cache of scripts/get-whisper-server. Missing → fail
    under CI, skip elsewhere."""
    found = find_binary("whisper-server", os.environ.get("WHISPER_SERVER"))
    if found is None:
        message = "whisper-server not found: run scripts/get-whisper-server (or set WHISPER_SERVER)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture(scope="session")
def tiny_whisper_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny whisper model (legacy ggml .bin) that transcribes every window to " hello"."""
    from llama_host_whisper_server.tinymodel import write_tiny_whisper_model

    return write_tiny_whisper_model(tmp_path_factory.mktemp("whisper") / "tiny-whisper.bin")


def write_tone(path: Path, seconds: float = 2.0, *, rate: int = 16000, freq: float = 440.0) -> Path:
    """A mono 16-bit sine tone, made with the standard library."""
    frames = b"".join(struct.pack("<h", int(12000 * math.sin(2 * math.pi * freq * i / rate)))
                      for i in range(int(seconds * rate)))
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames)
    return path


@pytest.fixture(scope="session")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("audio") / "tone.wav")


def whisper_site(model: Path, binary: str, **overrides) -> dict:
    site = {
        "scheduler": {"max_loaded": 2, "ttl": 300, "startup_timeout": 60},
        "plugins": {"whisper_server": {"binary": binary}},
        "models": {"whisper-tiny": {"runtime": "whisper-server", "path": str(model), "aliases": ["whisper-1"]}},
    }
    site.update(overrides)
    return site
