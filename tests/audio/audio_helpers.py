"""Helpers for the audio tests (a module with a unique name: several test folders have a conftest)."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path
from typing import Any


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


def whisper_site(model: Path, binary: str, **overrides: Any) -> dict[str, Any]:
    """A site config serving the tiny whisper model as ``whisper-tiny`` (alias ``whisper-1``)."""
    site = {
        "scheduler": {"max_loaded": 2, "ttl": 300, "startup_timeout": 60},
        "plugins": {"whisper_server": {"binary": binary}},
        "models": {"whisper-tiny": {"runtime": "whisper-server", "path": str(model), "aliases": ["whisper-1"],
                                      "params": {"threads": 1}}},
    }
    site.update(overrides)
    return site
