"""Pulls through the running host: the main port's SSE download, discovery right after, names, deletion."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from hub.names import REPO, files_under

from llama_host.testing import serve_host, tiny_site


def site(tmp_path: Path, **extra) -> dict:
    return {"models_dir": str(tmp_path / "managed"), "scheduler": {"max_loaded": 1, "startup_timeout": 60},
            "plugins": {"discovery_gguf": {"dirs": []}}, **extra}


def events(response: httpx.Response) -> list[dict]:
    return [json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:")]


def test_download_streams_progress_and_the_model_is_served_at_once(hub, tmp_path: Path) -> None:
    with serve_host(site(tmp_path), plugins=["discovery_gguf", "llama_server"]) as rh, rh.client(timeout=60) as c:
        assert rh.host.scheduler.resolve(f"hf.co/{REPO}:Q4_K_M") is None
        with c.stream("POST", "/api/v1/models/download", json={"model": f"hf.co/{REPO}:Q4_K_M"}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            snaps = events(r)
        final = snaps[-1]
        assert final["status"] == "success", final
        assert snaps[0]["status"] in ("resolving", "downloading")
        assert any(s["files"] and s["files"][0]["total"] > 0 for s in snaps)
        assert final["served_as"] == "tiny-q4_k_m"
        for name in (f"hf.co/{REPO}:Q4_K_M", f"hf.co/{REPO}:q4_k_m"):
            assert rh.host.scheduler.resolve(name).name == "tiny-q4_k_m"
        listed = {m["name"]: m for m in c.get("/api/v1/models").json()["models"]}
        assert f"hf.co/{REPO}:Q4_K_M" in listed["tiny-q4_k_m"]["aliases"]
        assert listed["tiny-q4_k_m"]["path"] == str(tmp_path / "managed" / REPO / "tiny-Q4_K_M.gguf")
        assert c.get("/api/v1/downloads").json()["downloads"][0]["status"] == "success"

        gone = c.post("/api/v1/models/delete", json={"model": f"hf.co/{REPO}:Q4_K_M"})
        assert gone.status_code == 200, gone.text
        assert sorted(Path(p).name for p in gone.json()["files"]) == ["mmproj-tiny-f16.gguf", "tiny-Q4_K_M.gguf"]
        assert [p for p in files_under(tmp_path / "managed") if p.endswith(".gguf")] == []
        assert rh.host.scheduler.resolve(f"hf.co/{REPO}:Q4_K_M") is None


def test_bad_names_and_bodies_are_4xx(hub, tmp_path: Path) -> None:
    with serve_host(site(tmp_path), plugins=["discovery_gguf", "llama_server"]) as rh, rh.client(timeout=30) as c:
        for name in ("../../etc/passwd", "/etc/passwd", "http://example.com/u/r", "u/r/../../x"):
            r = c.post("/api/v1/models/download", json={"model": name, "stream": False})
            assert r.status_code == 400, (name, r.text)
            assert "error" in r.json()
        assert c.post("/api/v1/models/download", content=b"{bad").status_code == 400
        assert c.post("/api/v1/models/download", json={}).status_code == 400
        r = c.post("/api/v1/models/download", json={"model": "test-user/none", "stream": False})
        assert r.status_code == 404 and "not found on the hub" in r.text
        assert list((tmp_path / "managed").rglob("*.gguf")) == []


def test_delete_never_touches_files_outside_the_managed_folder(hub, tmp_path: Path, tiny_model: Path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "kept.gguf").write_bytes(tiny_model.read_bytes())
    cfg = site(tmp_path)
    cfg["plugins"]["discovery_gguf"]["dirs"] = [str(outside)]
    with serve_host(cfg, plugins=["discovery_gguf", "llama_server"]) as rh, rh.client(timeout=30) as c:
        assert c.get("/api/v1/models/kept").status_code == 200, c.get("/api/v1/models").json()
        r = c.post("/api/v1/models/delete", json={"model": "kept"})
        assert r.status_code == 400 and "managed folder" in r.text
        assert (outside / "kept.gguf").exists()


@pytest.mark.real
def test_pulled_model_answers_a_chat(hub, tmp_path: Path, llama_server_bin: str, tiny_model: Path) -> None:
    cfg = tiny_site(tiny_model, llama_server_bin, **site(tmp_path))
    cfg["plugins"]["llama_server"] = {"binary": llama_server_bin, "params": {"ctx_size": 512}}
    with serve_host(cfg, plugins=["discovery_gguf", "llama_server", "openai_api"]) as rh, rh.client(timeout=120) as c:
        r = c.post("/api/v1/models/download", json={"model": f"{REPO}:Q8_0", "stream": False})
        assert r.status_code == 200 and r.json()["status"] == "success", r.text
        chat = c.post("/v1/chat/completions", json={"model": f"hf.co/{REPO}:Q8_0", "max_tokens": 4,
                                                    "messages": [{"role": "user", "content": "hi"}]})
        assert chat.status_code == 200, chat.text
        assert chat.json()["choices"][0]["message"]["content"]


def test_client_disconnect_cancels_and_two_clients_share(hub, tmp_path: Path) -> None:
    import threading
    import time

    hub.delay = 0.05
    with serve_host(site(tmp_path), plugins=["discovery_gguf", "llama_server"]) as rh, rh.client(timeout=60) as c:
        with c.stream("POST", "/api/v1/models/download", json={"model": f"{REPO}:Q4_K_M"}) as r:
            for line in r.iter_lines():
                if line.startswith("data:") and json.loads(line[5:])["completed"] > 0:
                    break  # the only client goes away mid-download
        deadline = time.monotonic() + 20
        while c.get("/api/v1/downloads").json()["downloads"][0]["status"] != "cancelled":
            assert time.monotonic() < deadline, "the download was not cancelled"
            time.sleep(0.05)
        assert list((tmp_path / "managed" / ".downloads").glob("*.part"))  # kept for a resume
        assert not (tmp_path / "managed" / REPO / "tiny-Q4_K_M.gguf").exists()

        hub.delay = 0.2  # the two clients below overlap for a second or more
        finals: list[dict] = []

        def pull() -> None:
            with rh.client(timeout=60) as own, own.stream("POST", "/api/v1/models/download",
                                                         json={"model": f"hf.co/{REPO}:q4_k_m"}) as resp:
                finals.append(events(resp)[-1])

        threads = [threading.Thread(target=pull) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [f["status"] for f in finals] == ["success", "success"]
        assert finals[0]["id"] == finals[1]["id"]
        gets = hub.gets("tiny-Q4_K_M.gguf")
        assert len(gets) == 2 and gets[1]["range"].startswith("bytes=")  # the cancelled one, then one resume
