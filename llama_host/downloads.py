"""Downloads from the Hugging Face Hub into the managed folder (``models_dir``), shared by every surface.

One :class:`Job` per model being pulled: a second pull of the same model joins it. ``huggingface_hub`` is synchronous,
so every hub call and every file transfer runs in the manager's own worker threads; bytes written are reported back to
the event loop (``call_soon_threadsafe``, at most ten times a second) and every listener of the job sees the same
snapshots. When the last listener goes away before the end, the job is cancelled (the worker stops at its next write)
unless it was started detached (LM Studio's download endpoint, which clients poll).

Files land in ``<models_dir>/.downloads/<digest>.part`` first (hidden, and not ``*.gguf``: discovery never sees them),
are resumed from there with an HTTP range when a transfer is cut or a pull is repeated, are checked against the hub's
LFS sha256 (or git blob id for small files), and only then are moved into ``<models_dir>/<user>/<repo>/`` (the first
part of a split model last). A failed check deletes the part file; a full disk or a read-only folder is a clean error.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from llama_host.errors import HostError
from llama_host.hub import HubFile, HubRef, Plan, choose_files, parse_ref

log = logging.getLogger("llama_host.downloads")

STAGING = ".downloads"
DEFAULT_ENDPOINT = "https://huggingface.co"
#: Bytes kept free on the disk beyond what a download needs.
DISK_MARGIN = 64 * 2**20
CHUNK = 256 * 2**10


class HubUnavailable(HostError):
    """The hub could not be reached or answered with an error."""

    status, code, type = 502, "hub_unavailable", "server_error"


class HubNotFound(HostError):
    status, code, type = 404, "model_not_found", "invalid_request_error"


class HubDenied(HostError):
    status, code, type = 403, "hub_access_denied", "invalid_request_error"


class StorageError(HostError):
    """The managed folder cannot take the model: disk full, read-only, no permission."""

    status, code, type = 507, "insufficient_storage", "server_error"


class DigestMismatch(HostError):
    status, code, type = 502, "digest_mismatch", "server_error"


class DownloadCancelled(HostError):
    status, code, type = 499, "cancelled", "invalid_request_error"


class _Stop(Exception):
    """Raised inside the worker thread to end a transfer that was cancelled."""


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


def safe_relative(path: str) -> Path:
    """A repository file path as a relative local path; a hub listing with ``..`` or absolute names is refused."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") or p.startswith(".")
                                                               for p in parts):
        raise HubUnavailable(f"the hub listed an unsafe file name {path!r}: refused")
    return Path(*parts)


def storage_error(exc: OSError, folder: Path) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageError(f"the disk of the managed folder {folder} is full: {exc.strerror}")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot write to the managed folder {folder}: {exc.strerror} "
                            "(read-only or not permitted; set models_dir in the site file)")
    return StorageError(f"cannot write to the managed folder {folder}: {exc.strerror or exc}")


# --- the synchronous side (worker threads) ---------------------------------------------------------------------------


