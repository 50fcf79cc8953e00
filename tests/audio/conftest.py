"""Fixtures for the audio tests: a tiny whisper model and generated WAV tones (the real whisper-server comes from
llama_host.testing's ``whisper_server_bin``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from audio_helpers import write_tone


@pytest.fixture(scope="session")
def tiny_whisper_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny whisper model (legacy ggml .bin) that transcribes every window to " hello"."""
    from llama_host_whisper_server.tinymodel import write_tiny_whisper_model

    return write_tiny_whisper_model(tmp_path_factory.mktemp("whisper") / "tiny-whisper.bin")


@pytest.fixture(scope="session")
def tone_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tone(tmp_path_factory.mktemp("audio") / "tone.wav")
