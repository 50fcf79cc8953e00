"""The real CLI serving on free ports: health, every enabled surface's port, disabled ones closed, port in use."""

import socket
import subprocess
import sys
import time

import httpx
import pytest

from llama_host.process import free_port
from llama_host.testing import run_cli


def start_cli(config_path, *args):
    return subprocess.Popen([sys.executable, "-m", "llama_host.cli", "--config", str(config_path), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_health(port, proc, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"host exited {proc.returncode}: {proc.stderr.read()}")
        try:
            r = httpx.get(f"http://127.0.0.1:{port}/api/v1/health", timeout=1)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError("host never became healthy")


def accepts(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def ports():
    return {name: free_port() for name in ("main", "ollama", "lmstudio")}


def site(tmp_path, ports, extra=""):
    path = tmp_path / "site.yaml"
    path.write_text(f"""
port: {ports['main']}
log_dir: {tmp_path / 'logs'}
plugins:
  ollama_api: {{port: {ports['ollama']}}}
  lmstudio_api: {{port: {ports['lmstudio']}}}
  discovery_gguf: {{enabled: false}}
{extra}""")
    return path


def test_serves_every_surface_and_stops_on_sigterm(tmp_path, ports):
    proc = start_cli(site(tmp_path, ports))
    try:
        body = wait_health(ports["main"], proc).json()
        assert body["status"] == "ok"
        assert accepts(ports["ollama"]) and accepts(ports["lmstudio"])
        status = httpx.get(f"http://127.0.0.1:{ports['main']}/api/v1/status").json()
        listening = {entry["port"]: entry["surfaces"] for entry in status["listeners"]}
        assert "ollama_api" in listening[ports["ollama"]] and "openai_api" in listening[ports["ollama"]]
        # /v1 is served on the Ollama port too, as Ollama does
        assert httpx.get(f"http://127.0.0.1:{ports['ollama']}/v1/models").json()["object"] == "list"
        assert httpx.get(f"http://127.0.0.1:{ports['main']}/api/docs/openapi.json").status_code == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert (tmp_path / "logs" / "llama-host.log").exists()


def test_disabled_surface_leaves_port_closed(tmp_path, ports):
    path = site(tmp_path, ports)
    path.write_text(path.read_text().replace(f"lmstudio_api: {{port: {ports['lmstudio']}}}",
                                             f"lmstudio_api: {{port: {ports['lmstudio']}, enabled: false}}"))
    proc = start_cli(path)
    try:
        wait_health(ports["main"], proc)
        assert accepts(ports["ollama"])
        assert not accepts(ports["lmstudio"])
    finally:
        proc.terminate()
        proc.communicate(timeout=20)
    assert proc.returncode == 0


def test_port_in_use_fails_before_starting_anything(tmp_path, ports):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", ports["ollama"]))
        taken.listen()
        result = run_cli("--config", str(site(tmp_path, ports)))
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{ports['ollama']} (ollama_api" in result.stderr
    assert "already in use" in result.stderr and "Traceback" not in result.stderr


def test_two_surfaces_on_one_port_collide(tmp_path, ports):
    path = site(tmp_path, {**ports, "lmstudio": ports["main"]})
    result = run_cli("--config", str(path))
    assert result.returncode == 2
    assert "route collision" in result.stderr and "GET /api/v1/models" in result.stderr
    assert "'core' and 'lmstudio_api'" in result.stderr


def test_api_keys_guard_every_listener(tmp_path, ports):
    proc = start_cli(site(tmp_path, ports, "api_keys: [k1]\n"))
    try:
        wait_health(ports["main"], proc)  # health stays public
        main = f"http://127.0.0.1:{ports['main']}"
        r = httpx.get(main + "/v1/models")
        assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
        assert httpx.get(main + "/v1/models", headers={"Authorization": "Bearer k1"}).status_code == 200
        r = httpx.get(f"http://127.0.0.1:{ports['ollama']}/api/tags")
        assert r.status_code == 401 and isinstance(r.json()["error"], str)  # Ollama's dialect
        assert httpx.get(f"http://127.0.0.1:{ports['ollama']}/api/tags",
                         headers={"Authorization": "Bearer k1"}).status_code == 200
        r = httpx.get(f"http://127.0.0.1:{ports['lmstudio']}/api/v0/models", headers={"Authorization": "Bearer no"})
        assert r.status_code == 401
    finally:
        proc.terminate()
        proc.communicate(timeout=20)


def test_sigterm_ends_live_streams_at_once(tmp_path, ports):
    """Open event and log streams end when stopping begins: they do not hold the shutdown for shutdown_grace."""
    path = site(tmp_path, ports, "shutdown_grace: 60\nmodels:\n  m: {path: nowhere.gguf}\n")
    proc = start_cli(path)
    main = f"http://127.0.0.1:{ports['main']}"
    try:
        wait_health(ports["main"], proc)
        with httpx.stream("GET", main + "/api/v1/events", timeout=30) as events, \
                httpx.stream("GET", main + "/api/v1/models/m/logs/stream", timeout=30) as logs:
            assert events.status_code == 200 and logs.status_code == 200
            proc.terminate()
            out, err = proc.communicate(timeout=20)  # far below shutdown_grace
            assert list(events.iter_lines()) is not None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err


def test_serving_process_raises_gc_thresholds_and_freezes_startup_objects(tmp_path, ports):
    """The served process itself (not a test's in-process host): its collector settings once it answers."""
    probe = f"""
import gc, os, signal, sys, threading, time, httpx
from llama_host.cli import main
def look():
    while True:
        try:
            if httpx.get("http://127.0.0.1:{ports['main']}/api/v1/health", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    time.sleep(0.2)  # the ready callback runs once every listener answers
    print("GC", *gc.get_threshold(), gc.get_freeze_count(), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=look, daemon=True).start()
sys.exit(main(["serve", "--config", {str(site(tmp_path, ports))!r}]))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("GC "))
    first, second, third, frozen = map(int, line.split()[1:])
    from llama_host.serve import GC_THRESHOLDS
    assert (first, second, third) == GC_THRESHOLDS and first > 700
    assert frozen > 10_000  # modules, classes, plugins and config: out of every later collection's reach
