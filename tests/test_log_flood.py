"""Runner logs cost bounded memory (issue 13, item 7).

A runner that writes 100 MiB of log lines as fast as it can keeps the host (a subprocess, measured with psutil)
within 30 MB of its idle RSS. Lines the runner's log file cannot take are dropped and counted: one summary line per
burst in the runner's log and the host's, and ``llama_host_runner_log_lines_dropped_total{model}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata as md
import logging
import re
import subprocess
import sys
import time

import httpx
import psutil
import pytest
import yaml

import fake_llama_server as fake
from llama_host import process
from llama_host.process import LogBuffer, RunnerLogFile
from llama_host.testing import serve_host

FLOOD = 100 * 2**20
SUMMARY = re.compile(r"(\d+) log lines? of this runner dropped")


def until(predicate, what: str, timeout: float = 120.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def dropped_in(lines) -> int:
    return sum(int(m.group(1)) for line in lines if (m := SUMMARY.search(line)))


def test_a_runner_flooding_its_log_keeps_the_host_within_30_mb(tmp_path):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    start = tmp_path / "flood"
    keep = ("openai_api", "llama_server", "metrics")
    port = httpx_free_port()
    site = {"port": port, "log_dir": str(tmp_path / "logs"),
            "plugins": {ep.name: {"enabled": False} for ep in md.entry_points(group="llama_host") if ep.name not in keep},
            "models": {"chatty": {"path": str(gguf), "binary": str(fake.write_wrapper(tmp_path)),
                                  "env": {"FAKE_LOG_FLOOD": str(FLOOD), "FAKE_LOG_FLOOD_FILE": str(start)}}}}
    config = tmp_path / "site.yaml"
    config.write_text(yaml.safe_dump(site), encoding="utf-8")
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "host.log").open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "llama_host.cli", "--config", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    host = psutil.Process(proc.pid)
    try:
        def healthy() -> bool:
            assert proc.poll() is None, (tmp_path / "host.log").read_text()
            with contextlib.suppress(httpx.HTTPError):
                return httpx.get(url + "/api/v1/health", timeout=2).status_code == 200
            return False

        until(healthy, "the host to answer")
        with httpx.Client(base_url=url, timeout=30) as http:
            assert http.post("/api/v1/models/chatty/load").status_code == 200
            assert http.post("/v1/chat/completions", json={"model": "chatty", "messages": [
                {"role": "user", "content": "hi"}]}).status_code == 200
            time.sleep(1.0)
            idle = max(host.memory_info().rss for _ in range(5) if time.sleep(0.05) is None)

            def logs() -> list[str]:
                return http.get("/api/v1/models/chatty/logs", params={"lines": 1000}).json()["lines"]

            start.touch()
            peak = idle
            done_at = None
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                peak = max(peak, host.memory_info().rss)
                if done_at is None and any("flood done" in line for line in logs()):
                    done_at = time.monotonic()
                if done_at is not None and time.monotonic() - done_at > 1.0:  # the last writes, the summary
                    break
                time.sleep(0.02)
            assert done_at is not None, "the flood did not end in time"
            growth = (peak - idle) / 2**20
            assert growth < 30, f"host RSS grew by {growth:.1f} MiB (idle {idle / 2**20:.0f} MiB)"

            # What was dropped is counted: the metric is the sum of the summaries in the host's log (one line each).
            # The runner's log file has them too, but the flood rotates most of it away (100 MiB in 4 x 10 MiB).
            metric = re.search(r'llama_host_runner_log_lines_dropped_total\{model="chatty"\} (\S+)',
                               http.get("/metrics").text)
            assert metric is not None
            counted = int(float(metric.group(1)))
            assert http.get("/api/v1/metrics").json()["models"]["chatty"]["log_lines_dropped"] == counted
            runner_log = (tmp_path / "logs" / "runners" / "chatty.log").read_text(errors="replace")
            assert "flood done" in runner_log
    finally:
        proc.kill()
        proc.wait(30)
        for child in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                if str(tmp_path) in " ".join(child.info["cmdline"] or ()):
                    child.kill()
    host_log = [line for line in (tmp_path / "host.log").read_text(errors="replace").splitlines() if "chatty" in line]
    assert dropped_in(host_log) == counted
    print(f"host RSS: idle {idle / 2**20:.0f} MiB, +{growth:.1f} MiB during the flood; {counted} lines dropped in "
          f"{len([line for line in host_log if SUMMARY.search(line)])} summaries")


def httpx_free_port() -> int:
    from llama_host.process import free_port

    return free_port()


async def test_lines_the_log_file_cannot_take_are_dropped_counted_and_summed_up_once(tmp_path, monkeypatch, caplog):
    real_write = RunnerLogFile._write

    def slow_write(self, text):
        time.sleep(0.05)  # a slow disk
        real_write(self, text)

    monkeypatch.setattr(RunnerLogFile, "_write", slow_write)
    buffer = LogBuffer()
    told: list[int] = []
    buffer.on_dropped = told.append
    path = tmp_path / "runners" / "m.log"
    file = RunnerLogFile(path, "m", buffer, max_pending=64 * 1024)
    total = 10_000
    for i in range(total):  # faster than any disk: nothing is awaited
        line = f"line {i:05d} " + "x" * 1000
        buffer.append(line)
        file.add(line, "2026-01-01 00:00:00,000")
    await file.flush()
    written = path.read_text().splitlines()
    kept = [line for line in written if " line " in line]
    assert 0 < len(kept) < total
    assert told == [total - len(kept)] and buffer.dropped == told[0]
    summaries = [line for line in written if SUMMARY.search(line)]
    assert len(summaries) == 1 and dropped_in(summaries) == told[0]
    assert dropped_in(buffer.lines) == told[0]
    assert sum("log lines of this runner dropped" in r.getMessage() for r in caplog.records) == 1
    # The lines kept are the first ones, whole and in order.
    assert [line.split(" ", 2)[2][:10] for line in kept] == [f"line {i:05d}" for i in range(len(kept))]


async def test_a_long_burst_is_summed_up_every_few_seconds(tmp_path, monkeypatch):
    monkeypatch.setattr(process, "DROP_SUMMARY_EVERY", 0.2)
    real_write = RunnerLogFile._write

    def slow_write(self, text):
        time.sleep(0.02)
        real_write(self, text)

    monkeypatch.setattr(RunnerLogFile, "_write", slow_write)
    buffer = LogBuffer()
    told: list[int] = []
    buffer.on_dropped = told.append
    file = RunnerLogFile(tmp_path / "m.log", "m", buffer, max_pending=4096)
    ends = time.monotonic() + 1.0
    sent = 0
    while time.monotonic() < ends:  # a steady flood with the event loop turning (the reader awaits the pipe)
        for _ in range(50):
            file.add("x" * 200, "stamp")
            sent += 1
        await asyncio.sleep(0.001)
    await file.flush()
    assert len(told) >= 2  # not one per dropped line, not only one at the very end
    kept = sum(1 for line in (tmp_path / "m.log").read_text().splitlines() if line.endswith("x" * 200))
    assert kept + sum(told) == sent


async def test_lines_that_come_while_the_file_is_idle_are_written_in_one_batch(tmp_path, monkeypatch):
    batches: list[str] = []
    real_write = RunnerLogFile._write

    def counted_write(self, text):
        batches.append(text)
        real_write(self, text)

    monkeypatch.setattr(RunnerLogFile, "_write", counted_write)
    file = RunnerLogFile(tmp_path / "m.log", "m", LogBuffer())
    for i in range(3):  # a runner's start: lines in quick succession
        file.add(f"line {i}", "stamp")
        await asyncio.sleep(0)
    while not batches:  # the timer (process.WRITE_AFTER) writes them, with nobody calling flush
        await asyncio.sleep(0.01)
    await file.flush()
    assert batches == ["stamp line 0\nstamp line 1\nstamp line 2\n"]
    assert (tmp_path / "m.log").read_text() == batches[0]


def test_a_stopped_runner_s_last_line_is_in_its_file_when_the_unload_returns(tmp_path):
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    model = {"path": str(gguf), "binary": str(fake.write_wrapper(tmp_path))}
    with serve_host({"models": {"m": model}}, ["openai_api", "llama_server"], log_dir=tmp_path / "logs") as rh, \
            rh.client(timeout=30) as http:
        assert http.post("/api/v1/models/m/load").status_code == 200
        assert http.post("/api/v1/models/m/unload").status_code == 200
        lines = (tmp_path / "logs" / "runners" / "m.log").read_text().splitlines()
        assert "stopped (exit code" in lines[-1], lines[-3:]


def test_runner_lines_over_the_limit_are_cut(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))
    model = {"path": str(gguf), "binary": str(fake.write_wrapper(tmp_path)), "env": {"FAKE_LOG_LINE_BYTES": "100000"}}
    with serve_host({"models": {"m": model}}, ["openai_api", "llama_server"], log_dir=tmp_path / "logs") as rh, \
            rh.client(timeout=30) as http:
        assert http.post("/api/v1/models/m/load").status_code == 200
        long = [line for line in rh.host.scheduler.logs("m").lines if line.startswith("xxxx")]
        assert long and all(len(line) <= process.MAX_LINE + 6 for line in long)
    until(lambda: (tmp_path / "logs" / "runners" / "m.log").exists(), "the runner log file", timeout=10)
    assert max(len(line) for line in (tmp_path / "logs" / "runners" / "m.log").read_text().splitlines()) < 9000


if sys.platform != "linux":
    pytestmark = pytest.mark.skip("psutil RSS figures and the fake runner's pipes are checked on Linux")


def test_the_metric_sums_the_dropped_lines_per_model():
    from prometheus_client import generate_latest

    from llama_host.types import RunnerLogDropped
    from llama_host_metrics.exposition import registry_for
    from llama_host_metrics.recorder import Recorder
    from llama_host_metrics.settings import Settings

    rec = Recorder(Settings())
    for n in (3, 4):
        rec.record(RunnerLogDropped(model="m", lines=n))
    text = generate_latest(registry_for(rec)).decode()
    assert 'llama_host_runner_log_lines_dropped_total{model="m"} 7.0' in text
    assert rec.summary()["models"]["m"]["log_lines_dropped"] == 7
