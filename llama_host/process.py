"""Runner processes: spawn without a shell, watch readiness, capture logs, stop without leaving orphans."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llama_host import http1, reaper
from llama_host.errors import RunnerStartError
from llama_host.types import RunnerBase

if TYPE_CHECKING:
    from llama_host.types import ModelSpec

log = logging.getLogger(__name__)

MAX_LINE = 8192  # longer log lines are cut so one huge line cannot stall the reader or bloat the buffer
PORT_TAKEN = ("couldn't bind", "address already in use", "failed to bind", "bind failed")
#: Flags whose value is a secret: shown as ``***`` wherever a command line is logged or shown.
SECRET_FLAGS = ("--api-key", "--hf-token", "-hft", "--request-path")
#: Log text waiting for the runner's log file while a write is under way; beyond it new lines are dropped (counted).
PENDING_LOG_BYTES = 1 << 20
LOG_FILE_BYTES = 10 * 2**20  # then the file rotates, as the host's own log does
LOG_FILE_BACKUPS = 3
#: During a long burst of dropped lines, a summary at least this often (seconds); else one when the burst ends.
DROP_SUMMARY_EVERY = 10.0
#: Lines that come while the log file is idle are gathered this long (seconds), then written as one batch: a runner's
#: start writes ~100 lines in ~20 ms, which were ~10 batches, each a worker thread's turn and an open (~1 ms of a cold
#: start on two cores: bench/README.md, "Cold start, seventh pass").
WRITE_AFTER = 0.05


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def redact_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the values of :data:`SECRET_FLAGS` (``--api-key KEY``, ``--api-key=KEY``) replaced by ``***``."""
    out: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            out.append("***")
            hide = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag in SECRET_FLAGS:
            if eq:
                arg = flag + "=***"
            else:
                hide = True
        out.append(arg)
    return out


class LogBuffer:
    """The recent lines of one runner, plus live subscribers (for SSE log streams).

    ``dropped`` counts the lines its runner's log file could not take; ``on_dropped(n)`` (set by the scheduler) is
    told each time lines were dropped, once per burst.
    """

    def __init__(self, size: int = 1000) -> None:
        self.lines: deque[str] = deque(maxlen=size)
        self._subscribers: set[asyncio.Queue[str]] = set()
        self.dropped = 0
        self.on_dropped: Callable[[int], None] | None = None

    def append(self, line: str) -> None:
        self.lines.append(line)
        for q in self._subscribers:
            if q.qsize() < 1000:
                q.put_nowait(line)

    def tail(self, n: int = 20) -> list[str]:
        return list(self.lines)[-n:]

    @contextlib.contextmanager
    def subscribe(self) -> Iterator[asyncio.Queue[str]]:
        q: asyncio.Queue[str] = asyncio.Queue()
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)


