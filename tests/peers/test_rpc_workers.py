"""RPC workers without the real rpc-server: ``llama-host worker`` supervising a stand-in, and a model's ``rpc:``
workers (plain listening sockets: a TCP connect is all the host checks) around the fake llama-server.
tests/multinode runs the real rpc-server and llama-server across network namespaces."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llama_host.process import free_port
from llama_host.testing import serve_host
from llama_host.worker import split_address, tcp_check

sys.path.insert(0, str(Path(__file__).parents[1]))
import fake_llama_server as fake

HELLO = [{"role": "user", "content": "hi"}]
FAKE_RPC = """#!{python}
import os, socket, sys
args = sys.argv[1:]
host, port = args[args.index("--host") + 1], int(args[args.index("--port") + 1])
with open(os.environ["FAKE_RPC_PIDS"], "a") as f:
    f.write(f"{{os.getpid()}} {{' '.join(args)}}\\n")
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port))
s.listen()
print(f"listening on {{host}}:{{port}}", flush=True)
while True:
    s.accept()[0].close()
"""


def wait_for(check, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


def reachable(address: str) -> bool:
    import asyncio

    return asyncio.run(tcp_check(address, 1.0)) is None


def test_split_address():
    assert split_address("10.0.0.2:50052") == ("10.0.0.2", 50052)
    assert split_address("[fd00::2]:50052") == ("fd00::2", 50052)
    for bad in ("10.0.0.2", ":50052", "host:0", "host:port", "host:70000"):
        with pytest.raises(ValueError):
            split_address(bad)


def test_worker_restarts_its_rpc_server_and_stops_it_with_itself(tmp_path):
    script = tmp_path / "rpc-server"
    script.write_text(FAKE_RPC.format(python=sys.executable))
    script.chmod(0o755)
    pids = tmp_path / "pids"
    port = free_port()
    address = f"127.0.0.1:{port}"
    worker = subprocess.Popen([sys.executable, "-m", "llama_host.cli", "worker", "--rpc-port", str(port),
                               "--threads", "2", "--binary", str(script)],
                              env={**os.environ, "FAKE_RPC_PIDS": str(pids)}, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert wait_for(lambda: pids.exists() and reachable(address)), "the worker never listened"
        first = pids.read_text().split("\n")[0].split()
        assert first[1:] == ["--host", "127.0.0.1", "--port", str(port), "--threads", "2"]
        os.kill(int(first[0]), signal.SIGKILL)  # the rpc-server dies: the worker starts a new one
        assert wait_for(lambda: len(pids.read_text().splitlines()) == 2 and reachable(address))
        second = int(pids.read_text().splitlines()[1].split()[0])
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=20)
        assert worker.returncode == 0, err
        assert "restarting" in err and "no authentication" in err
        assert wait_for(lambda: not _alive(second), 5), "the rpc-server outlived its worker"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        for line in pids.read_text().splitlines() if pids.exists() else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(line.split()[0]), signal.SIGKILL)


def test_worker_usage_errors(tmp_path):
    def worker(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llama_host.cli", "worker", *args], capture_output=True,
                              text=True, timeout=60)

    r = worker("--rpc-port", "5", "--binary", str(tmp_path / "nothing"))
    assert r.returncode == 2 and "rpc-server not found" in r.stderr
    r = worker("--rpc-port", "5", "--host", "worker.lan")
    assert r.returncode == 2 and "not a numeric address" in r.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


class Listener:
    """A stand-in RPC worker: a listening socket (the kernel completes TCP handshakes without accept())."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listeners():
    made: list[Listener] = []

    def make() -> Listener:
        made.append(Listener())
        return made[-1]

    yield make
    for one in made:
        one.close()


def rpc_site(tmp_path, workers: list[str], failover: str = "drop") -> dict:
    binary = fake.write_wrapper(tmp_path)
    return {"log_dir": str(tmp_path / "logs"), "plugins": {"llama_server": {"binary": str(binary)}},
            "models": {"split": {"path": str(binary), "rpc": workers, "rpc_failover": failover}}}


