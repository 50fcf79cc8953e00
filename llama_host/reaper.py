"""Runners die with the host, however the host ends (SIGKILL and the OOM killer included).

A small helper process (``python -I -S -c``, started with the host) holds the read end of a pipe of which only the
host holds the write end. The host writes each runner's pid as the runner starts (:func:`watch`) and ``-pid`` once it
has ended (:func:`forget`). When the pipe comes to its end, the host has exited: the helper kills the process group of
every runner still watched and exits. On Linux it holds a pidfd for each runner, so it signals only a group whose
leader is still the runner it was told about, never one that reused its number.

This replaces ``setpriv --pdeathsig KILL`` in front of each runner: one exec of a dynamic binary less per start (about
1.3 ms of a cold start here: bench/README.md, "Cold start, seventh pass"), and it also covers what a runner starts
itself in its process group, which ``PR_SET_PDEATHSIG`` did not.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import logging
import os
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

#: the helper; it ignores the signals a terminal or a service manager sends to a whole group or session, so that it
#: lives exactly as long as the host's end of the pipe
HELPER = r"""
import os, signal
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(s, signal.SIG_IGN)
pidfd_open = getattr(os, "pidfd_open", None)
watched = {}
rest = b""
while True:
    data = os.read(0, 4096)
    if not data:
        break
    *lines, rest = (rest + data).split(b"\n")
    for line in lines:
        pid = int(line)
        if pid > 0:
            try:
                watched[pid] = pidfd_open(pid) if pidfd_open else None
            except OSError:
                pass
        else:
            fd = watched.pop(-pid, None)
            if fd is not None:
                os.close(fd)
for pid, fd in watched.items():
    try:
        if fd is not None:
            signal.pidfd_send_signal(fd, 0)
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass
"""

#: shown by ``ps``: the helper's last argument
TITLE = "llama-host: runner reaper (kills the host's runners when the host exits)"


class Reaper:
    """The host's side: the helper process and the pids it watches (see the module's docstring)."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._pipe: int | None = None
        self._pids: set[int] = set()
        self._lock = threading.Lock()  # forget() may come from a runner's waiting thread

    def start(self) -> None:
        """Start the helper now (else the first :func:`watch` does), so that no runner's start waits for it."""
        with self._lock:
            if self._pipe is None or (self._proc is not None and self._proc.poll() is not None):
                self._start()

    def watch(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)
            self._send(f"{pid}\n")

    def forget(self, pid: int) -> None:
        with self._lock:
            if pid in self._pids:
                self._pids.discard(pid)
                self._send(f"-{pid}\n")

    def _send(self, line: str) -> None:
        if self._pipe is None:
            self._start()  # sends every watched pid
            return
        try:
            os.write(self._pipe, line.encode())
        except BlockingIOError:  # 64 KiB unread: the helper is stopped (SIGSTOP); it reads again once resumed
            log.warning("the runner reaper (pid %s) is not reading: pid %s not registered", self._proc and
                        self._proc.pid, line.strip())
        except OSError as exc:  # EPIPE: the helper is gone; a new one gets every watched pid
            log.warning("the runner reaper (pid %s) is gone (%s); starting a new one",
                        self._proc and self._proc.pid, errno.errorcode.get(exc.errno or 0, exc))
            self._start()

    def _start(self) -> None:
        self._close()
        read, write = os.pipe()
        try:
            self._proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", HELPER, TITLE], stdin=read,
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          start_new_session=True)
        except OSError as exc:
            os.close(write)
            log.error("cannot start the runner reaper: %s; runners may outlive a host that is killed", exc)
            return
        finally:
            os.close(read)
        os.set_blocking(write, False)
        self._pipe = write
        if self._pids:
            os.write(write, "".join(f"{pid}\n" for pid in self._pids).encode())

    def close(self) -> None:
        """At exit: end the pipe, so the helper kills what is still watched and exits; wait for it briefly."""
        with self._lock:
            self._close(wait=1.0)

    def _close(self, wait: float = 0.0) -> None:
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.close(self._pipe)
            self._pipe = None
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(wait)  # reaped when it has ended
            self._proc = None


_REAPER = Reaper()
atexit.register(_REAPER.close)
start = _REAPER.start
watch = _REAPER.watch
forget = _REAPER.forget
