"""The runner reaper (llama_host.reaper): runners, and what they start in their process group, die with the host
however the host ends; a runner the host has forgotten is left alone; a reaper that died is replaced; a runner's end
is seen and forgotten.

The tests that kill a host run a stand-in host: a Python process that starts "runners" (each a Python process in a session of its
own that starts a child of its own, like a ``command`` runner's helper) the way ``ProcessRunner`` does, registers
them, prints the pids and waits to be killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys

import psutil
import pytest

from llama_host.testing import gone, wait_until

HOST = r"""
import json, subprocess, sys, time
from llama_host import reaper
reaper.start()
RUNNER = "import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); time.sleep(120)"
commands = sys.argv[1:]
runners = []
for command in commands:
    if command == "start":
        p = subprocess.Popen([sys.executable, "-c", RUNNER], start_new_session=True)
        reaper.watch(p.pid)
        runners.append(p)
    elif command == "forget-last":
        reaper.forget(runners[-1].pid)
    elif command == "kill-reaper":
        helper = reaper._REAPER._proc
        helper.kill()
        helper.wait()
        reaper.watch(runners[-1].pid)  # the next registration finds it gone
time.sleep(0.5)  # each runner has started its child
print(json.dumps({"runners": [p.pid for p in runners], "reaper": reaper._REAPER._proc.pid}), flush=True)
time.sleep(120)
"""


def family(pid: int) -> list[int]:
    """``pid`` and its children."""
    with contextlib.suppress(psutil.NoSuchProcess):
        return [pid, *(c.pid for c in psutil.Process(pid).children())]
    return [pid]


@contextlib.contextmanager
def stand_in_host(*commands: str):
    proc = subprocess.Popen([sys.executable, "-c", HOST, *commands], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    started: list[int] = []
    try:
        info = json.loads(proc.stdout.readline())
        started = [p for r in info["runners"] for p in family(r)]
        assert all(not gone(p) for p in started) and len(started) == 2 * len(info["runners"])
        yield proc, info
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        for pid in started:  # whatever a failed test left behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_runners_and_their_children_die_with_a_host_killed_by_sigkill():
    with stand_in_host("start", "start") as (host, info):
        pids = [p for r in info["runners"] for p in family(r)]
        host.kill()
        host.wait(10)
        wait_until(lambda: all(gone(p) for p in pids), f"runners and their children {pids} to die with the host",
                   timeout=10)
        wait_until(lambda: gone(info["reaper"]), "the reaper to exit", timeout=10)


def test_a_forgotten_runner_is_left_alone():
    with stand_in_host("start", "start", "forget-last") as (host, info):
        kept, forgotten = (family(r) for r in info["runners"])
        host.kill()
        host.wait(10)
        wait_until(lambda: all(gone(p) for p in kept), "the watched runner to die", timeout=10)
        wait_until(lambda: gone(info["reaper"]), "the reaper to exit", timeout=10)
        assert not any(gone(p) for p in forgotten)


def test_a_reaper_that_died_is_replaced_and_told_every_runner():
    with stand_in_host("start", "start", "kill-reaper") as (host, info):
        pids = [p for r in info["runners"] for p in family(r)]
        assert not gone(info["reaper"])  # the new one
        host.kill()
        host.wait(10)
        wait_until(lambda: all(gone(p) for p in pids), "every runner to die with the host", timeout=10)


def test_the_reaper_outlives_signals_sent_to_a_whole_group():
    """Ctrl-C in a terminal or a service manager's SIGTERM reach every process of a group or session: the reaper
    stays until the host's end of the pipe closes, so a host that is still stopping its runners keeps its guard."""
    with stand_in_host("start") as (host, info):
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(info["reaper"], sig)
        pids = family(info["runners"][0])
        with pytest.raises(psutil.TimeoutExpired):
            psutil.Process(info["reaper"]).wait(0.3)
        host.kill()
        host.wait(10)
        wait_until(lambda: all(gone(p) for p in pids), "the runner to die with the host", timeout=10)


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "thread"])
async def test_a_runner_s_end_is_seen_and_the_reaper_forgets_it(monkeypatch, pidfd):
    from llama_host import process, reaper

    if not pidfd:
        monkeypatch.setattr(process, "_pidfd", lambda pid: None)
    elif not hasattr(os, "pidfd_open"):
        pytest.skip("no pidfd here (Linux 5.3+)")
    popen = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"], stdout=subprocess.PIPE,
                             start_new_session=True)
    try:
        proc = process._Process(popen, asyncio.get_running_loop())
        assert popen.pid in reaper._REAPER._pids or proc.ended.is_set()
        await asyncio.wait_for(proc.ended.wait(), 30)
        assert proc.returncode == 3 and popen.pid not in reaper._REAPER._pids
    finally:
        popen.stdout.close()
