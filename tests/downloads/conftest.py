"""Fixtures: a local hub (tests/hub) serving generated tiny GGUFs, and its address in HF_ENDPOINT."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the local hub lives in tests/hub

from hub.names import REPO, SPLIT_REPO, files_under
from hub.server import Hub, HubServer

__all__ = ["REPO", "SPLIT_REPO", "files_under", "gguf_files", "hub"]


@pytest.fixture(scope="session")
def gguf_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Generated tiny models, by the file name the hub serves them under."""
    from llama_host.tinymodel import write_tiny_model

    folder = tmp_path_factory.mktemp("hubfiles")
    out = {
        "tiny-Q4_K_M.gguf": write_tiny_model(folder / "a.gguf", name="tiny-q4", seed=1).read_bytes(),
        "tiny-Q8_0.gguf": write_tiny_model(folder / "b.gguf", name="tiny-q8", seed=2).read_bytes(),
        "mmproj-tiny-f16.gguf": write_tiny_model(folder / "c.gguf", name="projector", seed=3).read_bytes(),
    }
    first = write_tiny_model(folder / "split" / "split-Q4_K_M.gguf", name="split", seed=4, split_max_tensors=12)
    for part in sorted(first.parent.glob("*.gguf")):
        out[part.name] = part.read_bytes()
    return out


@pytest.fixture
def hub(gguf_files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """A fresh hub on loopback with two repos; HF_ENDPOINT points at it, HF_TOKEN is unset."""
    h = Hub()
    h.add(REPO, {"README.md": b"# tiny\n", **{k: v for k, v in gguf_files.items() if k.startswith(("tiny", "mmproj"))}})
    h.add(SPLIT_REPO, {k: v for k, v in gguf_files.items() if k.startswith("split")})
    with HubServer(h) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        yield h
