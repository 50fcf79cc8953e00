"""The sampler against real processes (psutil) and a fake nvidia-smi."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from llama_host_metrics.sampler import Sampler, parse_compute_apps, parse_gpus

GPU_CSV = "0, NVIDIA H200, 1024, 143771, 7\n1, Weird, Name, GPU, [N/A], 81920, [Not Supported]\n"
APPS_CSV = "4242, 512\n4242, 256\n99, [N/A]\n"


@pytest.fixture
def child():
    """A real runner-like process: sleeps, holds a file open."""
    proc = subprocess.Popen([sys.executable, "-c", "import sys,time; f=open(sys.argv[1]); time.sleep(60)", __file__])
    yield proc
    proc.kill()
    proc.wait()


def test_parse_gpus():
    gpus = parse_gpus(GPU_CSV)
    assert [(g.index, g.name) for g in gpus] == [(0, "NVIDIA H200"), (1, "Weird,Name,GPU")]
    assert gpus[0].memory_used == 1024 * 1024 * 1024
    assert gpus[0].utilization == 7.0
    assert gpus[1].memory_used is None
    assert gpus[1].memory_total == 81920 * 1024 * 1024
    assert gpus[1].utilization is None
    assert parse_gpus("") == []


def test_parse_compute_apps():
    assert parse_compute_apps(APPS_CSV) == {4242: 768 * 1024 * 1024}


def test_runner_sampled_then_dropped_when_gone(child):
    sampler = Sampler(gpu=False)
    system, runners = sampler.sample({"m": child.pid})
    assert system.gpus is None
    assert system.memory_total > 0
    assert system.process.pid == os.getpid()
    assert len(system.load_average) == 3
    [runner] = runners
    assert runner.model == "m" and runner.pid == child.pid
    assert runner.rss > 0
    assert runner.threads >= 1
    assert runner.cpu_percent is None  # first reading
    assert runner.fds is not None and runner.fds >= 3

    _, [runner] = sampler.sample({"m": child.pid})
    assert runner.cpu_percent is not None

    child.kill()
    child.wait()
    _, runners = sampler.sample({"m": child.pid})
    assert runners == []


def test_gpu_from_nvidia_smi(child):
    calls = []

    def fake_run(argv, **kw):
        calls.append(argv)
        out = GPU_CSV if argv[1].startswith("--query-gpu") else f"{child.pid}, 300\n"
        return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")

    sampler = Sampler(nvidia_smi="/usr/bin/nvidia-smi", run=fake_run)
    system, [runner] = sampler.sample({"m": child.pid})
    assert [g.name for g in system.gpus] == ["NVIDIA H200", "Weird,Name,GPU"]
    assert runner.gpu_memory == 300 * 1024 * 1024
    assert all(argv[0] == "/usr/bin/nvidia-smi" and argv[-1] == "--format=csv,noheader,nounits" for argv in calls)


def test_failing_nvidia_smi_leaves_gpus_out(caplog):
    def broken(argv, **kw):
        raise subprocess.CalledProcessError(9, argv)

    sampler = Sampler(nvidia_smi="/usr/bin/nvidia-smi", run=broken)
    system, _ = sampler.sample({})
    assert system.gpus is None
    sampler.sample({})
    assert len([r for r in caplog.records if "nvidia-smi" in r.message]) == 1


def test_no_nvidia_smi_or_disabled(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    assert Sampler().nvidia_smi is None
    assert Sampler(gpu=False, nvidia_smi="/x").nvidia_smi is None
