"""The managed folder and the catalogue, as every surface uses them: pull, blobs, create, copy, delete.

``host.managed`` is one :class:`ManagedModels`. Files are written only inside ``site.models_dir`` and deleted only
there; the names and variants go to ``managed.yaml`` next to the site file (``llama_host.catalogue``). After a
change the host rescans (``rescan_models`` hook: discovery reads the new files) and refreshes its models, so a pulled
or created model is served at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_host.catalogue import FILE_NAME, SOURCE, Catalogue, CatalogueError
from llama_host.downloads import STAGING, DownloadManager, Job, StorageError, storage_error
from llama_host.errors import BadRequest, HostError, ModelNotFound
from llama_host.hub import SPLIT
from llama_host.types import ModelSpec

if TYPE_CHECKING:
    from llama_host.host import Host

log = logging.getLogger("llama_host.managed")

BLOBS = ".blobs"
_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}$")


class BlobNotFound(HostError):
    status, code, type = 404, "blob_not_found", "invalid_request_error"


def blob_digest(digest: str) -> str:
    """The hex of ``sha256:<64 hex>`` (or Ollama's ``sha256-...``); anything else is a 400."""
    m = _DIGEST.match(digest or "")
    if not m:
        raise BadRequest(f"invalid digest {digest!r}: expected sha256:<64 lowercase hex digits>", param="digest")
    return m.group(1)


def model_name(name: str) -> str:
    """A name for a new model (``create``/``copy``): no paths, no URLs; ``:latest`` is implied."""
    name = (name or "").strip()
    if not _NAME.match(name) or ".." in name or "//" in name or name.endswith(("/", ":")):
        raise BadRequest(f"invalid model name {name!r}: use letters, digits and . _ - : / (no '..')", param="model")
    return name[: -len(":latest")] if name.lower().endswith(":latest") else name


def inside(folder: Path, path: str | Path) -> bool:
    """Whether ``path`` (resolved, symlinks followed) lies inside ``folder``."""
    try:
        real = Path(os.path.realpath(path))
        root = Path(os.path.realpath(folder))
    except OSError:
        return False
    return real != root and root in real.parents


class ManagedModels:
    def __init__(self, host: Host) -> None:
        self.host = host
        self.folder = Path(host.site.models_dir or "models")
        self.catalogue = Catalogue(host.config_path.parent / FILE_NAME if host.config_path else None)
        self.downloads = DownloadManager(self.folder, on_installed=self._installed)
        self._loaded = False
        self._lock: asyncio.Lock | None = None

    @property
    def lock(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    async def apply(self, configured: dict[str, ModelSpec], discovered: list[ModelSpec]
                    ) -> tuple[dict[str, ModelSpec], list[ModelSpec]]:
        if not self._loaded:
            await asyncio.to_thread(self.catalogue.load)
            self._loaded = True
        return self.catalogue.apply(configured, discovered)

    async def close(self) -> None:
        await self.downloads.close()

    async def _save(self) -> None:
        try:
            await asyncio.to_thread(self.catalogue.save)
        except CatalogueError as exc:
            raise StorageError(str(exc)) from None
        except OSError as exc:
            raise storage_error(exc, self.catalogue.path.parent if self.catalogue.path else self.folder) from None

    # --- pull ---------------------------------------------------------------------------------------------------

    def pull(self, name: str, *, detached: bool = False) -> Job:
        """Start (or join) the download of ``name``; the job's snapshots say how it goes."""
        return self.downloads.pull(name, detached=detached)

    async def _installed(self, job: Job) -> None:
        async with self.lock:
            record_pull(self.catalogue, job)
            await self._save()
        await self.host.rescan_models()
        spec = self.host.scheduler.resolve(job.ref.name, "core")
        job.model = spec.name if spec is not None else None
        if spec is None:
            log.warning("pulled %s into %s, but no model serves it (is the discovery plugin enabled?)",
                        job.ref.name, job.path)

    # --- blobs --------------------------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        return self.folder / BLOBS / f"sha256-{blob_digest(digest)}"

    async def has_blob(self, digest: str) -> bool:
        return await asyncio.to_thread(self.blob_path(digest).is_file)

    async def store_blob(self, digest: str, chunks: AsyncIterator[bytes]) -> Path:
        """Write an upload to the blob store as it arrives; its sha256 must be ``digest`` (else 400, nothing kept)."""
        target = self.blob_path(digest)
        expected = blob_digest(digest)
        tmp = self.folder / STAGING / f"upload-{secrets.token_hex(6)}.part"
        hasher = hashlib.sha256()

        def open_tmp() -> Any:
            tmp.parent.mkdir(parents=True, exist_ok=True)
            return open(tmp, "wb")

        def write(fh: Any, chunk: bytes) -> None:
            fh.write(chunk)
            hasher.update(chunk)

        def finish(fh: Any) -> str:
            fh.flush()
            os.fsync(fh.fileno())
            fh.close()
            actual = hasher.hexdigest()
            if actual == expected:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, target)
            return actual

        try:
            fh = await asyncio.to_thread(open_tmp)
        except OSError as exc:
            raise storage_error(exc, self.folder) from None
        try:
            async for chunk in chunks:
                if chunk:
                    await asyncio.to_thread(write, fh, chunk)
            actual = await asyncio.to_thread(finish, fh)
        except OSError as exc:
            raise storage_error(exc, self.folder) from None
        finally:
            with contextlib.suppress(OSError):
                fh.close()
            await asyncio.to_thread(tmp.unlink, True)
        if actual != expected:
            raise BadRequest(f"digest mismatch: the upload's sha256 is {actual}, not {expected}", param="digest")
        return target

    # --- variants -------------------------------------------------------------------------------------------------

    def _entry_of(self, spec: ModelSpec) -> dict[str, Any]:
        """A catalogue entry that makes a model like ``spec``: its own entry for a variant, else ``from`` it."""
        if spec.source == SOURCE and spec.name in self.catalogue.variants:
            return dict(self.catalogue.variants[spec.name])
        return {"from": spec.name}

    def _check_new(self, name: str) -> str:
        name = model_name(name)
        if name in self.host.site.models:
            raise BadRequest(f"'{name}' is defined in the site file: choose another name", param="model")
        return name

    async def create(self, name: str, *, source: str | None = None, blob: str | None = None,
                     system: str | None = None, template: str | None = None,
                     parameters: dict[str, Any] | None = None) -> ModelSpec:
        """A variant ``name``: from an uploaded blob (``sha256:...``) or from model ``source``, with its own system
        prompt, template and parameters (replacing those of the model it comes from)."""
        name = self._check_new(name)
        if blob is not None:
            path = self.blob_path(blob)
            if not await asyncio.to_thread(path.is_file):
                raise BlobNotFound(f"blob {blob} not found: upload it first (POST /api/blobs/{blob})")
            entry: dict[str, Any] = {"path": str(path)}
        elif source:
            origin = self.host.scheduler.get(source, "core")
            entry = self._entry_of(origin)
            entry["parent"] = origin.name
        else:
            raise BadRequest("nothing to create from: give 'from' (a model) or 'files' (an uploaded blob)",
                             param="from")
        if system is not None:
            entry["system"] = system
        if template is not None:
            entry["template"] = template
        if parameters:
            entry["parameters"] = {**(entry.get("parameters") or {}), **parameters}
        entry["created_at"] = round(time.time(), 3)
        return await self._add_variant(name, entry)

    async def copy(self, source: str, destination: str) -> ModelSpec:
        spec = self.host.scheduler.get(source, "core")
        name = self._check_new(destination)
        entry = self._entry_of(spec)
        entry["parent"] = spec.name
        entry["created_at"] = round(time.time(), 3)
        return await self._add_variant(name, entry)

    async def _add_variant(self, name: str, entry: dict[str, Any]) -> ModelSpec:
        """Keep variant ``name`` (written to the managed catalogue) and serve it at once."""
        async with self.lock:
            self.catalogue.set_variant(name, entry)
            await self._save()
        await self.host.refresh_models()
        return self.host.scheduler.get(name, "core")

    async def delete(self, name: str) -> list[str]:
        """Remove a model: a variant's entry, or a model file of the managed folder (never a file elsewhere).
        Returns the files deleted."""
        spec = self.host.scheduler.resolve(name, "core")
        if spec is None:
            raise ModelNotFound(name)
        if spec.source == "config":
            raise BadRequest(f"'{spec.name}' is defined in the site file: remove it there", param="model")
        removed: list[str] = []
        async with self.lock:
            if spec.source == SOURCE and spec.name in self.catalogue.variants:
                entry = self.catalogue.remove_variant(spec.name) or {}
                path = entry.get("path")
                users = [v for v in self.catalogue.variants.values() if v.get("path") == path]
                if path and not users and inside(self.folder / BLOBS, path):
                    removed = await asyncio.to_thread(_unlink, [path], self.folder)
                await self._save()
                await self.host.scheduler.unload(spec.name)
                await self.host.refresh_models()
                return removed
            if not spec.path or not inside(self.folder, spec.path):
                raise BadRequest(f"'{spec.name}' is not in the managed folder ({self.folder}): llama-host deletes "
                                 "files only there; remove the file yourself", param="model")
            record = self.catalogue.pulled.get(spec.path) or {}
            files = [f for f in record.get("files") or _parts(spec.path) if inside(self.folder, f)]
            others = {s.mmproj for s in self.host.scheduler.models.values() if s.name != spec.name}
            files = [f for f in files if f not in others]
            await self.host.scheduler.unload(spec.name)
            removed = await asyncio.to_thread(_unlink, files, self.folder)
            self.catalogue.forget_path(spec.path)
            await self._save()
        await self.host.rescan_models()
        return removed


def record_pull(catalogue: Catalogue, job: Job) -> None:
    """Remember the names a finished pull answers to (``hf.co/user/repo:QUANT`` as asked and as resolved)."""
    plan = job.plan
    assert plan is not None and job.path is not None
    names = [job.ref.name]
    if plan.quant:
        names.append(f"hf.co/{job.ref.repo}:{plan.quant}")
    if not job.ref.quant:
        names.append(f"hf.co/{job.ref.repo}")
    catalogue.record_pull(job.path, names=names, repo=job.ref.repo, quant=plan.quant,
                          files=[str(f.target) for f in job.files])


def _parts(path: str) -> list[str]:
    """A model file and, for a split model, its other parts."""
    p = Path(path)
    m = SPLIT.match(p.name)
    if not m:
        return [path]
    count = int(m.group("count"))
    return [str(p.with_name(f"{m.group('base')}-{i:05d}-of-{count:05d}.gguf")) for i in range(1, count + 1)]


def _unlink(paths: list[str], root: Path) -> list[str]:
    removed = []
    for path in paths:
        try:
            os.unlink(path)
            removed.append(path)
        except FileNotFoundError:
            continue
    for path in removed:  # empty user/repo folders left behind go too
        parent = Path(path).parent
        for folder in (parent, parent.parent):
            if inside(root, folder):
                with contextlib.suppress(OSError):
                    folder.rmdir()
    return removed
