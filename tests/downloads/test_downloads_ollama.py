"""Ollama's pull, blobs, create, copy and delete, driven by the official ``ollama`` client against the local hub."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import ollama
import pytest
from hub.names import REPO

from llama_host.testing import serve_host


@pytest.fixture
def running(hub, tmp_path: Path):
    cfg = {"models_dir": str(tmp_path / "managed"), "plugins": {"discovery_gguf": {"dirs": []}}}
    with serve_host(cfg, plugins=["discovery_gguf", "llama_server", "ollama_api"]) as rh:
        yield rh


@pytest.fixture
def client(running):
    with ollama.Client(host=running.url("ollama_api"), timeout=60) as c:
        yield c


def test_pull_with_progress_then_listed_and_shown(client: ollama.Client, running, gguf_files) -> None:
    name = f"hf.co/{REPO}:Q4_K_M"
    progress = list(client.pull(name, stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest"
    assert statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses and "writing manifest" in statuses
    digest = "sha256:" + hashlib.sha256(gguf_files["tiny-Q4_K_M.gguf"]).hexdigest()
    pulling = [p for p in progress if p.digest == digest]
    assert pulling and pulling[0].status == f"pulling {digest[7:19]}"
    assert pulling[-1].completed == pulling[-1].total == len(gguf_files["tiny-Q4_K_M.gguf"])
    assert "tiny-q4_k_m:latest" in {m.model for m in client.list().models}
    shown = client.show(name)
    assert shown.details.family == "llama"
    again = client.pull(name)  # already here: no second download
    assert again.status == "success"
    assert len(running.host.managed.downloads.jobs) == 1


def test_pull_without_stream_and_errors(client: ollama.Client) -> None:
    assert client.pull(f"{REPO}:Q8_0").status == "success"
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("../../etc/passwd")
    assert err.value.status_code == 400
    with pytest.raises(ollama.ResponseError) as err:
        client.pull(f"hf.co/{REPO}:Q3_K_S", stream=False)
    assert err.value.status_code == 400 and "Q4_K_M" in err.value.error
    with pytest.raises(ollama.ResponseError) as err:  # streamed: the error arrives as a line
        list(client.pull("hf.co/test-user/missing-GGUF", stream=True))
    assert "not found on the hub" in err.value.error


def test_blob_create_copy_delete(client: ollama.Client, running, tiny_model: Path, tmp_path: Path) -> None:
    digest = client.create_blob(tiny_model)
    blob = tmp_path / "managed" / ".blobs" / ("sha256-" + digest[7:])
    assert blob.read_bytes() == tiny_model.read_bytes()
    base = running.url("ollama_api")
    assert httpx.head(f"{base}/api/blobs/{digest}").status_code == 200
    assert httpx.head(f"{base}/api/blobs/sha256:{'0' * 64}").status_code == 404
    bad = httpx.post(f"{base}/api/blobs/sha256:{'0' * 64}", content=b"not these bytes")
    assert bad.status_code == 400 and "digest mismatch" in bad.json()["error"]
    assert httpx.post(f"{base}/api/blobs/sha256:nothex", content=b"x").status_code == 400
    assert not list((tmp_path / "managed" / ".downloads").glob("*"))

    done = client.create("mine", files={"model.gguf": digest}, system="Answer in one word.",
                         parameters={"temperature": 0.1, "num_ctx": 256})
    assert done.status == "success"
    spec = running.host.scheduler.get("mine:latest")
    assert spec.path == str(blob) and spec.system == "Answer in one word."
    assert spec.defaults == {"temperature": 0.1} and spec.params["ctx_size"] == 256

    assert client.copy("mine", "mine-too").status == "success"
    assert client.create("terse", from_="mine", system="Be terse.").status == "success"
    names = {m.model for m in client.list().models}
    assert {"mine", "mine-too", "terse"} <= {n.removesuffix(":latest") for n in names}
    assert running.host.scheduler.get("terse").system == "Be terse."
    shown = client.show("terse")
    assert shown.details.parent_model == "mine"
    assert "temperature 0.1" in shown.parameters and "num_ctx 256" in shown.parameters
    assert httpx.post(f"{base}/api/show", json={"model": "terse"}).json()["system"] == "Be terse."
    assert running.host.scheduler.get("terse").path == str(blob)

    assert client.delete("mine").status == "success"
    assert blob.exists()  # still used by mine-too and terse
    client.delete("mine-too")
    client.delete("terse")
    assert not blob.exists()
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("mine")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.create("x", files={"model.gguf": "sha256:" + "1" * 64})
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("nothing", "y")
    assert err.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as err:
        client.copy("tiny", "../escape")
    assert err.value.status_code in (400, 404)
