"""A small private network on this machine: network namespaces joined by veth pairs on one bridge.

Traffic never leaves the machine: the bridge lives in a namespace of its own (the machine's own namespace gets no
interface, address or route), the nodes have no default route and forward nothing, and the address block is one that
no interface, route or resolver of the machine uses (checked before anything is created). Every process runs inside
its node's namespace (``ip netns exec``) and binds numeric addresses (nothing there can resolve a name). Namespaces,
bridge and processes are torn down after each test, also when it fails; each test runs under an alarm.

Needs root and iproute2; skipped with the reason otherwise.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

CANDIDATE_BLOCKS = ("198.18.71.0/24", "100.64.71.0/24", "198.19.71.0/24", "172.31.251.0/24")
CLONE_NEWNET = 0x40000000
TEST_SECONDS = 240


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=check)


def machine_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network this machine's own namespace has an address or a route in, and its resolvers."""
    nets: list[ipaddress.IPv4Network] = []
    for line in _run("ip", "-4", "-o", "addr").stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            nets.append(ipaddress.ip_interface(m.group(1)).network)
    for line in _run("ip", "-4", "route", "show", "table", "all").stdout.splitlines():
        dest = line.split()[0] if line.split() else ""
        if dest in ("default", "broadcast", "local", "unreachable", "blackhole", "prohibit", "throw"):
            dest = line.split()[1] if dest != "default" and len(line.split()) > 1 else "0.0.0.0/0"
        with contextlib.suppress(ValueError):
            net = ipaddress.ip_network(dest, strict=False)
            if net.prefixlen > 0:  # the default route covers everything: that is what it is for
                nets.append(net)
    with contextlib.suppress(OSError):
        for line in Path("/etc/resolv.conf").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(parts[1]))
    return [n for n in nets if n.version == 4]


def free_block() -> ipaddress.IPv4Network:
    used = machine_networks()
    for candidate in map(ipaddress.ip_network, CANDIDATE_BLOCKS):
        if not any(candidate.overlaps(n) for n in used):
            return candidate
    pytest.skip(f"no private test block is free on this machine (used: {used})")


def _enter(ns: str) -> None:
    """In a worker thread: move the thread into namespace ``ns`` (its sockets are made there from now on)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns({ns}) failed")
    finally:
        os.close(fd)


class Node:
    def __init__(self, fabric: Fabric, name: str, ns: str, address: str) -> None:
        self.fabric, self.name, self.ns, self.address = fabric, name, ns, address
        self.procs: list[subprocess.Popen] = []
        self.dir = fabric.root / name
        self.dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, argv: list[str], log: str) -> subprocess.Popen:
        with open(self.dir / log, "wb") as out:
            proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        return proc

    def log(self, name: str) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / name).read_text(errors="replace")
        return ""

    def kill(self) -> None:
        """SIGKILL everything running in this node's namespace (as a power cut would)."""
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in _run("ip", "netns", "pids", self.ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)

    # --- llama-host nodes ---------------------------------------------------------------------------------------

    def start_host(self, site: dict[str, Any], port: int = 8000) -> LlamaHost:
        site = {"host": self.address, "port": port, "log_dir": str(self.dir / "logs"), **site}
        path = self.dir / "site.yaml"
        path.write_text(yaml.safe_dump(site))
        proc = self.spawn([sys.executable, "-m", "llama_host.cli", "--config", str(path)], "llama-host.log")
        host = LlamaHost(self, proc, f"http://{self.address}:{port}")
        host.wait_ready()
        return host

    def start_worker(self, port: int = 50052) -> str:
        """``llama-host worker`` on this node; returns its ``host:port`` once it accepts connections."""
        address = f"{self.address}:{port}"
        proc = self.spawn([sys.executable, "-m", "llama_host.cli", "worker", "--rpc-port", str(port), "--host",
                           self.address, "--threads", "1"], "worker.log")
        deadline = time.monotonic() + 30
        while not self.fabric.client(lambda: _connects(self.address, port)):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker on {self.name} did not start:\n{self.log('worker.log')[-3000:]}")
            time.sleep(0.1)
        return address