class _Silent:
    """A do-nothing progress bar for ``huggingface_hub`` (progress goes to the job, not to stderr)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, n: float | None = 1) -> None:
        pass


class _Writer:
    """The part file as ``http_get`` sees it: counts bytes, reports them (throttled) and stops when cancelled."""

    def __init__(self, raw: BinaryIO, done: int, cancel: threading.Event, report: Callable[[int], None]) -> None:
        self.raw, self.done, self.cancel, self.report = raw, done, cancel, report
        self._last = 0.0

    def write(self, data: bytes) -> int:
        if self.cancel.is_set():
            raise _Stop()
        n = self.raw.write(data)
        self.done += len(data)
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self.report(self.done)
        return n

    def tell(self) -> int:
        return self.raw.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        pos = self.raw.seek(offset, whence)
        self.done = pos
        return pos

    def truncate(self, size: int | None = None) -> int:
        return self.raw.truncate(size)

    def flush(self) -> None:
        self.raw.flush()


def list_repo(ref: HubRef, endpoint: str, token: str | None) -> tuple[str, list[HubFile]]:
    """The commit and files of a repository (``GET /api/models/{repo}/revision/{rev}?blobs=true``)."""
    from huggingface_hub import HfApi

    info = HfApi(endpoint=endpoint, token=token).model_info(ref.repo, revision=ref.revision, files_metadata=True)
    files = [HubFile(path=s.rfilename, size=(s.lfs.size if s.lfs else s.size),
                     sha256=(s.lfs.sha256 if s.lfs else None), blob_id=s.blob_id) for s in info.siblings or []]
    return info.sha or ref.revision, files


def fetch_file(ref: HubRef, commit: str, f: HubFile, part: Path, *, endpoint: str, token: str | None,
               cancel: threading.Event, report: Callable[[int], None]) -> None:
    """Download one file into ``part``, resuming from the bytes already there (blocking)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]  # exported, but not in __all__

    # huggingface_hub hands over 10 MB chunks: a cut transfer resumes (and progress moves) only at chunk boundaries.
    constants.DOWNLOAD_CHUNK_SIZE = CHUNK
    url = hf_hub_url(ref.repo, f.path, revision=commit, endpoint=endpoint)
    meta = get_hf_file_metadata(url, token=token, endpoint=endpoint)
    expected = meta.size if meta.size is not None else f.size
    done = part.stat().st_size if part.exists() else 0
    if expected is not None and done > expected:
        done = 0
    headers = build_hf_headers(token=token)
    location = meta.location or url
    if urlsplit(location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: the token stays with the hub
    report(done)
    with open(part, "r+b" if done else "wb") as raw:
        raw.seek(done)
        raw.truncate()
        writer = _Writer(raw, done, cancel, report)
        if expected is None or done < expected:
            # _Writer is the file http_get needs (write); _Silent the progress bar (update, context manager)
            http_get(location, writer, resume_size=done, headers=headers, expected_size=expected,  # type: ignore[arg-type]
                     tqdm_class=_Silent)
        raw.flush()
        os.fsync(raw.fileno())
    report(part.stat().st_size)


def file_digest(path: Path, f: HubFile, cancel: threading.Event) -> tuple[str, str]:
    """(expected, actual) digest of a downloaded file: sha256 for LFS files, the git blob id for small ones."""
    if f.sha256:
        h = hashlib.sha256()
        expected = f.sha256.lower()
    else:
        h = hashlib.sha1()
        h.update(b"blob %d\0" % path.stat().st_size)
        expected = (f.blob_id or "").lower()
    with open(path, "rb") as fh:
        while chunk := fh.read(4 * 2**20):
            if cancel.is_set():
                raise _Stop()
            h.update(chunk)
    return expected, h.hexdigest()


# --- jobs ------------------------------------------------------------------------------------------------------------


class FileState:
    def __init__(self, f: HubFile, target: Path) -> None:
        self.file = f
        self.target = target
        self.total = f.size or 0
        self.completed = 0
        self.status = "pending"  # pending, downloading, verifying, done

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.file.path, "digest": self.file.digest, "total": self.total,
                "completed": self.completed, "status": self.status}


