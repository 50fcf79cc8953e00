"""Samples of the runner processes and of the machine: psutil, and ``nvidia-smi`` when it is on PATH.

Everything here blocks (``/proc`` reads, a subprocess): the plugin calls :meth:`Sampler.sample` through
``asyncio.to_thread``, never on the event loop.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping

import msgspec
import psutil

log = logging.getLogger(__name__)

MIB = 1024 * 1024
GPU_QUERY = "index,name,memory.used,memory.total,utilization.gpu"
NVIDIA_SMI_TIMEOUT = 5.0


class RunnerSample(msgspec.Struct, kw_only=True, tag_field="kind", tag="runner"):
    """One runner process. ``cpu_percent`` is null on the first sample of a process (psutil needs two readings)."""

    model: str
    pid: int
    ts: float
    cpu_percent: float | None
    rss: int
    vms: int
    threads: int
    open_files: int | None
    fds: int | None
    gpu_memory: int | None = None


class GpuSample(msgspec.Struct, kw_only=True):
    index: int
    name: str
    memory_used: int | None
    memory_total: int | None
    utilization: float | None


class ProcessSample(msgspec.Struct, kw_only=True):
    """The llama-host process itself."""

    pid: int
    cpu_percent: float
    rss: int
    threads: int


class SystemSample(msgspec.Struct, kw_only=True, tag_field="kind", tag="system", omit_defaults=True):
    """The machine. ``gpus`` is absent when ``nvidia-smi`` is not available."""

    ts: float
    cpu_percent: float
    cpu_count: int
    memory_total: int
    memory_available: int
    memory_used: int
    memory_percent: float
    swap_used: int
    load_average: list[float]
    process: ProcessSample
    gpus: list[GpuSample] | None = None


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:  # "[N/A]", "[Not Supported]"
        return None


def parse_gpus(text: str) -> list[GpuSample]:
    """Parse ``nvidia-smi --query-gpu=index,name,memory.used,memory.total,utilization.gpu
    --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) < 5 or not parts[0].isdigit():
            continue
        # A GPU name may itself hold commas: the numbers are the last three fields.
        used, total, util = (_number(p) for p in parts[-3:])
        gpus.append(GpuSample(
            index=int(parts[0]), name=",".join(parts[1:-3]),
            memory_used=None if used is None else int(used * MIB),
            memory_total=None if total is None else int(total * MIB),
            utilization=util,
        ))
    return gpus


def parse_compute_apps(text: str) -> dict[int, int]:
    """Parse ``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``: GPU bytes by pid."""
    used: dict[int, int] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2 or not parts[0].isdigit():
            continue
        mib = _number(parts[1])
        if mib is not None:
            used[int(parts[0])] = used.get(int(parts[0]), 0) + int(mib * MIB)
    return used


Run = Callable[..., subprocess.CompletedProcess]


class Sampler:
    """Keeps the psutil handles between samples, so CPU percentages cover the time since the previous sample."""

    def __init__(self, *, gpu: bool = True, nvidia_smi: str | None = None, run: Run = subprocess.run) -> None:
        self.nvidia_smi = (nvidia_smi or shutil.which("nvidia-smi")) if gpu else None
        self._run = run
        self._procs: dict[int, psutil.Process] = {}
        self._self = psutil.Process()
        self._gpu_failed = False
        # First readings: psutil's CPU percentages compare against the previous call.
        psutil.cpu_percent(None)
        self._self.cpu_percent(None)

    def sample(self, targets: Mapping[str, int]) -> tuple[SystemSample, list[RunnerSample]]:
        """Sample the machine and each runner in ``targets`` (model name -> pid). Runners that are gone are left out."""
        now = time.time()
        gpus, gpu_by_pid = self._sample_gpus()
        runners = []
        for model, pid in targets.items():
            runner = self._sample_runner(model, pid, now, gpu_by_pid)
            if runner is not None:
                runners.append(runner)
        for pid in set(self._procs) - set(targets.values()):
            del self._procs[pid]
        return self._sample_system(now, gpus), runners

    def _sample_system(self, now: float, gpus: list[GpuSample] | None) -> SystemSample:
        mem = psutil.virtual_memory()
        me = self._self
        with me.oneshot():
            process = ProcessSample(pid=me.pid, cpu_percent=me.cpu_percent(None), rss=me.memory_info().rss,
                                    threads=me.num_threads())
        return SystemSample(
            ts=now,
            cpu_percent=psutil.cpu_percent(None),
            cpu_count=psutil.cpu_count() or 1,
            memory_total=mem.total,
            memory_available=mem.available,
            memory_used=mem.total - mem.available,
            memory_percent=mem.percent,
            swap_used=psutil.swap_memory().used,
            load_average=[round(x, 2) for x in os.getloadavg()],
            process=process,
            gpus=gpus,
        )

    def _sample_runner(self, model: str, pid: int, now: float, gpu_by_pid: dict[int, int]) -> RunnerSample | None:
        proc = self._procs.get(pid)
        first = proc is None or not proc.is_running()  # is_running() also catches a reused pid
        try:
            if proc is None or first:
                proc = self._procs[pid] = psutil.Process(pid)
            with proc.oneshot():
                cpu = proc.cpu_percent(None)
                mem = proc.memory_info()
                threads = proc.num_threads()
                try:
                    open_files: int | None = len(proc.open_files())
                    fds: int | None = proc.num_fds()
                except psutil.AccessDenied:
                    open_files = fds = None
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            self._procs.pop(pid, None)
            return None
        except psutil.AccessDenied:
            return None
        return RunnerSample(model=model, pid=pid, ts=now, cpu_percent=None if first else cpu, rss=mem.rss,
                            vms=mem.vms, threads=threads, open_files=open_files, fds=fds,
                            gpu_memory=gpu_by_pid.get(pid))

    def _sample_gpus(self) -> tuple[list[GpuSample] | None, dict[int, int]]:
        if not self.nvidia_smi:
            return None, {}
        try:
            gpus = parse_gpus(self._query(f"--query-gpu={GPU_QUERY}"))
            apps = parse_compute_apps(self._query("--query-compute-apps=pid,used_memory"))
        except (OSError, subprocess.SubprocessError) as exc:
            if not self._gpu_failed:
                log.warning("metrics: nvidia-smi failed (%s); GPU figures are left out", exc)
                self._gpu_failed = True
            return None, {}
        self._gpu_failed = False
        return gpus, apps

    def _query(self, query: str) -> str:
        assert self.nvidia_smi is not None
        done = self._run([self.nvidia_smi, query, "--format=csv,noheader,nounits"], capture_output=True, text=True,
                         timeout=NVIDIA_SMI_TIMEOUT, check=True)
        return done.stdout
