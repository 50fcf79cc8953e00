"""The dashboard in Chromium against the real host, the real llama-server and the tiny model."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect

from llama_host.testing import RunningHost, serve_host, tiny_site

pytestmark = [pytest.mark.browser, pytest.mark.real]

PLUGINS = ["openai_api", "llama_server", "metrics", "discovery_gguf", "dashboard"]
LOAD_TIMEOUT = 90_000  # ms: a cold llama-server start on a busy CI machine


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("discovered")


@pytest.fixture(scope="module")
def real_host(tiny_model: Path, llama_server_bin: str, models_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningHost]:
    site = tiny_site(tiny_model, llama_server_bin,
                     plugins={"llama_server": {"binary": llama_server_bin}, "discovery_gguf": {"dirs": [str(models_dir)]}})
    with serve_host(site, PLUGINS, log_dir=tmp_path_factory.mktemp("logs")) as running:
        yield running


@pytest.fixture
def url(real_host: RunningHost) -> str:
    return real_host.url("main")


def model_row(page, name: str):
    return page.locator(f'#models-body tr[data-model="{name}"]')


def test_models_table_lists_the_models_and_load_turns_them_loaded(page, url, shot) -> None:
    page.goto(url + "/")
    assert page.url == url + "/ui/"
    tiny = model_row(page, "tiny")
    expect(tiny).to_be_visible()
    expect(tiny).to_contain_text("aliases: tiny-alias")
    expect(tiny).to_contain_text("llama-server")
    expect(page.locator("#conn-text")).to_have_text("Live")
    if tiny.get_attribute("data-state") == "loaded":  # another test of this module loaded it
        page.get_by_role("button", name="Unload tiny", exact=True).click()
        expect(tiny.locator(".state")).to_have_text("unloaded", timeout=LOAD_TIMEOUT)
    page.get_by_role("button", name="Load tiny", exact=True).click()
    expect(tiny.locator(".state")).to_have_text("loaded", timeout=LOAD_TIMEOUT)
    expect(tiny).to_contain_text("pid ")
    expect(page.locator("#event-feed")).to_contain_text("tiny loaded in")
    shot("real-models")


def test_logs_show_the_runner_output(page, url, real_host, shot) -> None:
    real_host.call(real_host.host.scheduler.load("tiny"))
    page.goto(url + "/ui/#logs")
    expect(page.get_by_label("Runner", exact=True)).to_have_value("tiny")
    expect(page.locator("#logs-status")).to_contain_text("Streaming tiny")
    expect(page.locator("#log-view")).to_contain_text("llama", timeout=LOAD_TIMEOUT)
    shot("real-logs")


def test_playground_streams_a_reply_and_the_activity_table_shows_it(page, url, shot) -> None:
    page.goto(url + "/ui/#playground")
    page.get_by_label("Model", exact=True).select_option("tiny")
    page.get_by_label("Max tokens", exact=True).fill("24")
    page.get_by_label("Message", exact=True).fill("Say hello")
    page.get_by_role("button", name="Send", exact=True).click()
    reply = page.locator(".msg-assistant").last
    expect(reply.locator(".msg-stats")).to_contain_text("tokens", timeout=LOAD_TIMEOUT)
    expect(reply).not_to_have_class("msg-error")
    assert reply.locator(".msg-text").inner_text().strip()
    shot("real-playground")

    page.get_by_role("tab", name="Monitoring").click()
    first = page.locator("#activity-body tr").first
    expect(first).to_contain_text("tiny")
    expect(first).to_contain_text("openai_api")
    expect(first).to_contain_text("chat (stream)")
    expect(first.locator(".status-code")).to_have_text("200")
    expect(page.locator("#chart-grid figure:visible")).to_have_count(5)
    shot("real-monitoring")


def test_discovery_rescan_shows_the_added_model(page, url, tiny_model: Path, models_dir: Path, shot) -> None:
    page.goto(url + "/ui/#discovery")
    expect(page.locator("#discovery-intro")).to_contain_text(str(models_dir))
    shutil.copy(tiny_model, models_dir / "found-model.gguf")
    page.get_by_role("button", name="Rescan model folders").click()
    added = page.locator("#discovery-result .result-added")
    expect(added.locator("li")).to_have_count(1)
    name = added.locator("li").inner_text()
    shot("real-discovery")
    page.get_by_role("tab", name="Models").click()
    expect(model_row(page, name)).to_contain_text("discovery_gguf")
    expect(model_row(page, name)).to_contain_text("llama")  # GGUF metadata: the architecture


def test_config_shows_the_effective_config_and_plugins(page, url, shot) -> None:
    page.goto(url + "/ui/#config")
    expect(page.locator("#config-view")).to_contain_text('"max_loaded": 2')
    for name in PLUGINS:
        expect(page.locator(f'#plugins-body tr[data-plugin="{name}"] .state')).to_have_text("running")
    shot("real-config")


def test_api_key_is_asked_once_and_sent_on_every_call(page, tiny_model: Path, llama_server_bin: str,
                                                      tmp_path: Path, shot) -> None:
    site = tiny_site(tiny_model, llama_server_bin, api_keys=["s3cret-key"])
    with serve_host(site, PLUGINS, log_dir=tmp_path) as running:
        base = running.url("main")
        assert httpx.get(base + "/ui/app.js").status_code == 200  # the page itself needs no key
        assert httpx.get(base + "/api/v1/models").status_code == 401  # its data does
        page.goto(base + "/ui/")
        dialog = page.get_by_role("dialog", name="API key required")
        expect(dialog).to_be_visible()
        page.get_by_label("API key", exact=True).fill("wrong")
        page.get_by_role("button", name="Continue").click()
        expect(dialog).to_contain_text("The host refused that key")
        page.get_by_label("API key", exact=True).fill("s3cret-key")
        page.get_by_role("button", name="Continue").click()
        expect(dialog).to_be_hidden()
        expect(model_row(page, "tiny")).to_be_visible()
        expect(page.locator("#conn-text")).to_have_text("Live")  # the event stream carries the key too
        page.get_by_role("button", name="Load tiny", exact=True).click()
        expect(model_row(page, "tiny").locator(".state")).to_have_text("loaded", timeout=LOAD_TIMEOUT)
        page.reload()
        expect(model_row(page, "tiny")).to_be_visible()
        expect(dialog).to_be_hidden()
        shot("real-api-key")
