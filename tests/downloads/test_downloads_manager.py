"""The download manager against the local hub: resolution, resume, verification, storage errors, sharing, cancel."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest
from hub.names import REPO, SPLIT_REPO, files_under

from llama_host.downloads import DownloadManager
from llama_host.hub import BadModelName, parse_ref


async def _pull(manager: DownloadManager, name: str) -> dict:
    return await manager.pull(name).wait()


async def test_pull_fetches_model_and_projector_verified(hub, tmp_path: Path, gguf_files) -> None:
    manager = DownloadManager(tmp_path)
    snaps = []
    job = manager.pull(f"hf.co/{REPO}:q8_0")
    async for snap in job.follow():
        snaps.append(snap)
    await manager.close()
    final = snaps[-1]
    assert final["status"] == "success", final
    assert final["quant"] == "Q8_0"
    assert files_under(tmp_path) == ["test-user/tiny-GGUF/mmproj-tiny-f16.gguf", "test-user/tiny-GGUF/tiny-Q8_0.gguf"]
    assert (tmp_path / REPO / "tiny-Q8_0.gguf").read_bytes() == gguf_files["tiny-Q8_0.gguf"]
    assert final["path"] == str(tmp_path / REPO / "tiny-Q8_0.gguf")
    assert [f["digest"] for f in final["files"]] == [
        "sha256:" + hashlib.sha256(gguf_files[n]).hexdigest() for n in ("tiny-Q8_0.gguf", "mmproj-tiny-f16.gguf")]
    assert all(f["completed"] == f["total"] == len(gguf_files[f["name"]]) for f in final["files"])
    assert any(s["status"] == "downloading" for s in snaps)
    assert {m for m, _, _ in hub.requests} >= {"GET", "HEAD"}


async def test_default_quant_and_split_model(hub, tmp_path: Path, gguf_files) -> None:
    manager = DownloadManager(tmp_path)
    tiny = await _pull(manager, REPO)  # no quant: Q4_K_M is the default
    split = await _pull(manager, f"hf.co/{SPLIT_REPO}")
    await manager.close()
    assert tiny["status"] == "success" and tiny["quant"] == "Q4_K_M"
    assert split["status"] == "success", split
    parts = sorted(n for n in gguf_files if n.startswith("split"))
    assert len(parts) >= 2
    assert [f["name"] for f in split["files"]] == parts
    assert split["path"].endswith(parts[0])
    for name in parts:
        assert (tmp_path / SPLIT_REPO / name).read_bytes() == gguf_files[name]


async def test_interrupted_transfer_resumes_with_a_range(hub, tmp_path: Path, gguf_files) -> None:
    hub.cut_once.add("tiny-Q4_K_M.gguf")
    manager = DownloadManager(tmp_path)
    final = await _pull(manager, f"{REPO}:Q4_K_M")
    await manager.close()
    assert final["status"] == "success", final
    gets = hub.gets("tiny-Q4_K_M.gguf")
    assert len(gets) == 2
    assert "range" not in gets[0]
    start = int(gets[1]["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start < len(gguf_files["tiny-Q4_K_M.gguf"])
    assert (tmp_path / REPO / "tiny-Q4_K_M.gguf").read_bytes() == gguf_files["tiny-Q4_K_M.gguf"]


async def test_cancelled_pull_keeps_its_part_and_the_next_pull_resumes(hub, tmp_path: Path, gguf_files) -> None:
    hub.delay = 0.05
    manager = DownloadManager(tmp_path)
    job = manager.pull(f"{REPO}:Q4_K_M")
    async for snap in job.follow():
        if snap["completed"] > 0 and snap["status"] == "downloading":
            break  # the only listener leaves: the job is cancelled
    await asyncio.wait_for(job.task, 10)
    assert job.status == "cancelled"
    parts = list((tmp_path / ".downloads").glob("*.part"))
    assert len(parts) == 1 and parts[0].stat().st_size > 0
    assert not (tmp_path / REPO).exists()
    hub.delay = 0
    final = await _pull(manager, f"{REPO}:Q4_K_M")
    await manager.close()
    assert final["status"] == "success", final
    assert hub.gets("tiny-Q4_K_M.gguf")[-1].get("range", "").startswith("bytes=")
    assert (tmp_path / REPO / "tiny-Q4_K_M.gguf").read_bytes() == gguf_files["tiny-Q4_K_M.gguf"]


async def test_corrupted_download_is_rejected_and_discarded(hub, tmp_path: Path) -> None:
    hub.corrupt.add("tiny-Q4_K_M.gguf")
    manager = DownloadManager(tmp_path)
    final = await _pull(manager, f"{REPO}:Q4_K_M")
    await manager.close()
    assert final["status"] == "error"
    assert "do not match the hub's digest" in final["error"]
    assert [p for p in files_under(tmp_path) if p.endswith(".gguf")] == []
    assert list((tmp_path / ".downloads").glob("*.part")) == []


async def test_two_pulls_share_one_download(hub, tmp_path: Path) -> None:
    hub.delay = 0.02
    manager = DownloadManager(tmp_path)
    a = manager.pull(f"hf.co/{REPO}:Q4_K_M")
    b = manager.pull(f"{REPO.upper()}:q4_k_m")
    assert a is b
    first, second = await asyncio.gather(a.wait(), b.wait())
    await manager.close()
    assert first["status"] == second["status"] == "success"
    assert len(hub.gets("tiny-Q4_K_M.gguf")) == 1


async def test_disk_full_is_a_clean_error(hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1000))  # fault: the disk is full
    manager = DownloadManager(tmp_path)
    final = await _pull(manager, f"{REPO}:Q4_K_M")
    await manager.close()
    assert final["status"] == "error" and "is full" in final["error"]
    assert [p for p in files_under(tmp_path) if p.endswith(".gguf")] == []


async def test_unknown_repo_and_quant_are_client_errors(hub, tmp_path: Path) -> None:
    manager = DownloadManager(tmp_path)
    missing = manager.pull("test-user/nothing-here")
    await missing.wait()
    quant = manager.pull(f"{REPO}:Q2_K")
    await quant.wait()
    await manager.close()
    assert missing.error.status == 404 and "not found on the hub" in missing.error.message
    assert quant.error.status == 400 and "Q4_K_M" in quant.error.message and "Q8_0" in quant.error.message


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs/path", "user/../repo", "https://evil.example/u/r",
                                  "file:///etc/passwd", "u/r/extra", "~/models", "user\\repo", "u/r:../x", ""])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(BadModelName):
        parse_ref(name)


def test_names_accepted() -> None:
    assert parse_ref("hf.co/User/Repo-GGUF:Q4_K_M").name == "hf.co/User/Repo-GGUF:Q4_K_M"
    assert parse_ref("https://huggingface.co/u/r").repo == "u/r"
    assert parse_ref("u/r:latest").quant is None
    assert parse_ref("huggingface.co/u/r.v2:iq4_xs").quant == "iq4_xs"


def test_read_only_folder_is_a_clean_error(hub, tmp_path: Path) -> None:
    """A real read-only folder: as root (the CI container) the pull runs as 'nobody', who may not write there."""
    import subprocess
    import sys
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="llama-host-ro-", dir="/tmp"))
    try:
        home = base / "home"
        home.mkdir()
        home.chmod(0o777)
        folder = base / "models"
        folder.mkdir()
        folder.chmod(0o555)
        base.chmod(0o755)
        code = (f"import asyncio; from llama_host.downloads import DownloadManager\n"
                f"async def main():\n m = DownloadManager({str(folder)!r})\n"
                f" s = await m.pull({REPO + ':Q4_K_M'!r}).wait()\n await m.close(); print(s['status'], s['error'])\n"
                f"asyncio.run(main())\n")
        cmd = [sys.executable, "-c", code]
        if os.geteuid() == 0:
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             env={**os.environ, "HOME": str(home), "HF_HOME": str(home / "hf")},
                             cwd=str(Path(__file__).resolve().parents[2]))
        assert out.returncode == 0, out.stderr
        assert out.stdout.startswith("error cannot write to the managed folder"), out.stdout
        assert "read-only or not permitted" in out.stdout
        assert list(folder.iterdir()) == []
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


async def test_hf_token_is_sent_when_set(hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub.token = "hf_secret"
    manager = DownloadManager(tmp_path)
    denied = await _pull(manager, f"{REPO}:Q4_K_M")
    assert denied["status"] == "error" and "HF_TOKEN" in denied["error"]
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    final = await _pull(manager, f"{REPO}:Q4_K_M")
    await manager.close()
    assert final["status"] == "success", final
    sent = [h.get("authorization") for _, _, h in hub.requests[-4:]]
    assert sent and all(a == "Bearer hf_secret" for a in sent)


def test_a_write_that_fails_mid_file_is_a_clean_error(hub, tmp_path: Path) -> None:
    """A real failing write (a 200 KiB file-size limit in a child process: EFBIG, as a full disk gives ENOSPC):
    the pull ends with a storage error, the part file is removed and no model file appears."""
    import subprocess
    import sys

    folder = tmp_path / "models"
    code = ("import asyncio, resource, signal\n"
            "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200 * 1024, 200 * 1024))\n"
            "from llama_host.downloads import DownloadManager\n"
            "async def main():\n"
            f"    m = DownloadManager({str(folder)!r})\n"
            f"    s = await m.pull({REPO + ':Q4_K_M'!r}).wait()\n"
            "    await m.close(); print(s['status'], s['error'])\n"
            "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[2]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("error the disk of the managed folder"), out.stdout
    assert [p for p in files_under(folder)] == []
