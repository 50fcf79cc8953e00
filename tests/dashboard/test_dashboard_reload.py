"""The dashboard's reload banner in Chromium: a refused site file shows every problem, a change that needs a restart
says so, and a reload that applies everything hides the banner — live, from the host's events, without a page reload."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
import yaml
from playwright.sync_api import expect

from llama_host.testing import serve_host, write_site

pytestmark = [pytest.mark.browser]


def test_the_banner_follows_the_last_reload(page, tmp_path: Path, shot) -> None:
    site = {"models": {"a": {"runtime": "remote", "url": "http://127.0.0.1:9"}}, "watch_config": False}
    path = tmp_path / "site.yaml"
    with serve_host(site, ["openai_api", "remote_runtime", "metrics", "dashboard"], site_file=path) as running:
        url = running.url("main")
        current = yaml.safe_load(path.read_text())  # the file as served (ports filled in)

        def reload(edit: dict) -> int:
            write_site(path, edit)
            return httpx.post(url + "/api/v1/reload", timeout=30).status_code

        page.goto(url + "/ui/")
        banner = page.locator("#reload-banner")
        expect(page.locator("#conn-text")).to_have_text("Live")
        expect(banner).to_be_hidden()

        bad = {**current, "models": {"a": {**current["models"]["a"], "ttl": "soon"}}, "scheduler": {"max_loaded": "two"}}
        assert reload(bad) == 422
        expect(banner).to_be_visible()
        expect(page.locator("#reload-banner-text")).to_contain_text("refused")
        problems = page.locator("#reload-banner-problems li")
        expect(problems.filter(has_text="models.a.ttl")).to_have_count(1)
        expect(problems.filter(has_text="scheduler.max_loaded")).to_have_count(1)
        shot("reload-refused")

        assert reload({**current, "port": current["port"] + 1}) == 200
        expect(page.locator("#reload-banner-text")).to_contain_text("restart the host to apply: port")
        expect(problems).to_have_count(0)

        assert reload(current) == 200
        expect(banner).to_be_hidden()
