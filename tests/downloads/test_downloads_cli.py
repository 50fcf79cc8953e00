"""``llama-host pull``: the site's managed folder, no running host, the names kept in managed.yaml."""

from __future__ import annotations

from pathlib import Path

import yaml
from hub.names import REPO

from llama_host.testing import run_cli


def test_pull_command_downloads_into_the_managed_folder(hub, tmp_path: Path, gguf_files) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("models_dir: store\nplugins: {discovery_gguf: {dirs: []}}\n")
    out = run_cli("pull", "--config", str(site), f"hf.co/{REPO}:Q8_0", env={"HF_ENDPOINT": hub.url})
    assert out.returncode == 0, out.stderr
    target = tmp_path / "store" / REPO / "tiny-Q8_0.gguf"
    assert out.stdout.strip() == str(target)
    assert target.read_bytes() == gguf_files["tiny-Q8_0.gguf"]
    assert "downloading" in out.stderr and "(100%)" in out.stderr
    kept = yaml.safe_load((tmp_path / "managed.yaml").read_text())
    assert f"hf.co/{REPO}:Q8_0" in kept["pulled"][str(target)]["names"]
    assert yaml.safe_load(site.read_text()) == {"models_dir": "store", "plugins": {"discovery_gguf": {"dirs": []}}}
    listed = run_cli("discover", "--config", str(site))
    assert listed.returncode == 0 and "tiny-q8_0" in listed.stdout


def test_pull_command_errors(hub, tmp_path: Path) -> None:
    site = tmp_path / "site.yaml"
    site.write_text("models_dir: store\n")
    bad = run_cli("pull", "--config", str(site), "../../etc", env={"HF_ENDPOINT": hub.url})
    assert bad.returncode == 2 and "invalid model name" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("pull", "--config", str(site), "test-user/absent", env={"HF_ENDPOINT": hub.url})
    assert missing.returncode == 1 and "not found on the hub" in missing.stderr and "Traceback" not in missing.stderr
