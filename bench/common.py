"""Shared helpers for the benchmarks: the machine line, percentiles, a llama-host subprocess, RSS/CPU sampling.

The benchmarks start the real ``llama-host`` command (``python -m llama_host.cli serve``) in a subprocess with a
generated site file, so the host has its own process, event loop and memory figures, as a user would run it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import psutil
import yaml

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


# --- the machine --------------------------------------------------------------------------------------------------

def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {' '.join(platform.uname())} | nproc {os.cpu_count()} | {cpu_model()} | "
            f"python {platform.python_version()} | load avg {load} | "
            f"{datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")


# --- numbers ------------------------------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest-rank-interpolated percentile, ``q`` in 0..100."""
    if not values:
        return float("nan")
    data = sorted(values)
    k = (len(data) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    return percentile(list(values), 50)


def median_interval(values: list[float], level: float = 0.9, draws: int = 2000) -> tuple[float, float]:
    """A bootstrap interval of the median of ``values`` (the rounds of a run): where the median of another run of as
    many rounds would likely fall, on a machine whose speed drifts between rounds (seeded: the same values give the
    same interval)."""
    rng = random.Random(0)
    medians = sorted(median(rng.choices(values, k=len(values))) for _ in range(draws))
    tail = (1 - level) / 2
    return medians[int(tail * draws)], medians[min(int((1 - tail) * draws), draws - 1)]


def ratio_summary(ratios: list[float], target: float | None = None) -> str:
    """``median 0.740 (90% interval of the median 0.700–0.770; 14 of 20 rounds ≥ 0.70)`` for the per-round ratios
    of a run."""
    lo, hi = median_interval(ratios)
    above = f"; {sum(r >= target for r in ratios)} of {len(ratios)} rounds ≥ {target:.2f}" if target else ""
    return f"median {median(ratios):.3f} (90% interval of the median {lo:.3f}–{hi:.3f}{above})"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


# --- processes ----------------------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers 200 (a cheap blocking poll, used only outside the measured windows)."""
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before {url} answered")
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
        try:
            conn.request("GET", parts.path or "/")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.02)
    raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f}s")


