"""Fixtures for the audio tests: the real whisper-server, a tiny whisper model, generated WAV tones."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llama_host.binaries import find_binary

from audio_helpers import write_tone


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


@pytest.fixture(scope="session")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("audio") / "tone.wav")
