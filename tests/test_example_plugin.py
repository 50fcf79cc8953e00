"""The sample third-party plugin (examples/hello-plugin) installed as its own distribution and driven by the real CLI.

The distribution is installed with pip into a temporary folder that only the ``llama-host`` subprocesses see (through
PYTHONPATH), exactly as a user's ``pip install llama-host-hello`` would put it next to llama-host.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from llama_host.process import free_port
from llama_host.testing import run_cli

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "hello-plugin"
POISON = 'raise RuntimeError("llama_host_hello was imported")\n'


def _offline_build() -> bool:
    """Can pip build the example with the packages at hand (``--no-build-isolation``)? setuptools builds wheels
    by itself from 70.1 on; older ones need ``wheel``."""
    try:
        version = tuple(int(p) for p in md.version("setuptools").split(".")[:2])
    except (md.PackageNotFoundError, ValueError):
        return False
    return version >= (70, 1) or importlib.util.find_spec("wheel") is not None


def _pip_install(source: Path, target: Path) -> None:
    work = target.parent / "src"
    # Build from a copy: pip builds in the source tree and would leave build/ and *.egg-info in the checkout.
    shutil.copytree(source, work, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-input", "--disable-pip-version-check",
           "--quiet", "--target", str(target), str(work)]
    if _offline_build():
        cmd.insert(4, "--no-build-isolation")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"


@pytest.fixture(scope="session")
def hello_target(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the installed llama-host-hello distribution (package + dist-info with its entry point)."""
    target = tmp_path_factory.mktemp("hello") / "site"
    _pip_install(EXAMPLE, target)
    assert (target / "llama_host_hello" / "__init__.py").is_file()
    return target


@pytest.fixture(scope="session")
def poisoned_target(hello_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same installation, except that importing the plugin's package raises."""
    target = tmp_path_factory.mktemp("poisoned") / "site"
    shutil.copytree(hello_target, target)
    (target / "llama_host_hello" / "__init__.py").write_text(POISON, encoding="utf-8")
    return target


def env_for(target: Path) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(target), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def write_site(tmp_path: Path, hello: dict[str, Any] | None = None, *, models: dict[str, Any] | None = None,
               keep: tuple[str, ...] = ("openai_api",)) -> Path:
    """A site file on a free main port with only ``keep`` (and hello) among the built-in plugins enabled."""
    plugins: dict[str, Any] = {ep.name: {"enabled": False} for ep in md.entry_points(group="llama_host")
                               if ep.name not in keep and ep.name != "hello"}
    if hello is not None:
        plugins["hello"] = hello
    data = {"port": free_port(), "log_dir": str(tmp_path / "logs"), "plugins": plugins, "models": models or {}}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def serving(config: Path, target: Path, tmp_path: Path) -> Iterator[str]:
    """``llama-host --config CONFIG`` in a subprocess; yields its main URL once /api/v1/health answers."""
    url = f"http://127.0.0.1:{yaml.safe_load(config.read_text())['port']}"
    log_path = tmp_path / "host.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "llama_host.cli", "--config", str(config)],
                                env={**os.environ, **env_for(target)}, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"llama-host exited with {proc.returncode}:\n{log_path.read_text()}"
                assert time.monotonic() < deadline, f"llama-host did not become healthy:\n{log_path.read_text()}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + "/api/v1/health", timeout=2).status_code == 200:
                        break
                time.sleep(0.02)
            yield url
            proc.terminate()
            assert proc.wait(30) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)


def plugin_rows(stdout: str) -> dict[str, list[str]]:
    return {cols[0]: cols for cols in (line.split() for line in stdout.splitlines()) if cols}


# --- listed ------------------------------------------------------------------------------------------------------------


def test_plugins_command_lists_the_installed_distribution(hello_target, tmp_path):
    result = run_cli("plugins", env=env_for(hello_target))
    assert result.returncode == 0, result.stderr
    assert plugin_rows(result.stdout)["hello"] == ["hello", "llama-host-hello", "0.1.0", "yes"]

    disabled = write_site(tmp_path, {"enabled": False})
    result = run_cli("plugins", "--config", str(disabled), env=env_for(hello_target))
    assert plugin_rows(result.stdout)["hello"] == ["hello", "llama-host-hello", "0.1.0", "no"]

    without = run_cli("plugins")  # this test process's environment: the example is not installed there
    assert "hello" not in plugin_rows(without.stdout)


def test_check_shows_the_plugin_its_settings_and_its_runtime(hello_target, tmp_path):
    config = write_site(tmp_path, {"greeting": "Howdy"}, models={"parrot": {"runtime": "echo"}})
    result = run_cli("check", "--config", str(config), env=env_for(hello_target))
    assert result.returncode == 0, result.stderr
    rows = plugin_rows(result.stdout)
    assert rows["hello"] == ["hello", "llama-host-hello", "0.1.0", "enabled"]
    assert rows["echo"] == ["echo", "hello"]  # the runtimes table: name, plugin
    assert "greeting: Howdy" in result.stdout


# --- served ------------------------------------------------------------------------------------------------------------