def starts(rh) -> list[str]:
    return [line for line in rh.host.scheduler.logs("split").lines if line.startswith("starting:")]


def ask(rh) -> httpx.Response:
    return httpx.post(rh.url() + "/v1/chat/completions", timeout=30,
                      json={"model": "split", "messages": HELLO, "max_tokens": 2})


def test_a_dead_worker_fails_the_model_naming_it_and_the_next_start_drops_it(tmp_path, listeners):
    a, b = listeners(), listeners()
    with serve_host(rpc_site(tmp_path, [a.address, b.address]), ["openai_api", "llama_server"]) as rh:
        assert ask(rh).status_code == 200
        assert f"--rpc {a.address},{b.address}" in starts(rh)[-1]
        details = httpx.get(rh.url() + "/api/v1/models/split").json()["details"]
        assert [(w["address"], w["up"], w["used"]) for w in details["rpc_workers"]] == [
            (a.address, True, True), (b.address, True, True)]
        b.close()
        status = wait_for(lambda: (s := httpx.get(rh.url() + "/api/v1/models/split").json())["state"] == "failed"
                          and s)
        assert status, "the model was not marked failed"
        assert b.address in status["error"] and "unreachable" in status["error"], status["error"]
        assert ask(rh).status_code == 200  # restarted on the worker still alive
        assert f"--rpc {a.address} " in starts(rh)[-1] + " " and b.address not in starts(rh)[-1]
        workers = httpx.get(rh.url() + "/api/v1/models/split").json()["details"]["rpc_workers"]
        assert [(w["up"], w["used"]) for w in workers] == [(True, True), (False, False)]


def test_rpc_failover_fail_refuses_to_start_without_every_worker(tmp_path, listeners):
    a, b = listeners(), listeners()
    b.close()
    with serve_host(rpc_site(tmp_path, [a.address, b.address], "fail"), ["openai_api", "llama_server"]) as rh:
        r = ask(rh)
        assert r.status_code == 503, r.text
        message = r.json()["error"]["message"]
        assert "split" in message and b.address in message and a.address not in message
        assert not starts(rh)


def test_no_worker_left_is_a_clean_error(tmp_path, listeners):
    a = listeners()
    a.close()
    with serve_host(rpc_site(tmp_path, [a.address]), ["openai_api", "llama_server"]) as rh:
        r = ask(rh)
        assert r.status_code == 503 and "no worker left" in r.json()["error"]["message"]


def test_bad_rpc_addresses_and_peer_urls_are_config_errors(tmp_path):
    from llama_host.errors import ConfigError
    from llama_host.host import Host

    with pytest.raises(ConfigError) as info:
        Host.from_config(data={"log_dir": str(tmp_path), "peers": [{"url": "10.0.0.2:8000"}],
                               "models": {"m": {"path": "x.gguf", "rpc": ["10.0.0.3:50052", "10.0.0.4"]}}},
                         only=["llama_server"])
    assert info.value.problems == ["peers[0].url: '10.0.0.2:8000' is not an http:// or https:// URL",
                                   "models.m.rpc[1]: '10.0.0.4' is not host:port"]


def test_connection_states_read_from_proc_net_tcp():
    from llama_host_llama_server.rpc import connection_states

    tcp = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
           "   0: 0100007F:A000 0347120A:C544 01 00000000:00000000 00:00000000 00000000     0        0 1\n"
           "   1: 0100007F:A001 0447120A:C544 08 00000000:00000000 00:00000000 00000000     0        0 2\n")
    tcp6 = ("  sl  local_address                         remote_address                        st\n"
            "   0: 00000000000000000000000000000000:1F40 0000000000000000FFFF00000547120A:C544 01\n")
    states = connection_states([tcp, tcp6], ["10.18.71.3:50500", "10.18.71.4:50500", "10.18.71.5:50500",
                                             "10.18.71.6:50500", "worker.lan:50500"])
    assert states == {"10.18.71.3:50500": {"01"}, "10.18.71.4:50500": {"08"}, "10.18.71.5:50500": {"01"}}