class RunnerLogFile:
    """One runner's rotating log file, written off the event loop, in bounded memory.

    Lines wait in a buffer of at most :data:`PENDING_LOG_BYTES` while one batch is written in a worker thread (one
    write under way at a time; after a quiet spell, :data:`WRITE_AFTER` after the first line). A runner that logs
    faster than the disk takes it never makes the host grow or blocks the runner: what does not fit is dropped and
    counted, and one summary line per burst says how much.
    """

    def __init__(self, path: Path, model: str, buffer: LogBuffer, *, max_pending: int | None = None,
                 max_bytes: int = LOG_FILE_BYTES, backups: int = LOG_FILE_BACKUPS) -> None:
        self.path = path
        self.model = model
        self.buffer = buffer
        self.max_pending = max_pending or PENDING_LOG_BYTES
        self.max_bytes = max_bytes
        self.backups = backups
        self._pending: list[str] = []
        self._pending_bytes = 0
        self._writing: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._burst = 0  # lines dropped since the last summary
        self._burst_since = 0.0
        self._failed = False

    def add(self, line: str, stamp: str) -> None:
        size = len(line) + len(stamp) + 2
        if self._pending_bytes + size > self.max_pending:
            if not self._burst:
                self._burst_since = time.monotonic()
            self._burst += 1
            return
        self._pending.append(f"{stamp} {line}\n")
        self._pending_bytes += size
        if self._writing is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(WRITE_AFTER, self._kick)

    def _kick(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._writing is not None:
            return
        if self._burst and (not self._pending or time.monotonic() - self._burst_since >= DROP_SUMMARY_EVERY):
            self._summarize()
        if not self._pending:
            return
        batch = "".join(self._pending)
        self._pending.clear()
        self._pending_bytes = 0
        self._writing = asyncio.get_running_loop().run_in_executor(None, self._write, batch)
        self._writing.add_done_callback(self._written)

    def _summarize(self) -> None:
        n, self._burst = self._burst, 0
        note = (f"[llama-host] {n} log line{'s' if n != 1 else ''} of this runner dropped: it wrote faster than its "
                f"log file could take")
        self.buffer.dropped += n
        self.buffer.append(note)
        self._pending.append(f"{_stamp()} {note}\n")
        log.warning("%s: %s", self.model, note.removeprefix("[llama-host] "))
        if self.buffer.on_dropped is not None:
            self.buffer.on_dropped(n)

    def _written(self, future: asyncio.Future[None]) -> None:
        self._writing = None
        exc = None if future.cancelled() else future.exception()
        if exc is not None and not self._failed:
            self._failed = True  # said once; later writes are tried again, quietly
            log.error("%s: cannot write the runner log %s: %s", self.model, self.path, exc)
        self._kick()

    def _write(self, text: str) -> None:
        """In a worker thread: append ``text``, rotating the file first when it is full. Opened per batch, so no file
        stays open when the runner is gone (a batch is one line when the runner is quiet, up to the buffer when not)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
        try:
            if self.max_bytes and f.tell() and f.tell() + len(text) > self.max_bytes:
                f.close()
                for i in range(self.backups - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{i}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{i + 1}"))
                if self.backups > 0:
                    os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
                else:
                    self.path.unlink(missing_ok=True)
                f = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115
            f.write(text)
        finally:
            f.close()

    async def flush(self) -> None:
        """Wait until every line taken so far (and a pending drop summary) is in the file."""
        while self._writing is not None or self._pending or self._burst:
            if self._writing is None:
                self._kick()
            if self._writing is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._writing)
            await asyncio.sleep(0)


def _stamp() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f",{int(now % 1 * 1000):03d}"


def flag_args(params: Mapping[str, object]) -> list[str]:
    """``{ctx_size: 16000, jinja: true, no_mmap: false, lora: [a, b]}`` → ``--ctx-size 16000 --jinja --lora a
    --lora b``."""
    out: list[str] = []
    for key, value in params.items():
        flag = key if key.startswith("-") else "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, list | tuple):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def _pidfd(pid: int) -> int | None:
    """A file descriptor that becomes readable when ``pid`` ends (Linux 5.3+), else ``None``."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


class _Process:
    """A runner's process, started with ``subprocess.Popen`` (vfork on Linux; the same call asyncio's own
    ``subprocess_exec`` makes on the loop) rather than the loop's own spawn, on either loop: uvloop's (libuv) forks
    the whole host with the loop blocked, ~5 ms more per start and growing with the host's memory (bench/README.md,
    "The runner hop"). Its output is read through the loop, and so is its end where Linux gives a pidfd (as asyncio's
    own PidfdChildWatcher does); elsewhere a thread waits for it (as ThreadedChildWatcher does; starting one took up
    to ~1 ms of the loop's time in a cold start). ``ended`` is set when the process itself has ended (waiting for the
    pipe's end instead can take forever when a child it left behind holds its stdout)."""

    def __init__(self, popen: subprocess.Popen[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._popen = popen
        self.pid = popen.pid
        reaper.watch(popen.pid)  # it dies with the host, however the host ends
        self.ended = asyncio.Event()
        self.stdout = asyncio.StreamReader(limit=2**16, loop=loop)
        self._output: asyncio.BaseTransport | None = None
        pidfd = _pidfd(popen.pid)
        if pidfd is None:
            threading.Thread(target=self._wait, args=(loop,), name=f"runner-{popen.pid}", daemon=True).start()
        else:
            loop.add_reader(pidfd, self._exited, loop, pidfd)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def _exited(self, loop: asyncio.AbstractEventLoop, pidfd: int) -> None:
        """On the loop: the pidfd is readable, so the process has ended and ``wait`` returns at once."""
        loop.remove_reader(pidfd)
        os.close(pidfd)
        self._popen.wait()
        reaper.forget(self.pid)
        self.ended.set()

    def _wait(self, loop: asyncio.AbstractEventLoop) -> None:
        self._popen.wait()
        reaper.forget(self.pid)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(self.ended.set)

    async def connect(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self._popen.stdout is not None
        self._output, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(self.stdout, loop=loop),
                                                       self._popen.stdout)

    def close_output(self) -> None:
        """Close the output pipe (uvloop keeps a pipe open after its end)."""
        if self._output is not None:
            self._output.close()


class ProcessRunner(RunnerBase):
    """A local server process for one model; ``argv_for(port)`` builds its command line for a given port."""

    local = True

    def __init__(self, model: ModelSpec, argv_for: Callable[[int], Iterable[str]], *,
                 env: Mapping[str, str] | None = None, health_path: str = "/health", log_dir: str | Path | None = None,
                 headers: Mapping[str, str] | None = None,
                 port_attempts: int = 3, base_path: str = "") -> None:
        self.model = model
        self._argv_for = argv_for
        self._env = dict(env or {})
        self._health_path = health_path
        self.headers = dict(headers or {})
        self._base_path = base_path  # a prefix of every route (``base_url`` ends with it)
        self.logs = LogBuffer()
        self.pid: int | None = None
        self.port = 0
        self.base_url = ""
        self._proc: _Process | None = None
        self._ended = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None
        self._spoke = asyncio.Event()  # the runner wrote output since the last health poll
        self._stopping = False
        self._attempts = port_attempts
        self._log_file = RunnerLogFile(Path(log_dir) / "runners" / f"{model.name}.log", model.name,
                                       self.logs) if log_dir else None

    @property
    def argv(self) -> list[str]:
        return list(self._argv_for(self.port))

    async def start(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for attempt in range(self._attempts):
            self.port = free_port()
            self.base_url = f"http://127.0.0.1:{self.port}{self._base_path}"
            try:
                await self._spawn_and_wait(deadline)
                return
            except RunnerStartError as exc:
                taken = any(p in line.lower() for line in exc.log_tail for p in PORT_TAKEN)
                if not taken or attempt == self._attempts - 1:
                    raise
                log.warning("%s: port %d was taken, retrying on another port", self.model.name, self.port)

    async def _spawn_and_wait(self, deadline: float) -> None:
        argv = self.argv
        env = {**os.environ, **self._env} if self._env else None  # None: the host's own, not converted again
        self._note("starting: " + " ".join(redact_argv(argv)))
        loop = asyncio.get_running_loop()
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=env, start_new_session=True)
        except OSError as exc:
            raise RunnerStartError(f"model '{self.model.name}': cannot start {argv[0]}: "
                                   f"{exc.strerror or exc}") from None
        self._proc = _Process(popen, loop)
        self._ended = self._proc.ended
        self.pid = self._proc.pid
        await self._proc.connect(loop)
        self._reader = asyncio.create_task(self._read_output(self._proc))
        exited = asyncio.create_task(self._ended.wait())
        healthy = asyncio.create_task(self._poll_health())
        try:
            done, _ = await asyncio.wait({exited, healthy}, timeout=max(0.0, deadline - time.monotonic()),
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            healthy.cancel()
            if not exited.done():
                exited.cancel()
        if healthy in done and not healthy.cancelled() and healthy.exception() is None:
            return
        if exited in done:
            self._kill_leftovers()
            await self._drain()
            raise RunnerStartError(f"model '{self.model.name}': runner exited with code {self._proc.returncode} "
                                   f"before becoming ready", log_tail=self.logs.tail())
        await self.stop(grace=1.0)
        raise RunnerStartError(f"model '{self.model.name}': runner not ready after the startup timeout",
                               log_tail=self.logs.tail())

    async def _poll_health(self) -> None:
        """Poll every 5 ms for the first half second (a small model is ready in ~20 ms; a late poll adds to the first
        request), then back off for slow loads; one kept connection. A runner's output often says its state changed
        (llama-server writes "model loaded" as it becomes ready), so output also brings the next poll forward, to
        1 ms after the last one began at the earliest (bench/README.md, "Cold start, seventh pass")."""
        delay = 0.005
        fast_until = time.monotonic() + 0.5
        pool = http1.Pool()
        try:
            while True:
                began = time.monotonic()
                try:
                    async with asyncio.timeout(5):
                        r = await pool.request("GET", self.base_url, self._health_path, None, self.headers)
                        await r.read()
                        r.close()
                    if r.status == 200:
                        return
                except (TimeoutError, ConnectionError):
                    pass
                self._spoke.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._spoke.wait()
                        await asyncio.sleep(max(0.0, began + 0.001 - time.monotonic()))
                if began > fast_until:
                    delay = min(delay * 1.3, 0.25)
        finally:
            await pool.close()

    async def _read_output(self, process: _Process) -> None:
        partial = b""
        try:
            while True:
                chunk = await process.stdout.read(65536)
                if not chunk:
                    break
                partial += chunk
                *lines, partial = partial.split(b"\n")
                if len(partial) > MAX_LINE:
                    lines.append(partial[:MAX_LINE] + b" [...]")
                    partial = b""
                self._spoke.set()
                stamp = _stamp()  # one per chunk read: lines read together are stamped together
                for raw in lines:
                    self._note(raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r"), stamp)
            if partial:
                self._note(partial[:MAX_LINE].decode("utf-8", "replace").rstrip("\r"))
        finally:
            process.close_output()

    def _note(self, line: str, stamp: str | None = None) -> None:
        """One line of the runner's log: the recent-lines buffer (API, dashboard) and the runner's log file."""
        self.logs.append(line)
        if self._log_file is not None:
            self._log_file.add(line, stamp or _stamp())

    async def _drain(self) -> None:
        if self._reader:
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)

    async def wait(self) -> int | None:
        if self._proc is None:
            return None
        await self._ended.wait()
        self._kill_leftovers()
        await self._drain()
        return self._proc.returncode

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    def exited(self) -> bool:
        """True once the process has ended, even before the event loop has reaped it (peeks, does not reap)."""
        proc = self._proc
        if proc is None:
            return False
        if self._ended.is_set() or proc.returncode is not None:
            return True
        try:
            return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
        except ChildProcessError:  # already reaped; the loop has not delivered the exit code yet
            return True
        except (AttributeError, OSError):  # no waitid on this platform
            return False

    def exit_status(self) -> int | None:
        """How the process ended — its exit code, or minus the signal that ended it — as soon as it has, even before
        the event loop has reaped it (peeks, does not reap); ``None`` while it runs (or just after the loop reaped
        it, until the code is delivered)."""
        proc = self._proc
        if proc is None:
            return None
        if proc.returncode is not None:
            return proc.returncode
        try:
            info = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except (ChildProcessError, AttributeError, OSError):
            return None
        if info is None:
            return None
        return -info.si_status if info.si_code in (os.CLD_KILLED, os.CLD_DUMPED) else info.si_status

    async def stop(self, grace: float) -> None:
        """SIGTERM the process group, SIGKILL after ``grace`` seconds (llama-server may linger ~30 s mid-request)."""
        proc = self._proc
        if proc is None:
            return
        if self._ended.is_set():
            self._kill_leftovers()
            return
        self._stopping = True
        self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self._ended.wait(), grace)
        except TimeoutError:
            self._note(f"did not exit {grace:.1f}s after SIGTERM: SIGKILL")
            self._signal(signal.SIGKILL)
            await self._ended.wait()
        self._kill_leftovers()
        await self._drain()
        self._note(f"stopped (exit code {proc.returncode})")
        if self._log_file is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._log_file.flush(), 2.0)

    def _kill_leftovers(self) -> None:
        """The runner's process has ended: its own children (same process group) must not outlive it. The group id
        cannot have been reused while any member is alive; with none left this is a no-op (ESRCH)."""
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self._proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._proc.pid, sig)

    def kill_now(self) -> None:
        """Synchronous last resort at interpreter exit."""
        if self._proc is not None and self._proc.returncode is None:
            self._signal(signal.SIGKILL)