class Job:
    """One pull. ``follow()`` yields snapshots (``snapshot()``) until the job ends; states: ``resolving``,
    ``downloading``, ``verifying``, ``installing``, then ``success``, ``error`` or ``cancelled``."""

    def __init__(self, manager: DownloadManager, ref: HubRef, *, detached: bool = False) -> None:
        self.manager = manager
        self.ref = ref
        self.id = "job_" + secrets.token_hex(5)
        self.status = "resolving"
        self.error: HostError | None = None
        self.files: list[FileState] = []
        self.plan: Plan | None = None
        self.path: str | None = None
        self.model: str | None = None
        self.started_at = time.time()
        self.finished_at: float | None = None
        self.detached = detached
        self.listeners = 0
        self.cancel_flag = threading.Event()
        self.version = 0
        self._waiters: set[asyncio.Event] = set()
        self.task: asyncio.Task[None] | None = None
        self._rate: tuple[float, int] = (time.monotonic(), 0)
        self.bytes_per_second = 0.0

    @property
    def done(self) -> bool:
        return self.status in ("success", "error", "cancelled")

    @property
    def total(self) -> int:
        return sum(f.total for f in self.files)

    @property
    def completed(self) -> int:
        return sum(f.completed for f in self.files)

    def snapshot(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.ref.name, "repo": self.ref.repo,
                "quant": self.plan.quant if self.plan else self.ref.quant, "status": self.status,
                "total": self.total, "completed": self.completed, "files": [f.as_dict() for f in self.files],
                "bytes_per_second": round(self.bytes_per_second), "error": self.error.message if self.error else None,
                "started_at": self.started_at, "finished_at": self.finished_at, "path": self.path,
                "served_as": self.model}

    def changed(self) -> None:
        self.version += 1
        for waiter in self._waiters:
            waiter.set()

    def _advance(self, index: int, completed: int) -> None:
        if self.done:
            return
        state = self.files[index]
        state.completed = completed
        state.total = max(state.total, completed)
        now = time.monotonic()
        then, before = self._rate
        if now - then >= 1.0:
            self.bytes_per_second = max(0.0, (self.completed - before) / (now - then))
            self._rate = (now, self.completed)
        self.changed()

    def cancel(self, reason: str = "cancelled") -> None:
        if not self.done:
            log.info("download %s (%s): %s", self.id, self.ref.name, reason)
            self.cancel_flag.set()
            if self.task is not None and self.status == "resolving":
                self.task.cancel()

    async def wait(self) -> dict[str, Any]:
        """Wait for the end (as a listener: leaving early cancels a job nobody else follows)."""
        async for snap in self.follow():
            last = snap
        return last

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Snapshots as the job moves, the last one final. Leaving as the last listener cancels the job."""
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        self.listeners += 1
        seen = -1
        try:
            while True:
                waiter.clear()
                if self.version != seen:
                    seen = self.version
                    yield self.snapshot()
                    if self.done:
                        return
                    continue
                await waiter.wait()
        finally:
            self._waiters.discard(waiter)
            self.listeners -= 1
            if self.listeners == 0 and not self.detached and not self.done:
                self.cancel("the last client following it went away")


InstalledCallback = Callable[[Job], Awaitable[None]]


class DownloadManager:
    """The downloads of one host (or one ``llama-host pull``): jobs by model, worker threads, the managed folder."""

    def __init__(self, folder: str | Path, *, on_installed: InstalledCallback | None = None,
                 workers: int = 4) -> None:
        self.folder = Path(folder)
        self.on_installed = on_installed
        self.jobs: dict[str, Job] = {}  # every job of this run, by id (finished ones stay for status queries)
        self._active: dict[str, Job] = {}  # running jobs by model key
        self._locks: dict[str, asyncio.Lock] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._workers = workers
        self._keep_finished = 100

    @property
    def staging(self) -> Path:
        return self.folder / STAGING

    def _run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self._workers, thread_name_prefix="llama-host-download")
        return asyncio.get_running_loop().run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    def pull(self, name: str | HubRef, *, detached: bool = False) -> Job:
        """The job pulling ``name`` (a running one is joined). Raises :class:`BadModelName` for a bad name."""
        ref = name if isinstance(name, HubRef) else parse_ref(name)
        job = self._active.get(ref.key)
        if job is not None and not job.done:
            job.detached = job.detached or detached
            return job
        job = Job(self, ref, detached=detached)
        self._active[ref.key] = job
        self.jobs[job.id] = job
        finished = [j for j in self.jobs.values() if j.done]
        for old in finished[: max(0, len(finished) - self._keep_finished)]:
            self.jobs.pop(old.id, None)
        job.task = asyncio.ensure_future(self._pull(job))
        return job

    def get(self, job_id: str) -> Job | None:
        return self.jobs.get(job_id)

    async def close(self) -> None:
        """Cancel every running job and wait for the worker threads to let go (the host is stopping)."""
        for job in list(self._active.values()):
            job.cancel("the host is stopping")
        tasks = [j.task for j in self._active.values() if j.task is not None and not j.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=15)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # --- one pull -------------------------------------------------------------------------------------------------

    async def _pull(self, job: Job) -> None:
        try:
            await self._steps(job)
            job.status = "success"
        except _Stop:
            job.status, job.error = "cancelled", DownloadCancelled("the download was cancelled")
        except asyncio.CancelledError:
            job.status, job.error = "cancelled", DownloadCancelled("the download was cancelled")
        except HostError as exc:
            job.status, job.error = "error", exc
        except OSError as exc:
            job.status, job.error = "error", storage_error(exc, self.folder)
        except Exception as exc:  # a bug or an unexpected hub reply: reported to the client, logged with a traceback
            log.exception("download %s (%s) failed", job.id, job.ref.name)
            job.status, job.error = "error", HubUnavailable(f"download failed: {exc}")
        finally:
            job.finished_at = time.time()
            if job.status != "success":
                for f in job.files:
                    if f.status != "done":
                        f.status = job.status
            if self._active.get(job.ref.key) is job:
                del self._active[job.ref.key]
            if job.error is not None and job.status == "error":
                log.warning("download %s (%s) failed: %s", job.id, job.ref.name, job.error.message)
            elif job.status == "success":
                log.info("download %s (%s) finished: %s", job.id, job.ref.name, job.path)
            job.changed()

    async def _steps(self, job: Job) -> None:
        endpoint, token = hub_endpoint(), hub_token()
        commit, siblings = await self._run(self._list, job.ref, endpoint, token)
        plan = choose_files(job.ref, siblings, commit)
        job.plan = plan
        base = self.folder / safe_relative(job.ref.repo)
        job.files = [FileState(f, base / safe_relative(f.path)) for f in plan.files]
        job.status = "downloading"
        job.changed()
        await self._run(self._prepare, job)
        for index, state in enumerate(job.files):
            if state.status == "done":
                continue
            lock = self._locks.setdefault(state.file.digest, asyncio.Lock())
            async with lock:  # two models sharing a file (a projector) never write one part file at once
                if await self._run(self._installed, state):
                    state.status, state.completed = "done", state.total
                    job.changed()
                    continue
                await self._fetch(job, index, endpoint, token)
        job.status = "installing"
        job.changed()
        await self._run(self._install, job)
        job.path = str(job.files[0].target)
        if self.on_installed is not None:
            await self.on_installed(job)

    @staticmethod
    def _list(ref: HubRef, endpoint: str, token: str | None) -> tuple[str, list[HubFile]]:
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            return list_repo(ref, endpoint, token)
        except GatedRepoError:
            raise HubDenied(f"'{ref.repo}' is gated on the hub: accept its terms and set HF_TOKEN") from None
        except RepositoryNotFoundError:
            raise HubNotFound(f"model '{ref.repo}' not found on the hub ({endpoint}); a private one needs HF_TOKEN"
                              ) from None
        except RevisionNotFoundError:
            raise HubNotFound(f"revision '{ref.revision}' of '{ref.repo}' not found on the hub") from None
        except HfHubHTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            if status in (401, 403):
                raise HubDenied(f"the hub refused '{ref.repo}' ({status}): set HF_TOKEN") from None
            raise HubUnavailable(f"the hub answered {status} for '{ref.repo}'") from None
        except OSError as exc:
            raise HubUnavailable(f"cannot reach the hub at {endpoint}: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore")):
                raise HubUnavailable(f"cannot reach the hub at {endpoint}: {exc}") from None
            raise

    def _prepare(self, job: Job) -> None:
        """Make the folders, mark files already in place, check the free space (blocking)."""
        try:
            self.staging.mkdir(parents=True, exist_ok=True)
            probe = self.staging / f".probe-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise storage_error(exc, self.folder) from None
        need = 0
        for state in job.files:
            if self._installed(state):
                state.status, state.completed = "done", state.total
                continue
            part = self._part(state.file)
            have = part.stat().st_size if part.exists() else 0
            state.completed = min(have, state.total)
            need += max(0, state.total - have)
        free = shutil.disk_usage(self.staging).free
        if need and free < need + DISK_MARGIN:
            raise StorageError(f"the disk of the managed folder {self.folder} is full: the model needs "
                               f"{need / 2**20:.1f} MiB more, {free / 2**20:.1f} MiB are free")

    def _part(self, f: HubFile) -> Path:
        key = f.sha256 or f.blob_id or hashlib.sha1(f.path.encode()).hexdigest()
        return self.staging / f"{key.lower()}.part"

    @staticmethod
    def _installed(state: FileState) -> bool:
        try:
            return state.target.stat().st_size == state.total
        except OSError:
            return False

    async def _fetch(self, job: Job, index: int, endpoint: str, token: str | None) -> None:
        from huggingface_hub.errors import HfHubHTTPError

        state = job.files[index]
        part = self._part(state.file)
        state.status = "downloading"
        job.changed()
        loop = asyncio.get_running_loop()

        def report(done: int) -> None:
            loop.call_soon_threadsafe(job._advance, index, done)

        try:
            await self._run(fetch_file, job.ref, job.plan.commit if job.plan else "main", state.file, part,
                            endpoint=endpoint, token=token, cancel=job.cancel_flag, report=report)
        except (_Stop, HostError):
            raise
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                part.unlink(missing_ok=True)  # give the space back: a full disk will not resume anyway
            if exc.errno is not None:
                raise storage_error(exc, self.folder) from None
            raise HubUnavailable(f"download of {state.file.path} failed: {exc}") from None
        except HfHubHTTPError as exc:
            raise HubUnavailable(f"the hub refused {state.file.path}: {exc}") from None
        except Exception as exc:
            if type(exc).__module__.startswith(("httpx", "httpcore")):
                raise HubUnavailable(f"download of {state.file.path} was interrupted: {exc} (pull again to resume)"
                                     ) from None
            raise
        await asyncio.sleep(0)  # let the last progress callback land before the status changes
        state.status = "verifying"
        job.status = "verifying"
        job.changed()
        expected, actual = await self._run(file_digest, part, state.file, job.cancel_flag)
        if expected != actual:
            part.unlink(missing_ok=True)
            raise DigestMismatch(f"{state.file.path}: the downloaded bytes do not match the hub's digest "
                                 f"(expected {expected}, got {actual}); the download was discarded")
        state.status = "downloaded"
        job.status = "downloading"
        job.changed()

    def _install(self, job: Job) -> None:
        """Move the verified files into place, the first model file last (blocking)."""
        order = [*job.files[1:], job.files[0]]
        for state in order:
            if self._installed(state) and not self._part(state.file).exists():
                state.status = "done"
                continue
            try:
                state.target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self._part(state.file), state.target)
            except OSError as exc:
                raise storage_error(exc, self.folder) from None
            state.status, state.completed = "done", state.total
        with contextlib.suppress(OSError):
            dir_fd = os.open(job.files[0].target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