class LlamaHost:
    def __init__(self, node: Node, proc: subprocess.Popen, url: str) -> None:
        self.node, self.proc, self.url = node, proc, url

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if self.get("/api/v1/health", timeout=1).status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"llama-host on {self.node.name} did not start:\n"
                                   f"{self.node.log('llama-host.log')[-3000:]}")
            time.sleep(0.1)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.node.fabric.client(lambda: httpx.get(self.url + path, **{"timeout": 30, **kwargs}))

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.node.fabric.client(lambda: httpx.post(self.url + path, **{"timeout": 120, **kwargs}))


def _connects(host: str, port: int) -> bool:
    import socket

    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


class Fabric:
    """The namespaces of one test, on one bridge; ``client(fn)`` runs ``fn`` in a thread inside the client node."""

    def __init__(self, root: Path, block: ipaddress.IPv4Network) -> None:
        self.root = root
        self.block = block
        self.tag = f"lh{os.getpid() % 100000}"
        self.switch = f"{self.tag}sw"
        self.namespaces: list[str] = []
        self.nodes: dict[str, Node] = {}
        self._hosts = iter(block.hosts())
        next(self._hosts)  # .1 stays free (a gateway would sit there; there is none)
        self._ns(self.switch)
        _run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", self.switch, "link", "set", "br0", "up")
        self.client_node = self.add("client")
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            16, thread_name_prefix="netns-client", initializer=_enter, initargs=(self.client_node.ns,))

    def _ns(self, ns: str) -> None:
        _run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=0")

    def add(self, name: str) -> Node:
        ns = f"{self.tag}{name}"
        index = len(self.nodes)
        self._ns(ns)
        inside, outside = f"{self.tag}i{index}", f"{self.tag}o{index}"
        _run("ip", "link", "add", inside, "type", "veth", "peer", "name", outside)
        _run("ip", "link", "set", inside, "netns", ns)
        _run("ip", "link", "set", outside, "netns", self.switch)
        address = str(next(self._hosts))
        _run("ip", "-n", ns, "addr", "add", f"{address}/{self.block.prefixlen}", "dev", inside)
        _run("ip", "-n", ns, "link", "set", inside, "up")
        _run("ip", "-n", self.switch, "link", "set", outside, "master", "br0", "up")
        self._check_isolated(ns)
        node = Node(self, name, ns, address)
        self.nodes[name] = node
        return node

    def _check_isolated(self, ns: str) -> None:
        routes = _run("ip", "-n", ns, "-4", "route", "show", "table", "all").stdout
        assert "default" not in routes, routes
        for line in routes.splitlines():
            dest = line.split()[0]
            if dest in ("local", "broadcast"):
                dest = line.split()[1]
            net = ipaddress.ip_network(dest, strict=False)
            assert net.subnet_of(self.block) or net.subnet_of(ipaddress.ip_network("127.0.0.0/8")), line
        forward = _run("ip", "netns", "exec", ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
        assert forward == "0", forward

    def client(self, fn: Callable[[], Any], timeout: float = 180) -> Any:
        assert self._pool is not None
        return self._pool.submit(fn).result(timeout)

    def client_map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        assert self._pool is not None
        return [f.result(180) for f in [self._pool.submit(fn, item) for item in items]]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for node in self.nodes.values():
            node.kill()
        for ns in reversed(self.namespaces):
            _run("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


def _can_make_namespaces() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating network namespaces needs root"
    if shutil.which("ip") is None:
        return "iproute2 ('ip') is not installed"
    probe = f"lhprobe{os.getpid()}"
    r = _run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"cannot create a network namespace here: {r.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


@pytest.fixture
def fabric(tmp_path: Path) -> Iterator[Fabric]:
    reason = _can_make_namespaces()
    if reason:
        pytest.skip(reason)
    block = free_block()
    assert not any(block.overlaps(n) for n in machine_networks())
    net = Fabric(tmp_path, block)

    def expired(signum: int, frame: Any) -> None:
        raise TimeoutError(f"multinode test took longer than {TEST_SECONDS}s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_SECONDS)
    try:
        yield net
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        net.close()
        left = [ns for ns in _run("ip", "netns", "list", check=False).stdout.split() if ns.startswith(net.tag)]
        assert not left, f"namespaces left behind: {left}"