def test_served_route_and_runtime(hello_target, tmp_path):
    config = write_site(tmp_path, {"greeting": "Howdy from YAML", "echo_prefix": "ECHO> "},
                        models={"parrot": {"runtime": "echo", "aliases": ["polly"]}}, keep=("openai_api", "metrics"))
    with serving(config, hello_target, tmp_path) as url:
        hello = httpx.get(url + "/hello", timeout=10)
        assert hello.status_code == 200
        assert hello.json() == {"greeting": "Howdy from YAML", "plugin": "hello", "version": "0.1.0",
                                "echo_models": ["parrot"]}

        with openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30) as client:
            assert "parrot" in [m.id for m in client.models.list()]
            reply = client.chat.completions.create(
                model="polly", messages=[{"role": "user", "content": "polly wants a cracker"}])
            assert reply.choices[0].message.content == "ECHO> polly wants a cracker"
            assert reply.model == "parrot"
            stream = client.chat.completions.create(
                model="parrot", stream=True, messages=[{"role": "user", "content": "say it again"}])
            assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "ECHO> say it again"

        # the plugin's own dialect, on the request primitive: streamed, in one piece, and an error in its shape
        said = httpx.post(url + "/hello/say", json={"model": "polly", "text": "a new dialect"}, timeout=30)
        assert said.status_code == 200 and said.text == "ECHO> a new dialect\n"
        with httpx.stream("POST", url + "/hello/say", json={"model": "parrot", "text": "word by word",
                                                            "stream": True}, timeout=30) as r:
            assert r.headers["content-type"].startswith("text/plain")
            parts = [chunk for chunk in r.iter_text() if chunk]
        assert "".join(parts) == "ECHO> word by word\n"
        missing = httpx.post(url + "/hello/say", json={"model": "nobody", "text": "x"}, timeout=30)
        assert missing.status_code == 404 and "nobody" in missing.json()["error"]["message"]
        assert httpx.post(url + "/hello/say", json={"text": "x"}, timeout=30).status_code == 400
        activity = httpx.get(url + "/metrics", timeout=10).text
        assert 'surface="hello"' in activity and 'endpoint="say"' in activity  # metered like any surface

        models = httpx.get(url + "/api/v1/models", timeout=10).json()["models"]
        parrot = next(m for m in models if m["name"] == "parrot")
        assert parrot["runtime"] == "echo" and parrot["state"] == "loaded"
        status = httpx.get(url + "/api/v1/status", timeout=10).json()
        hello_state = next(p for p in status["plugins"] if p["name"] == "hello")
        assert hello_state["loaded"] and hello_state["distribution"] == "llama-host-hello"


# --- configured --------------------------------------------------------------------------------------------------------


def test_settings_are_validated_by_the_plugin_schema(hello_target, tmp_path):
    config = write_site(tmp_path, {"greeting": 42, "greting": "typo"})
    result = run_cli("check", "--config", str(config), env=env_for(hello_target))
    assert result.returncode == 2
    assert "plugins.hello.greeting: 42 is not of type 'string'" in result.stderr
    assert "plugins.hello.greting: unknown key (did you mean 'greeting'?)" in result.stderr
    assert "Traceback" not in result.stderr

    served = run_cli("--config", str(config), env=env_for(hello_target), timeout=60)
    assert served.returncode == 2 and "plugins.hello.greeting" in served.stderr


def test_route_collision_with_the_core_names_both(hello_target, tmp_path):
    config = write_site(tmp_path, {"path": "/api/v1/health"})
    result = run_cli("check", "--config", str(config), env=env_for(hello_target))
    assert result.returncode == 2
    assert "GET /api/v1/health" in result.stderr
    assert "'core'" in result.stderr and "'hello'" in result.stderr
    assert "Traceback" not in result.stderr


# --- disabled ----------------------------------------------------------------------------------------------------------


def test_poisoned_copy_fails_when_enabled(poisoned_target, tmp_path):
    """The control for the next test: importing the poisoned package does fail, and the host says which plugin."""
    config = write_site(tmp_path, {})
    result = run_cli("check", "--config", str(config), env=env_for(poisoned_target))
    assert result.returncode == 2
    assert "plugin 'hello' (llama-host-hello) failed to load" in result.stderr
    assert "llama_host_hello was imported" in result.stderr


def test_enabled_false_blocks_the_plugin_before_import(poisoned_target, tmp_path):
    # Its settings may be anything: a disabled plugin's schema is unknown, and it is never imported to learn it.
    config = write_site(tmp_path, {"enabled": False, "greeting": "never read"})
    result = run_cli("check", "--config", str(config), env=env_for(poisoned_target))
    assert result.returncode == 0, result.stderr
    assert plugin_rows(result.stdout)["hello"] == ["hello", "llama-host-hello", "0.1.0", "disabled"]

    with serving(config, poisoned_target, tmp_path) as url:
        assert httpx.get(url + "/hello", timeout=10).status_code == 404
        status = httpx.get(url + "/api/v1/status", timeout=10).json()
        hello_state = next(p for p in status["plugins"] if p["name"] == "hello")
        assert (hello_state["enabled"], hello_state["loaded"], hello_state["error"]) == (False, False, None)


def test_a_model_needing_the_disabled_runtime_is_a_config_error(poisoned_target, tmp_path):
    config = write_site(tmp_path, {"enabled": False}, models={"parrot": {"runtime": "echo"}})
    result = run_cli("check", "--config", str(config), env=env_for(poisoned_target))
    assert result.returncode == 2
    assert "models.parrot.runtime: unknown runtime 'echo'" in result.stderr