def stop_process(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def host_python_info(pythonpath: str | None = None, python: str = sys.executable) -> str:
    """The host's interpreter, where its ``llama_host`` is imported from, and its HTTP stack (uvicorn's
    ``http="auto"`` picks httptools when it is installed; the event loop is the policy's)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    code = "\n".join([
        "import asyncio, importlib.util as u, importlib.metadata as m, llama_host",
        "http = 'httptools' if u.find_spec('httptools') else 'h11'",
        "loop = type(asyncio.get_event_loop_policy()).__module__.split('.')[0]",
        "where = llama_host.__file__.rsplit('/', 2)[0]",
        "v = m.version",
        "import platform",
        "print(f'python {platform.python_version()}; llama_host from {where}; '",
        "      f'uvicorn {v(\"uvicorn\")} (http: {http}, loop: {loop}); '",
        "      f'litestar {v(\"litestar\")}; aiohttp {v(\"aiohttp\")}')"])
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, env=env, cwd="/", check=False)
    return (out.stdout or out.stderr).strip()


def installed_plugins() -> list[str]:
    return sorted(ep.name for ep in entry_points(group="llama_host"))


def plugin_flags(wanted: Iterable[str], *, all_plugins: bool = False, metrics: bool | None = None) -> dict[str, Any]:
    """``plugins:`` section enabling ``wanted`` (+ metrics when asked) and disabling every other installed plugin,
    so that a half-finished plugin elsewhere in the tree cannot skew (or break) a benchmark."""
    wanted = set(wanted)
    section: dict[str, Any] = {}
    for name in installed_plugins():
        if name == "metrics" and metrics is not None:
            section[name] = {"enabled": metrics}
        elif not all_plugins and name not in wanted:
            section[name] = {"enabled": False}
    return section


@functools.cache
def keep_freed_memory() -> None:
    """Make glibc serve large blocks from the heap and keep what this process frees (``mallopt``: mmap threshold
    4 MiB, trim threshold 256 MiB, top pad 64 MiB). The load generator calls it (``bench_relay.measure``): asyncio
    reads each socket into a 256 KiB buffer, over glibc's default mmap threshold, so the benchmark's aiohttp client
    took ~2.4 page faults per request (43,200 for 18,200 requests) and 90–150 µs of CPU each, against 73–83 µs
    without the faults. The direct rate is this client's, so its speed moved every ratio (bench/README.md, "The hot
    path, sixth pass"). Servers are left as they are."""
    import ctypes

    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # malloc.h
    mallopt(m_mmap_threshold, 4 << 20)
    mallopt(m_trim_threshold, 256 << 20)
    mallopt(m_top_pad, 64 << 20)


class HostProcess:
    """``llama-host serve --config site.yaml`` in a subprocess; ``url``, ``pid``, ``rss()``, ``cpu_seconds()``.

    Like every server the benchmarks start (the fake upstream, bare llama-server, the peers), it runs in a session of
    its own, as a separately started service does and as the host starts its runners: with the kernel's autogroups
    on (``/proc/sys/kernel/sched_autogroup_enabled``) the CPU is shared between sessions first, so a server in the
    benchmark's own session would share its client's share (bench/README.md, "Sessions")."""

    def __init__(self, site: dict[str, Any], workdir: Path, pythonpath: str | None = None,
                 env: dict[str, str] | None = None, prefix: Iterable[str] = (),
                 python: str = sys.executable) -> None:
        self.site = dict(site)
        self.pythonpath = pythonpath
        self.prefix = list(prefix)  # a command the host runs under (valgrind ...)
        self.python = python
        self.env = dict(env or {})
        self.site.setdefault("host", "127.0.0.1")
        self.site.setdefault("port", free_port())
        self.site.setdefault("log_level", "warning")
        self.site.setdefault("log_dir", str(workdir / "logs"))
        self.workdir = workdir
        self.config = workdir / "site.yaml"
        self.config.write_text(yaml.safe_dump(self.site, sort_keys=False))
        self.url = f"http://127.0.0.1:{self.site['port']}"
        self.proc: subprocess.Popen | None = None
        self._ps: psutil.Process | None = None
        self.stderr_path = workdir / "host.stderr"

    def start(self, timeout: float = 60.0) -> HostProcess:
        self._stderr = self.stderr_path.open("wb")
        env = {**os.environ, **self.env}
        if self.pythonpath:  # e.g. a patched copy of llama_host to compare against the checkout
            env["PYTHONPATH"] = self.pythonpath + os.pathsep + env.get("PYTHONPATH", "")
        # cwd is the work folder, so ``-m`` imports the installed llama_host (or the one on ``pythonpath``)
        self.proc = subprocess.Popen([*self.prefix, self.python, "-m", "llama_host.cli", "serve", "--config",
                                      str(self.config)],
                                     stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=subprocess.STDOUT,
                                     cwd=str(self.workdir), env=env, start_new_session=True)
        self._ps = psutil.Process(self.proc.pid)
        try:
            wait_http(self.url + "/api/v1/health", timeout, self.proc)
        except RuntimeError:
            self.stop()
            raise RuntimeError("llama-host did not start:\n" + self.stderr_path.read_text(errors="replace")[-3000:])
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss(self) -> int:
        assert self._ps is not None
        return self._ps.memory_info().rss

    def cpu_seconds(self) -> float:
        assert self._ps is not None
        t = self._ps.cpu_times()
        return t.user + t.system

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self._stderr.close()

    def __enter__(self) -> HostProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class PeakRSS:
    """Samples a process's RSS every ``interval`` seconds in a thread while the block runs; ``.peak`` in bytes."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        self._ps = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rss-sampler")

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak = max(self.peak, self._ps.memory_info().rss)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def workdir(keep: bool = False) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="llama-host-bench-"))
    try:
        yield path
    finally:
        if not keep:
            import shutil

            shutil.rmtree(path, ignore_errors=True)
        else:
            print(f"(kept {path})")


def llama_server_binary(given: str | None = None) -> str:
    from llama_host.binaries import find_binary

    found = find_binary("llama-server", given or os.environ.get("LLAMA_SERVER"))
    if found is None:
        raise SystemExit("llama-server not found: run scripts/get-llama-server, pass --llama-server or set LLAMA_SERVER")
    return found


def tiny_model(path: Path, name: str = "tiny") -> Path:
    from llama_host.tinymodel import write_tiny_model

    return write_tiny_model(path, name=name)


def chat_body(model: str, *, stream: bool = False, max_tokens: int = 1, content: str = "Hi") -> bytes:
    import json

    return json.dumps({"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
                       "stream": stream, "temperature": 0}).encode()


# --- first replies (cold start, swap) -----------------------------------------------------------------------------

class KeptConnection:
    """A blocking HTTP/1.1 keep-alive client (cheap; used to time whole requests, not for load)."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        self.conn.request(method, path, body=body, headers=headers)
        r = self.conn.getresponse()
        return r.status, r.read()

    def close(self) -> None:
        self.conn.close()


def poll_then_request(base_url: str, body: bytes, *, poll: float, proc: subprocess.Popen | None = None,
                      timeout: float = 60.0) -> tuple[float, float]:
    """Poll ``/health`` every ``poll`` seconds (one kept connection once the port accepts) until 200, then send the
    chat request on that connection; return the ``perf_counter()`` times of the first 200 and of the complete reply."""
    import http.client

    deadline = time.monotonic() + timeout
    conn: KeptConnection | None = None
    while True:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{base_url} not healthy within {timeout:.0f}s")
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it was ready")
        try:
            if conn is None:
                conn = KeptConnection(base_url)
            status, _ = conn.request("GET", "/health")
            if status == 200:
                healthy = time.perf_counter()
                break
        except (OSError, http.client.HTTPException):
            if conn is not None:
                conn.close()
            conn = None
        time.sleep(poll)
    try:
        status, reply = conn.request("POST", "/v1/chat/completions", body)
    finally:
        conn.close()
    if status != 200:
        raise RuntimeError(f"first request failed: {status} {reply[:300]!r}")
    return healthy, time.perf_counter()


def llama_server_params(ctx_size: int, threads: int) -> dict[str, int]:
    """The model ``params`` of the benchmarks. One thread: llama.cpp's threads spin at barriers, so on a small shared
    machine a second thread waiting for a descheduled one turns a 2 ms request into 100+ ms of noise."""
    return {"ctx_size": ctx_size, "threads": threads}


def llama_server_argv(binary: str, model: Path, port: int, alias: str, ctx_size: int, threads: int = 1) -> list[str]:
    """The same command line the llama-server runtime builds for a model with :func:`llama_server_params`."""
    return [binary, "-m", str(model), "--host", "127.0.0.1", "--port", str(port), "--alias", alias,
            "--ctx-size", str(ctx_size), "--threads", str(threads)]


@dataclasses.dataclass
class BareStart:
    seconds: float  # from the start of the timed window to the complete first reply
    healthy: float  # from the start of the timed window to the first /health 200
    proc: subprocess.Popen


def bare_first_reply(binary: str, model: Path, alias: str, ctx_size: int, body: bytes, *, poll: float = 0.005,
                     before_spawn=None, threads: int = 1) -> BareStart:
    """Spawn llama-server, poll its health, send ``body``. The process is returned running (the caller stops it).
    ``before_spawn()`` runs inside the timed window (e.g. stopping the previous server, for a bare swap)."""
    port = free_port()
    t0 = time.perf_counter()
    if before_spawn is not None:
        before_spawn()
    proc = subprocess.Popen(llama_server_argv(binary, model, port, alias, ctx_size, threads), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        healthy, t1 = poll_then_request(f"http://127.0.0.1:{port}", body, poll=poll, proc=proc)
    except BaseException:
        stop_process(proc)
        raise
    return BareStart(t1 - t0, healthy - t0, proc)


def stats_line(label: str, values: list[float]) -> str:
    return (f"{label}: median {median(values) * 1e3:.1f} ms, p10 {percentile(values, 10) * 1e3:.1f}, "
            f"p90 {percentile(values, 90) * 1e3:.1f}, min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f} "
            f"(n={len(values)})")
