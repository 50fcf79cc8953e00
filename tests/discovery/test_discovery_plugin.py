"""The discovery_gguf plugin: its hooks on a fake host, then the real host (HTTP rescan, OpenAI surface, CLI)."""

from __future__ import annotations

import asyncio
import os
import time
from types import SimpleNamespace

import httpx
import msgspec
import pytest
import yaml

import llama_host_discovery_gguf as plugin
from llama_host.testing import run_cli, serve_host
from llama_host.types import ModelsChanged, ModelSpec

pytest.importorskip("gguf")


class FakeHost:
    """What the plugin uses of a host: settings, config_path, site, refresh_models, emit."""

    def __init__(self, settings, *, config_path=None, models=None):
        self._settings = settings
        self.config_path = config_path
        self.site = SimpleNamespace(port=8000, models=models or {})
        self.events = []
        self.models: list[ModelSpec] = []
        self.refreshes = 0

    def settings(self, name, kind):
        assert name == "discovery_gguf"
        return msgspec.convert(self._settings, kind)

    async def refresh_models(self):
        self.refreshes += 1
        self.models = plugin.discover_models(host=self)

    def emit(self, event):
        self.events.append(event)


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_config_schema():
    schema = plugin.config_schema()
    body = schema["$defs"]["Settings"] if "$defs" in schema else schema
    assert {"dirs", "max_depth", "rescan_seconds", "state_file", "params", "backups"} <= set(body["properties"])
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"dirs": [], "bogus": 1}, plugin.Settings)


def test_discover_models_outside_an_event_loop_scans_at_once(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "models" / "tiny.gguf")
    site = tmp_path / "site.yaml"
    site.write_text("{}")
    host = FakeHost({"dirs": ["models"], "params": {"ctx_size": 1024}}, config_path=site)
    specs = plugin.discover_models(host=host)
    assert [s.name for s in specs] == ["tiny"]
    (spec,) = specs
    assert spec.source == "discovery_gguf" and spec.params == {"ctx_size": 1024}
    assert spec.path == str(tmp_path / "models" / "tiny.gguf")
    assert spec.metadata["architecture"] == "llama"
    assert (tmp_path / "discovered.yaml").exists()  # next to the site file


async def test_lifespan_scans_refreshes_and_emits(tmp_path, gguf_files):
    models = tmp_path / "models"
    gguf_files.model(models / "a.gguf")
    gguf_files.model(models / "emb.gguf", embedding=True)
    gguf_files.model(models / "configured.gguf")
    state = tmp_path / "state" / "discovered.yaml"
    configured = {"mine": ModelSpec(name="mine", path=str(models / "configured.gguf"))}
    host = FakeHost({"dirs": [str(models)], "state_file": str(state)}, models=configured)
    assert plugin.discover_models(host=host) == []  # inside the loop, before the first scan
    async with plugin.lifespan(host=host):
        assert host.refreshes == 1
        by_name = {s.name: s for s in host.models}
        assert set(by_name) == {"a", "emb"}  # the configured file is not listed twice
        assert by_name["emb"].params == {"embeddings": True}
        assert host.events == [ModelsChanged(added=["a", "emb"], ts=host.events[0].ts)]

        gguf_files.model(models / "new.gguf")
        os.remove(models / "a.gguf")
        report = await plugin.discovery_of(host).rescan()
        assert report.added == ["new"] and report.missing == ["a"] and report.errors == []
        assert {s.name: s.missing for s in host.models} == {"a": True, "emb": False, "new": False}
        assert host.events[-1].added == ["new"] and host.events[-1].missing == ["a"]

        refreshes = host.refreshes
        report = await plugin.discovery_of(host).rescan()
        assert not (report.added or report.changed or report.missing) and report.read == 0
        assert host.refreshes == refreshes  # nothing changed: the host is not asked to refresh
    assert set(yaml.safe_load(state.read_text())["models"]) == {"a", "emb", "new"}


async def test_periodic_rescans(tmp_path, gguf_files):
    models = tmp_path / "models"
    models.mkdir()
    host = FakeHost({"dirs": [str(models)], "rescan_seconds": 0.05})
    async with plugin.lifespan(host=host):
        assert host.models == []
        gguf_files.model(models / "late.gguf")
        for _ in range(400):
            if host.models:
                break
            await asyncio.sleep(0.05)
        assert [s.name for s in host.models] == ["late"]


def site_config(tmp_path, models_dir, **discovery):
    return {
        "scheduler": {"max_loaded": 1, "startup_timeout": 60},
        "plugins": {"discovery_gguf": {"dirs": [str(models_dir)], "state_file": str(tmp_path / "discovered.yaml"),
                                       "params": {"ctx_size": 1024}, **discovery}},
    }


def test_running_host_rescan_over_http(tmp_path, gguf_files):
    models = tmp_path / "models"
    gguf_files.model(models / "first.gguf")
    with serve_host(site_config(tmp_path, models), plugins=["discovery_gguf", "llama_server", "openai_api"]) as h:
        main = h.url()
        rows = httpx.get(f"{main}/api/v1/models").json()["models"]
        first = next(m for m in rows if m["name"] == "first")
        assert first["source"] == "discovery_gguf"
        assert first["metadata"]["architecture"] == "llama"

        gguf_files.model(models / "dropped.gguf")
        (models / "broken.gguf").write_text("nope")
        report = httpx.post(f"{main}/api/v1/discovery/rescan").json()
        assert report["added"] == ["dropped"] and report["changed"] == [] and report["missing"] == []
        assert report["errors"] == [{"path": str(models / "broken.gguf"), "message": report["errors"][0]["message"]}]
        assert report["errors"][0]["message"].startswith("not a GGUF file")
        ids = {m["id"] for m in httpx.get(f"{main}/v1/models").json()["data"]}
        assert {"first", "dropped"} <= ids

        status = httpx.get(f"{main}/api/v1/discovery").json()
        assert status["dirs"] == [str(models)]
        assert {m["name"] for m in status["models"]} == {"first", "dropped"}
        assert status["last_scan"]["added"] == ["dropped"]


@pytest.mark.real
def test_a_dropped_model_is_served_after_a_rescan(tmp_path, gguf_files, llama_server_bin):
    openai = pytest.importorskip("openai")
    models = tmp_path / "models"
    models.mkdir()
    config = site_config(tmp_path, models)
    config["plugins"]["llama_server"] = {"binary": llama_server_bin}
    with serve_host(config, plugins=["discovery_gguf", "llama_server", "openai_api"]) as h:
        client = openai.OpenAI(base_url=h.url() + "/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == []
        gguf_files.model(models / "Fresh-Tiny.gguf")
        assert httpx.post(h.url() + "/api/v1/discovery/rescan").json()["added"] == ["fresh-tiny"]
        reply = client.chat.completions.create(model="fresh-tiny", max_tokens=8,
                                               messages=[{"role": "user", "content": "hello"}])
        assert reply.usage.completion_tokens == 8
        assert reply.choices[0].message.content.strip()


def test_cli_discover_prints_the_table(tmp_path, gguf_files):
    gguf_files.model(tmp_path / "models" / "Table-Tiny.gguf")
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump({"plugins": {"discovery_gguf": {"dirs": ["models"]}}}))
    proc = run_cli("discover", "--config", str(site))
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split()[:3] == ["name", "source", "arch"]
    row = next((r for r in rows if r.startswith("table-tiny")), None)
    assert row is not None, (proc.stdout, proc.stderr)
    assert "discovery_gguf" in row and "llama" in row and "F32" in row and "2048" in row
    assert (tmp_path / "discovered.yaml").exists()
