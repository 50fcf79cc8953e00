"""LM Studio's v1 download and download-status endpoints against the local hub."""

from __future__ import annotations

import time
from pathlib import Path

from hub.names import REPO

from llama_host.testing import serve_host


def test_download_job_and_status(hub, tmp_path: Path, gguf_files) -> None:
    hub.delay = 0.02
    cfg = {"models_dir": str(tmp_path / "managed"), "plugins": {"discovery_gguf": {"dirs": []}}}
    with serve_host(cfg, plugins=["discovery_gguf", "llama_server", "lmstudio_api"]) as rh, \
            rh.client("lmstudio_api", timeout=60) as c:
        r = c.post("/api/v1/models/download", json={"model": f"https://huggingface.co/{REPO}",
                                                    "quantization": "Q8_0"})
        assert r.status_code == 200, r.text
        started = r.json()
        assert started["status"] == "downloading" and started["job_id"].startswith("job_")
        size = len(gguf_files["tiny-Q8_0.gguf"]) + len(gguf_files["mmproj-tiny-f16.gguf"])
        assert started["total_size_bytes"] == size and started["started_at"].endswith("Z")
        deadline = time.monotonic() + 30
        while True:
            st = c.get(f"/api/v1/models/download/status/{started['job_id']}").json()
            if st["status"] != "downloading" or time.monotonic() > deadline:
                break
            assert 0 <= st["downloaded_bytes"] <= size
            time.sleep(0.05)
        assert st["status"] == "completed", st
        assert st["downloaded_bytes"] == size and st["completed_at"]
        assert (tmp_path / "managed" / REPO / "tiny-Q8_0.gguf").read_bytes() == gguf_files["tiny-Q8_0.gguf"]
        assert "tiny-q8_0" in {m["key"] for m in c.get("/api/v1/models").json()["models"]}
        again = c.post("/api/v1/models/download", json={"model": REPO, "quantization": "q8_0"})
        assert again.json() == {"status": "already_downloaded"}

        assert c.post("/api/v1/models/download", json={"model": "https://evil.example/u/r"}).status_code == 400
        missing = c.post("/api/v1/models/download", json={"model": "test-user/absent"})
        assert missing.status_code == 404 and missing.json()["error"]
        assert c.get("/api/v1/models/download/status/job_nope").status_code == 404
