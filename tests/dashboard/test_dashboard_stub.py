"""The dashboard in Chromium against a stub of the host's API: every panel, quickly and without llama-server."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx
import pytest
from dashboard_stub import StubHost, serve_stub
from playwright.sync_api import expect

pytestmark = pytest.mark.browser


@pytest.fixture
def stub() -> StubHost:
    return StubHost()


@pytest.fixture
def url(stub: StubHost) -> Iterator[str]:
    with serve_stub(stub) as base:
        yield base


def row(page, model: str):
    return page.locator(f'#models-body tr[data-model="{model}"]')


def test_root_redirects_and_models_table_lists_every_model(page, url, shot) -> None:
    page.goto(url + "/")
    assert page.url == url + "/ui/"
    expect(page.locator("#models-body tr")).to_have_count(6)
    expect(page.locator("#conn-text")).to_have_text("Live")
    qwen = row(page, "qwen2.5-7b-instruct")
    expect(qwen.locator(".state")).to_have_text("loaded")
    expect(qwen).to_contain_text("qwen2")  # architecture
    expect(qwen).to_contain_text("7.62B")
    expect(qwen).to_contain_text("Q4_K_M")
    expect(qwen).to_contain_text("32,768")
    expect(qwen).to_contain_text("5.4 GiB")
    expect(qwen).to_contain_text("aliases: qwen, qwen2.5")
    expect(qwen).to_contain_text(re.compile(r"unloads in \d+:\d\d"))
    expect(row(page, "old-model")).to_contain_text("missing")
    embed = row(page, "nomic-embed")  # the scheduling policy: pinned, group, priority, concurrency limit
    for tag in ("pinned", "group embedders", "priority 5", "max 4 at once"):
        expect(embed.locator(".tag", has_text=tag)).to_have_count(1)
    expect(row(page, "broken-model").locator(".state")).to_have_text("failed")
    expect(page.locator("#models-summary")).to_have_text("6 models · 1 loaded")
    shot("models")

    page.get_by_label("Filter").fill("q5_k_m")
    expect(page.locator("#models-body tr")).to_have_count(1)
    expect(page.locator("#models-summary")).to_have_text("6 models · 1 loaded · 1 shown")
    page.get_by_label("Filter").fill("")
    expect(page.locator("#models-body tr")).to_have_count(6)


def test_load_and_unload_update_the_row_live(page, url) -> None:
    page.goto(url + "/ui/")
    llama = row(page, "llama-3.2-3b")
    expect(llama.locator(".state")).to_have_text("unloaded")
    page.get_by_role("button", name="Load llama-3.2-3b", exact=True).click()
    expect(llama.locator(".state")).to_have_text("loading")
    expect(llama.locator(".state")).to_have_text("loaded")
    expect(llama).to_contain_text("pid 50012")
    expect(page.locator("#event-feed")).to_contain_text("llama-3.2-3b loaded in")
    page.get_by_role("button", name="Unload llama-3.2-3b", exact=True).click()
    expect(llama.locator(".state")).to_have_text("unloaded")
    expect(page.locator("#event-feed")).to_contain_text("llama-3.2-3b unloaded (requested)")


def test_state_changes_made_elsewhere_appear_without_reload(page, url) -> None:
    page.goto(url + "/ui/")
    expect(page.locator("#conn-text")).to_have_text("Live")
    httpx.post(url + "/api/v1/models/nomic-embed/load", timeout=10).raise_for_status()
    expect(row(page, "nomic-embed").locator(".state")).to_have_text("loaded")
    expect(page.locator("#event-feed")).to_contain_text("nomic-embed loaded")


def test_logs_button_of_a_model_opens_its_log(page, url) -> None:
    page.goto(url + "/ui/")
    page.get_by_role("button", name="Logs of broken-model").click()
    expect(page.locator("#panel-logs")).to_be_visible()
    expect(page.get_by_label("Runner", exact=True)).to_have_value("broken-model")
    expect(page.locator("#logs-status")).to_contain_text("Streaming broken-model")


def test_logs_show_history_then_live_lines(page, url, shot) -> None:
    page.goto(url + "/ui/#logs")
    expect(page.get_by_label("Runner", exact=True)).to_have_value("qwen2.5-7b-instruct")  # loaded models come first
    expect(page.locator("#log-view")).to_contain_text("starting the main loop")
    expect(page.locator("#logs-status")).to_contain_text("Streaming qwen2.5-7b-instruct")
    shot("logs")
    page.get_by_label("Runner", exact=True).select_option("llama-3.2-3b")
    expect(page.locator("#logs-status")).to_contain_text("Streaming llama-3.2-3b")
    httpx.post(url + "/api/v1/models/llama-3.2-3b/load", timeout=10).raise_for_status()
    expect(page.locator("#log-view")).to_contain_text("main: loading model 'llama-3.2-3b'")


def test_monitoring_draws_charts_and_activity(page, url, shot) -> None:
    page.goto(url + "/ui/#monitoring")
    expect(page.locator("#activity-body tr")).to_have_count(40)
    expect(page.locator("#chart-grid figure:visible")).to_have_count(5)  # the GPU chart stays hidden without GPU samples
    expect(page.locator("#chart-grid .chart-svg .line").first).to_be_visible()
    expect(page.locator(".stat").first).to_contain_text("40")
    # System and runner samples arrive on the event stream every second.
    expect(page.locator("#chart-grid figure", has_text="CPU").locator(".chart-legend")).to_contain_text("qwen2.5-7b-instruct")
    shot("monitoring")


def test_playground_streams_a_reply_and_activity_shows_it(page, url, stub, shot) -> None:
    page.goto(url + "/ui/#playground")
    page.get_by_label("Model", exact=True).select_option("llama-3.2-3b")
    page.get_by_label("Message", exact=True).fill("What is a llama?")
    page.get_by_label("Message", exact=True).press("Enter")
    reply = page.locator(".msg-assistant").last
    expect(reply.locator(".msg-text")).to_have_text("Hello from the stub host! You said: What is a llama?")
    expect(reply.locator(".msg-stats")).to_contain_text("11 tokens · 41.5 tok/s")
    assert stub.requests_seen[-1]["stream"] is True
    assert stub.requests_seen[-1]["messages"] == [{"role": "user", "content": "What is a llama?"}]
    shot("playground")

    page.get_by_role("tab", name="Monitoring").click()
    first = page.locator("#activity-body tr").first
    expect(first).to_contain_text("llama-3.2-3b")
    expect(first).to_contain_text("openai_api")
    expect(first).to_contain_text("200")


def test_discovery_rescan_shows_what_changed(page, url, shot) -> None:
    page.goto(url + "/ui/#discovery")
    page.get_by_role("button", name="Rescan model folders").click()
    result = page.locator("#discovery-result")
    expect(result.locator(".result-added")).to_contain_text("new-model")
    expect(result.locator(".result-changed")).to_contain_text("llama-3.2-3b")
    expect(result.locator(".result-missing")).to_contain_text("old-model")
    expect(result).to_contain_text("not a GGUF file")
    shot("discovery")
    page.get_by_role("tab", name="Models").click()
    expect(row(page, "new-model")).to_be_visible()


def test_config_shows_effective_config_and_plugins(page, url, shot) -> None:
    page.goto(url + "/ui/#config")
    expect(page.locator("#config-view")).to_contain_text('"max_loaded": 1')
    hello = page.locator('#plugins-body tr[data-plugin="hello"]')
    expect(hello).to_contain_text("No module named")
    expect(hello.locator(".state")).to_have_text("error")
    expect(page.locator('#plugins-body tr[data-plugin="lmstudio_api"] .state')).to_have_text("disabled")
    expect(page.locator("#listeners")).to_contain_text(":11434")
    shot("config")


def test_tabs_work_from_the_keyboard(page, url) -> None:
    page.goto(url + "/ui/")
    page.get_by_role("tab", name="Models").focus()
    page.keyboard.press("ArrowRight")
    expect(page.get_by_role("tab", name="Logs")).to_be_focused()
    expect(page.get_by_role("tab", name="Logs")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#panel-logs")).to_be_visible()
    page.keyboard.press("End")
    expect(page.get_by_role("tab", name="Playground")).to_have_attribute("aria-selected", "true")
    assert page.url.endswith("#playground")


def test_api_key_is_asked_once_and_kept_for_the_session(page, shot) -> None:
    with serve_stub(StubHost(api_keys=["sekret"])) as base:
        page.goto(base + "/ui/")
        dialog = page.get_by_role("dialog", name="API key required")
        expect(dialog).to_be_visible()
        shot("api-key")
        page.get_by_label("API key", exact=True).fill("wrong")
        page.get_by_role("button", name="Continue").click()
        expect(dialog).to_contain_text("The host refused that key")
        page.get_by_label("API key", exact=True).fill("sekret")
        page.get_by_role("button", name="Continue").click()
        expect(dialog).to_be_hidden()
        expect(page.locator("#models-body tr")).to_have_count(6)
        expect(page.locator("#conn-text")).to_have_text("Live")  # the event stream sends the key too
        page.reload()
        expect(page.locator("#models-body tr")).to_have_count(6)
        expect(dialog).to_be_hidden()
        page.get_by_role("button", name="Forget API key").click()
        expect(dialog).to_be_visible()


def test_sections_of_absent_plugins_are_hidden(page) -> None:
    with serve_stub(StubHost(metrics=False, discovery=False)) as base:
        page.goto(base + "/ui/#monitoring")
        expect(page.locator("#models-body tr")).to_have_count(6)
        expect(page.get_by_role("tab", name="Monitoring")).to_be_hidden()
        expect(page.get_by_role("tab", name="Discovery")).to_be_hidden()
        expect(page.locator("#panel-models")).to_be_visible()
        expect(page.locator("#conn-text")).to_have_text("Polling")


def test_dark_theme(browser, url, shot) -> None:
    context = browser.new_context(viewport={"width": 1440, "height": 900}, color_scheme="dark")
    try:
        page = context.new_page()
        page.goto(url + "/ui/")
        expect(page.locator("#models-body tr")).to_have_count(6)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(13, 17, 23)"
        shot("models-dark", of=page)
        page.goto(url + "/ui/#monitoring")
        expect(page.locator("#activity-body tr")).to_have_count(40)
        shot("monitoring-dark", of=page)
    finally:
        context.close()
