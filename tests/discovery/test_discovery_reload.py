"""An edit of ``discovered.yaml`` applies when it is saved (the file is watched), as a diff: a live change keeps the
runner, a changed flag restarts it (issue 19). The runner is the fake llama-server."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import yaml

from llama_host.atomic import write_atomic
from llama_host.testing import serve_host, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import fake_llama_server as fake




def test_an_edit_of_discovered_yaml_applies_at_once(tmp_path, gguf_files):
    models = tmp_path / "models"
    gguf_files.model(models / "first.gguf")
    state = tmp_path / "discovered.yaml"
    config = {"log_dir": str(tmp_path / "logs"), "scheduler": {"max_loaded": 1, "startup_timeout": 30},
              "plugins": {"llama_server": {"binary": str(fake.write_wrapper(tmp_path))},
                          "discovery_gguf": {"dirs": [str(models)], "state_file": str(state)}}}
    with serve_host(config, plugins=["discovery_gguf", "llama_server", "openai_api"]) as h, \
            httpx.Client(base_url=h.url(), timeout=30) as c:
        def chat(name: str) -> None:
            r = c.post("/v1/chat/completions", json={"model": name, "max_tokens": 2,
                                                     "messages": [{"role": "user", "content": "hi"}]})
            assert r.status_code == 200, r.text

        def pid() -> int | None:
            return c.get("/api/v1/models/first").json()["pid"]

        chat("first")
        started = pid()

        def edit(**fields) -> None:
            data = yaml.safe_load(state.read_text())
            data["models"]["first"].update(fields)
            write_atomic(state, yaml.safe_dump(data, sort_keys=False))

        edit(aliases=["renamed"])
        wait_until(lambda: c.get("/api/v1/models/renamed").status_code == 200, "the alias of the edit")
        chat("renamed")
        assert pid() == started  # a live change: same runner

        edit(params={"ctx_size": 512})
        edit_base = state.read_text()
        wait_until(lambda: pid() not in (started, None), "the runner's restart with the new flags")
        chat("first")

        def reload_status() -> dict:
            return c.get("/api/v1/status").json()["reload"] or {}

        edit(ttl="soon")  # an invalid value: refused, reported with its path; the model runs as it was
        refused = wait_until(lambda: (r := reload_status()).get("ok") is False and r, "the refused entry")
        assert refused["file"] == str(state) and any("models.first" in p and "ttl" in p for p in refused["problems"])
        chat("renamed")
        assert pid() not in (started, None)

        state.write_text("models: [")  # broken: reported, the models stay as they were
        wait_until(lambda: (c.get("/api/v1/discovery").json()["state_file_error"] or "").count("discovered.yaml"),
                   "the error of the broken file")
        refused = wait_until(lambda: (r := reload_status()).get("problems") != refused["problems"] and r,
                             "the refused file in the status")
        assert not refused["ok"] and "discovered.yaml" in refused["problems"][0]
        chat("renamed")

        data = yaml.safe_load(edit_base)  # fixed: the banner's report is the good one again
        write_atomic(state, yaml.safe_dump(data, sort_keys=False))
        wait_until(lambda: reload_status().get("ok") is True, "the fixed file applied")


def test_a_changed_discovery_section_applies_live(tmp_path, gguf_files):
    first, second = tmp_path / "first", tmp_path / "second"
    gguf_files.model(first / "one.gguf")
    gguf_files.model(second / "two.gguf")
    config = {"log_dir": str(tmp_path / "logs"), "watch_config": False,  # this test reads its own reload's report
              "plugins": {"discovery_gguf": {"dirs": [str(first)]}}}
    site_file = tmp_path / "site.yaml"
    with serve_host(config, plugins=["discovery_gguf", "llama_server", "openai_api"], site_file=site_file) as h, \
            httpx.Client(base_url=h.url(), timeout=30) as c:
        assert {m["id"] for m in c.get("/v1/models").json()["data"]} == {"one"}
        data = yaml.safe_load(site_file.read_text())
        data["plugins"]["discovery_gguf"]["dirs"].append(str(second))
        write_atomic(site_file, yaml.safe_dump(data))
        report = c.post("/api/v1/reload").json()
        assert report["reconfigured"] == ["discovery_gguf"] and report["needs_restart"] == []
        wait_until(lambda: {m["id"] for m in c.get("/v1/models").json()["data"]} == {"one", "two"},
                   "the model of the new folder")

        data["plugins"]["discovery_gguf"]["backups"] = 2  # not live: reported, the old value kept
        write_atomic(site_file, yaml.safe_dump(data))
        report = c.post("/api/v1/reload").json()
        assert report["needs_restart"] == ["plugins.discovery_gguf"]
