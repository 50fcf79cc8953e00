"""The dashboard's download form in Chromium: progress bars while a model comes from the (local) hub, then the
model in the table; a bad name shows the host's message."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from llama_host.testing import RunningHost, serve_host

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hub.server import Hub, HubServer

pytestmark = [pytest.mark.browser]
REPO = "test-user/tiny-GGUF"


@pytest.fixture
def hosted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RunningHost, Hub]]:
    from llama_host.tinymodel import write_tiny_model

    hub = Hub(delay=0.15)  # slow enough to see the bars move
    hub.add(REPO, {"tiny-Q4_K_M.gguf": write_tiny_model(tmp_path / "t.gguf", name="dl").read_bytes(),
                   "mmproj-tiny-f16.gguf": write_tiny_model(tmp_path / "p.gguf", name="proj", seed=5).read_bytes()})
    with HubServer(hub) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        site = {"models_dir": str(tmp_path / "managed"), "plugins": {"discovery_gguf": {"dirs": []}}}
        with serve_host(site, ["llama_server", "discovery_gguf", "dashboard"]) as running:
            yield running, hub


def test_download_form_shows_progress_and_the_model_arrives(page, hosted, shot) -> None:
    running, hub = hosted
    page.goto(running.url() + "/ui/")
    page.get_by_label("Model to download").fill(f"hf.co/{REPO}:Q4_K_M")
    page.get_by_role("button", name="Download", exact=True).click()
    item = page.locator("#downloads li.download").first
    expect(item).to_contain_text(f"hf.co/{REPO}:Q4_K_M")
    expect(item.get_by_role("progressbar", name=f"Download of hf.co/{REPO}:Q4_K_M")).to_be_visible()
    expect(item.get_by_role("progressbar", name="tiny-Q4_K_M.gguf")).to_be_visible()
    expect(item).to_have_attribute("data-status", "downloading")
    shot("downloads-progress")
    expect(item).to_have_attribute("data-status", "success", timeout=30_000)
    expect(item).to_contain_text("served as tiny-q4_k_m")
    bar = item.get_by_role("progressbar", name=f"Download of hf.co/{REPO}:Q4_K_M")
    assert bar.get_attribute("value") == bar.get_attribute("max")
    expect(page.locator('#models-body tr[data-model="tiny-q4_k_m"]')).to_be_visible()
    shot("downloads-done")

    page.get_by_label("Model to download").fill("../../etc/passwd")
    page.get_by_role("button", name="Download", exact=True).click()
    expect(page.locator("#download-error")).to_contain_text("invalid model name")
