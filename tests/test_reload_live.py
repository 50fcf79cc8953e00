"""Changing the site while it runs (issue 19): the real host, built from a site file, in front of the fake llama-server.

Reloads come from POST /api/v1/reload, the watched file, SIGHUP and ``llama-host reload``; what must hold: a diff is
applied (same pid for what did not change, a restart only for runner fields, after in-flight requests), an invalid
edit keeps the running configuration and is reported everywhere, a burst of edits ends in the last valid file, no
request fails across reloads. Every wait is a bounded poll, never a sleep that a timing assertion depends on.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fake_llama_server as fake
import httpx
import msgspec
import psutil
import pytest
import yaml

from llama_host import hookimpl
from llama_host.process import free_port
from llama_host.testing import EventRecorder, RunningHost, gone, serve_host, wait_until, write_site

PLUGINS = ["openai_api", "llama_server", "remote_runtime"]
HELLO = [{"role": "user", "content": "hello"}]


Recorder = EventRecorder  # the test kit's (llama_host.testing)


class Tuner:
    """An in-process plugin with a section: ``level`` applies live, ``port`` needs a restart."""

    class Settings(msgspec.Struct, forbid_unknown_fields=True):
        level: int = 0
        port: int = 0

    def __init__(self) -> None:
        self.applied: list[int] = []

    @hookimpl
    def config_schema(self) -> dict[str, Any]:
        return msgspec.json.schema(self.Settings)

    @hookimpl
    def reconfigure(self, host: Any, old: dict[str, Any], new: dict[str, Any]) -> bool:
        if old.get("port", 0) != new.get("port", 0):
            return False
        self.applied.append(host.settings("tuner", self.Settings).level)
        return True




@pytest.fixture
def fake_bin(tmp_path: Path) -> Iterator[Path]:
    wrapper = fake.write_wrapper(tmp_path)
    yield wrapper
    leftovers = []
    for p in psutil.process_iter(["cmdline", "status"]):
        with contextlib.suppress(psutil.Error):
            if p.info["status"] != psutil.STATUS_ZOMBIE and str(wrapper) in " ".join(p.info["cmdline"] or ()):
                leftovers.append(p)
                p.kill()
    assert not leftovers, f"runner processes left behind: {[p.pid for p in leftovers]}"


@pytest.fixture
def model(tmp_path: Path, fake_bin: Path) -> Callable[..., dict[str, Any]]:
    gguf = tmp_path / "fake.gguf"
    gguf.write_bytes(b"GGUF" + bytes(60))

    def make(name: str, **extra: Any) -> dict[str, Any]:
        env = {"FAKE_STARTS_FILE": str(tmp_path / f"starts-{name}"), **extra.pop("env", {})}
        return {"path": str(gguf), "binary": str(fake_bin), "env": env, **extra}

    return make


def starts(tmp_path: Path, name: str) -> list[int]:
    return fake.read_starts(tmp_path / f"starts-{name}")


def site(tmp_path: Path, models: dict[str, Any], **more: Any) -> dict[str, Any]:
    """A site file; not watched (``watch_config: false``) where a test reads the report of its own reload."""
    return {"log_dir": str(tmp_path / "logs"), "models": models, "watch_config": False,
            "scheduler": {"max_loaded": 0, "startup_timeout": 30, "stop_grace": 2}, **more}


@contextlib.contextmanager
def hosted(tmp_path: Path, config: dict[str, Any], **kw: Any) -> Iterator[tuple[RunningHost, Path, dict[str, Any]]]:
    """The host served from ``tmp_path/site.yaml``; yields it, the file and the config as written (ports filled)."""
    path = tmp_path / "site.yaml"
    with serve_host(config, kw.pop("plugins", PLUGINS), site_file=path, **kw) as rh:
        yield rh, path, yaml.safe_load(path.read_text())


def edit(path: Path, config: dict[str, Any], change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    new = copy.deepcopy(config)
    change(new)
    write_site(path, new)
    return new


def chat(c: httpx.Client, model: str, **body: Any) -> dict[str, Any]:
    r = c.post("/v1/chat/completions", json={"model": model, "messages": HELLO, "max_tokens": 3, **body})
    assert r.status_code == 200, r.text
    return r.json()


def pid_of(c: httpx.Client, name: str) -> int | None:
    return c.get(f"/api/v1/models/{name}").json()["pid"]


def listed(c: httpx.Client) -> set[str]:
    return {m["id"] for m in c.get("/v1/models").json()["data"]}


def reload(c: httpx.Client) -> httpx.Response:
    return c.post("/api/v1/reload")


# --- the diff ------------------------------------------------------------------------------------------------------


def test_a_reload_with_nothing_changed_restarts_nothing(tmp_path, model):
    with hosted(tmp_path, site(tmp_path, {"a": model("a"), "b": model("b")})) as (rh, _path, _config), \
            rh.client(timeout=30) as c:
        chat(c, "a")
        chat(c, "b")
        pids = pid_of(c, "a"), pid_of(c, "b")
        r = reload(c)
        assert r.status_code == 200 and r.json()["ok"] and r.json()["summary"] == "nothing changed"
        chat(c, "a")
        assert (pid_of(c, "a"), pid_of(c, "b")) == pids
        assert len(starts(tmp_path, "a")) == len(starts(tmp_path, "b")) == 1
        status = c.get("/api/v1/status").json()["reload"]
        assert status["ok"] and status["trigger"] == "api" and status["needs_restart"] == []


def test_models_added_removed_and_changed_live(tmp_path, model):
    with hosted(tmp_path, site(tmp_path, {"a": model("a"), "b": model("b")})) as (rh, path, config), \
            rh.client(timeout=30) as c:
        chat(c, "a")
        chat(c, "b")
        pid_a, pid_b = pid_of(c, "a"), pid_of(c, "b")

        def change(new: dict[str, Any]) -> None:
            new["models"]["a"].update(aliases=["first"], ttl=1000, pinned=True, priority=5)
            del new["models"]["b"]
            new["models"]["c"] = model("c")

        edit(path, config, change)
        report = reload(c).json()
        assert (report["added"], report["removed"], report["changed"], report["restarted"]) == (["c"], ["b"], ["a"], [])
        assert listed(c) == {"a", "c"}
        assert chat(c, "first")["choices"][0]["message"]["content"]
        assert pid_of(c, "a") == pid_a and len(starts(tmp_path, "a")) == 1  # live: same runner
        state = c.get("/api/v1/models/a").json()
        assert (state["pinned"], state["priority"], state["aliases"]) == (True, 5, ["first"])
        assert c.get("/api/v1/models/b").status_code == 404
        wait_until(lambda: gone(pid_b),
                   "the removed model's runner to stop")
        assert chat(c, "c")["choices"]


def test_a_runner_field_restarts_after_its_in_flight_requests(tmp_path, model):
    pause = tmp_path / "pause"
    with hosted(tmp_path, site(tmp_path, {"a": model("a", env={"FAKE_PAUSE_FILE": str(pause)})})) as (
            rh, path, config), rh.client(timeout=30) as c:
        chat(c, "a")
        old_pid = pid_of(c, "a")
        pause.touch()
        chunks: list[bytes] = []
        done = threading.Event()

        def stream() -> None:
            with c.stream("POST", "/v1/chat/completions", json={"model": "a", "messages": HELLO, "max_tokens": 4,
                                                                  "stream": True}) as r:
                chunks.extend(r.iter_bytes())
            done.set()

        thread = threading.Thread(target=stream)
        thread.start()
        wait_until(lambda: b" t0" in b"".join(chunks), "the stream's first token")
        edit(path, config, lambda new: new["models"]["a"].update(params={"ctx_size": 2048}))
        report = reload(c).json()
        assert report["restarted"] == ["a"]
        assert psutil.pid_exists(old_pid) and not done.is_set()  # the stream goes on on the old runner
        with rh.client(timeout=30) as other, ThreadPoolExecutor(1) as pool:  # a new request waits for the new runner
            waiting = pool.submit(chat, other, "a")
            pause.unlink()
            thread.join(30)
            assert b"".join(chunks).count(b"data: ") >= 5 and b"[DONE]" in b"".join(chunks)
            waiting.result(30)
        assert pid_of(c, "a") != old_pid and len(starts(tmp_path, "a")) == 2
        assert c.get("/api/v1/models/a").json()["state"] == "loaded"


def test_a_removed_model_finishes_its_in_flight_requests(tmp_path, model):
    pause = tmp_path / "pause"
    models = {"a": model("a"), "b": model("b", env={"FAKE_PAUSE_FILE": str(pause)})}
    with hosted(tmp_path, site(tmp_path, models)) as (rh, path, config), rh.client(timeout=30) as c:
        pause.touch()
        chunks: list[bytes] = []

        def stream() -> None:
            with c.stream("POST", "/v1/chat/completions", json={"model": "b", "messages": HELLO, "max_tokens": 4,
                                                                  "stream": True}) as r:
                chunks.extend(r.iter_bytes())

        with ThreadPoolExecutor(1) as pool:
            done = pool.submit(stream)
            wait_until(lambda: pid_of(c, "b") and c.get("/api/v1/models/b").json()["in_flight"], "b's stream")
            pid = pid_of(c, "b")
            edit(path, config, lambda new: new["models"].pop("b"))
            assert reload(c).json()["removed"] == ["b"]
            assert listed(c) == {"a"} and c.get("/api/v1/models/b").status_code == 404
            assert psutil.pid_exists(pid) and not done.done()
            pause.unlink()
            done.result(30)
        assert b"[DONE]" in b"".join(chunks)
        wait_until(lambda: gone(pid),
                   "the removed model's runner to stop")


# --- invalid edits -------------------------------------------------------------------------------------------------


def test_an_invalid_edit_keeps_the_running_config_and_is_reported(tmp_path, model, caplog):
    recorder = Recorder()
    with hosted(tmp_path, site(tmp_path, {"a": model("a")}), extra=[("recorder", recorder)]) as (
            rh, path, config), rh.client(timeout=30) as c:
        chat(c, "a")
        pid = pid_of(c, "a")

        def break_it(new: dict[str, Any]) -> None:
            new["models"]["b"] = {"path": str(tmp_path / "nowhere.gguf"), "runtime": "nope"}
            new["scheduler"]["max_loaded"] = "many"
            new["models"]["a"]["aliases"] = ["x"]

        with caplog.at_level(logging.ERROR, logger="llama_host.reload"):
            edit(path, config, break_it)
            r = reload(c)
        assert r.status_code == 422
        problems = r.json()["problems"]
        assert any(p.startswith("scheduler.max_loaded:") for p in problems), problems
        status = c.get("/api/v1/status").json()["reload"]
        assert status["ok"] is False and status["problems"] == problems
        event = recorder.of("config_reloaded")[-1]
        assert event.ok is False and event.problems == problems
        assert "scheduler.max_loaded" in caplog.text
        assert listed(c) == {"a"} and c.get("/api/v1/models/a").json()["aliases"] == []
        assert pid_of(c, "a") == pid

        # the runtime checks of startup run too: an unknown runtime alone is refused, with its path
        edit(path, config, lambda new: new["models"].update(b={"path": "x.gguf", "runtime": "nope"}))
        problems = reload(c).json()["problems"]
        assert problems and problems[0].startswith("models.b.runtime: unknown runtime 'nope'")
        # an empty file (an editor truncating before it writes) is refused, never taken as "no models"
        path.write_text("")
        assert reload(c).status_code == 422 and listed(c) == {"a"}


# --- plugins and core keys -----------------------------------------------------------------------------------------


def test_plugin_sections_reconfigure_live_or_need_a_restart(tmp_path, model):
    tuner = Tuner()
    config = site(tmp_path, {"a": model("a")}, plugins={"tuner": {"level": 1, "port": 1}})
    with hosted(tmp_path, config, extra=[("tuner", tuner)]) as (rh, path, config), rh.client(timeout=30) as c:
        config = edit(path, config, lambda new: new["plugins"]["tuner"].update(level=2))
        report = reload(c).json()
        assert report["reconfigured"] == ["tuner"] and tuner.applied == [2] and report["needs_restart"] == []

        config = edit(path, config, lambda new: new["plugins"]["tuner"].update(port=2))
        report = reload(c).json()
        assert report["needs_restart"] == ["plugins.tuner"] and tuner.applied == [2]
        assert rh.host.settings("tuner", Tuner.Settings).port == 1  # runs with the old section

        edit(path, config, lambda new: new.update(port=free_port(), scheduler={**new["scheduler"], "ttl": 5}))
        report = reload(c).json()
        assert "port" in report["needs_restart"] and "scheduler" in report["summary"]
        assert rh.host.scheduler.settings.ttl == 5 and rh.host.site.port == config["port"]


def test_api_keys_and_browser_policy_apply_live(tmp_path, model):
    config = site(tmp_path, {"a": model("a")}, api_keys=["one"])
    with hosted(tmp_path, config) as (rh, path, config), rh.client(timeout=30) as c:
        one, two = {"Authorization": "Bearer one"}, {"Authorization": "Bearer two"}
        assert c.get("/v1/models", headers=one).status_code == 200
        assert c.get("/v1/models", headers={"Origin": "https://app.example"}).status_code == 403
        edit(path, config, lambda new: new.update(api_keys=["two"], allowed_origins=["https://app.example"]))
        assert c.post("/api/v1/reload", headers=one).status_code == 200
        assert c.get("/v1/models", headers=one).status_code == 401
        assert c.get("/v1/models", headers=two).status_code == 200
        assert c.get("/v1/models", headers={**two, "Origin": "https://app.example"}).status_code == 200


# --- filters -------------------------------------------------------------------------------------------------------


def test_filters_and_the_upstream_name_reach_the_runner(tmp_path, model):
    echo = tmp_path / "echo.jsonl"
    remote_echo = tmp_path / "remote-echo.jsonl"
    port = free_port()
    remote = subprocess.Popen([sys.executable, fake.__file__, "--port", str(port), "--alias", "upstream-name"],
                              env={**os.environ, "FAKE_ECHO_FILE": str(remote_echo)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        models = {
            "a": model("a", env={"FAKE_ECHO_FILE": str(echo)}, upstream_model="served-as",
                       filters={"strip": ["top_k", "logit_bias"], "set": {"temperature": 0.1, "seed": 7}}),
            "r": {"runtime": "remote", "url": f"http://127.0.0.1:{port}/v1", "upstream_model": "upstream-name",
                  "filters": {"strip": ["top_k"], "set": {"max_tokens": 2}}},
            "plain": model("plain", env={"FAKE_ECHO_FILE": str(echo)}),
        }
        with hosted(tmp_path, site(tmp_path, models)) as (rh, path, config), rh.client(timeout=30) as c:
            wait_until(lambda: fake_up(port), "the remote server")
            chat(c, "a", top_k=5, temperature=0.9, logit_bias={"1": 1})
            got = [json.loads(line) for line in echo.read_text().splitlines()][-1]
            assert "top_k" not in got and "logit_bias" not in got
            assert (got["temperature"], got["seed"], got["model"], got["_alias"]) == (0.1, 7, "served-as", "served-as")

            reply = chat(c, "r", top_k=5, max_tokens=9)
            got = [json.loads(line) for line in remote_echo.read_text().splitlines()][-1]
            assert "top_k" not in got and got["model"] == "upstream-name" and got["max_tokens"] == 2
            assert reply["choices"][0]["message"]["content"] == fake.reply_text(2)

            chat(c, "plain", top_k=5)  # a model without filters: the body as sent
            got = [json.loads(line) for line in echo.read_text().splitlines()][-1]
            assert got["top_k"] == 5 and got["model"] == "plain"

            # filters change live: same runner, new filters
            pid = pid_of(c, "a")
            edit(path, config, lambda new: new["models"]["a"].update(filters={"set": {"temperature": 0.5}}))
            assert reload(c).json()["changed"] == ["a"]
            chat(c, "a", top_k=5, temperature=0.9)
            got = [json.loads(line) for line in echo.read_text().splitlines()][-1]
            assert (got["temperature"], got["top_k"]) == (0.5, 5) and pid_of(c, "a") == pid
    finally:
        remote.kill()
        remote.wait(10)


def fake_up(port: int) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
    return False


def test_filters_are_validated_by_the_schema(tmp_path, model):
    from llama_host.config import load_site
    from llama_host.errors import ConfigError

    bad = {"models": {"a": {"path": "a.gguf", "filters": {"strip": "top_k", "rename": {}}}}}
    with pytest.raises(ConfigError) as err:
        load_site(None, {}, data=bad)
    assert any(p.startswith("models.a.filters.strip:") for p in err.value.problems), err.value.problems
    assert any(p.startswith("models.a.filters.rename: unknown key") for p in err.value.problems), err.value.problems


# --- triggers ------------------------------------------------------------------------------------------------------


def test_fifty_edits_in_five_seconds_end_in_the_last_valid_file(tmp_path, model):
    recorder = Recorder()
    base = site(tmp_path, {"m0": model("m0")}, watch_config=True)
    with hosted(tmp_path, base, extra=[("recorder", recorder)]) as (rh, path, config), rh.client(timeout=30) as c:
        for i in range(50):  # a model set and a ttl per edit; every fifth edit is refused
            new = copy.deepcopy(config)
            new["models"] = {f"m{j}": model(f"m{j}", ttl=i) for j in range(i % 7 + 1)}
            if i % 5 == 3:
                new["scheduler"]["max_loaded"] = "broken"
            write_site(path, new)
            time.sleep(0.1)  # the pace of the edits (50 in 5 s), not a wait for the host
        expected = {f"m{j}" for j in range(49 % 7 + 1)}

        def settled() -> bool:
            models = [m for m in c.get("/api/v1/models").json()["models"] if "@" not in m["name"]]  # not <m>@embed
            return {m["name"] for m in models} == expected and all(m["ttl"] == 49 for m in models)

        wait_until(settled, "the state of the last edit")
        wait_until(lambda: rh.host.reloader.last.ok and not rh.host.reloader._lock.locked(), "the last reload")
        assert settled() and rh.host.reloader.last.trigger == "file changed"
        assert any(not e.ok for e in recorder.of("config_reloaded")), "no refused edit was seen"


def test_requests_running_through_reloads_never_fail(tmp_path, model):
    config = site(tmp_path, {"a": model("a", env={"FAKE_CHUNK_DELAY": "0.005"})}, watch_config=True)
    with hosted(tmp_path, config) as (rh, path, config), rh.client(timeout=60) as c:
        chat(c, "a")
        stop = threading.Event()
        results: list[str] = []

        def client() -> None:
            with rh.client(timeout=60) as own:
                while not stop.is_set():
                    stream = len(results) % 2 == 0
                    try:
                        r = own.post("/v1/chat/completions", json={"model": "a", "messages": HELLO, "max_tokens": 4,
                                                                    "stream": stream})
                        ok = r.status_code == 200 and (b"[DONE]" in r.content if stream else
                                                       r.json()["choices"][0]["message"]["content"] == fake.reply_text(4))
                        results.append("ok" if ok else f"{r.status_code} {r.text[:200]}")
                    except httpx.HTTPError as exc:
                        results.append(repr(exc))

        with ThreadPoolExecutor(4) as pool:
            workers = [pool.submit(client) for _ in range(4)]
            edits = [lambda new: new["models"]["a"].update(aliases=["x"]),                   # live
                     lambda new: new["models"].update(b=model("b")),                           # added
                     lambda new: new["models"]["a"].update(params={"ctx_size": 512}),          # restarts a
                     lambda new: None,                                                         # nothing
                     lambda new: new["models"]["a"].update(env={**new["models"]["a"]["env"], "X": "1"})]  # again
            for change in edits:
                count = len(results)
                wait_until(lambda count=count: len(results) >= count + 8, "requests between two reloads")
                config = edit(path, config, change)
                assert reload(c).json()["ok"]
            wait_until(lambda: len(starts(tmp_path, "a")) == 3, "the two restarts of the model in use")
            count = len(results)
            wait_until(lambda: len(results) >= count + 8, "requests on the last runner")
            stop.set()
            for w in workers:
                w.result(60)
        failed = [r for r in results if r != "ok"]
        assert not failed and len(results) > 40, (failed[:5], len(results))


def test_sighup_and_the_cli_subcommand(tmp_path, model):
    from llama_host.testing import _fill_ports

    config = _fill_ports(site(tmp_path, {"a": model("a")}, api_keys=["k1"], watch_config=True), None)
    path = tmp_path / "site.yaml"
    write_site(path, config)
    env = dict(os.environ)
    with open(tmp_path / "host.log", "wb") as log_file:  # the host's log, for a failure's report
        proc = subprocess.Popen([sys.executable, "-m", "llama_host.cli", "serve", "--config", str(path)], env=env,
                                stdout=log_file, stderr=subprocess.STDOUT)
    headers = {"Authorization": "Bearer k1"}
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{config['port']}", headers=headers, timeout=30) as c:
            def up() -> bool:
                with contextlib.suppress(httpx.HTTPError):
                    return c.get("/api/v1/health").status_code == 200
                return False

            wait_until(up, "the host to serve", timeout=60)
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: (c.get("/api/v1/status").json()["reload"] or {}).get("trigger") == "SIGHUP",
                       "the SIGHUP reload")
            assert c.get("/api/v1/status").json()["reload"]["ok"]

            done = run_cli("reload", "--config", str(path))
            assert done.returncode == 0 and "reloaded: nothing changed" in done.stdout, done.stderr
            assert c.get("/api/v1/status").json()["reload"]["trigger"] == "api"

            done = run_cli("reload", "--config", str(path), "--pid", str(proc.pid))
            assert done.returncode == 0, done.stderr

            bad = copy.deepcopy(config)
            bad["scheduler"]["ttl"] = "long"
            # written in place (not renamed), and the watcher may see it first: both report the same problem
            path.write_text(yaml.safe_dump(bad))
            done = run_cli("reload", "--config", str(path))
            assert done.returncode == 1 and "scheduler.ttl:" in done.stderr, (done.stdout, done.stderr)
            path.write_text("port: [")
            done = run_cli("reload", "--config", str(path))
            assert done.returncode == 2 and "YAML syntax error" in done.stderr
            assert c.get("/api/v1/models/a").status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "llama_host.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.real
def test_the_upstream_name_with_the_real_llama_server(tmp_path, tiny_model, llama_server_bin):
    from llama_host.testing import tiny_site

    config = tiny_site(tiny_model, llama_server_bin, log_dir=str(tmp_path / "logs"))
    config["models"]["tiny"].update(upstream_model="served-as", filters={"strip": ["top_k"], "set": {"seed": 3}})
    with serve_host(config, ["openai_api", "llama_server"]) as rh, rh.client(timeout=60) as c:
        reply = chat(c, "tiny", top_k=4)
        assert reply["choices"][0]["message"]["content"] is not None
        cmdline = psutil.Process(pid_of(c, "tiny")).cmdline()
        assert cmdline[cmdline.index("--alias") + 1] == "served-as"
