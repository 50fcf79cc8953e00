"""The catalogue of discovered models: a machine-written YAML state file (``discovered.yaml``) the user may edit.

Entries are keyed by model name and identified by their ``path``. A scan keeps every entry's user settings (name,
params, aliases, ...), adds new files with the default ``params``, and marks files that disappeared as missing instead
of dropping them. Every write goes through the core's ``write_if_unchanged`` (temp file, fsync, an atomic swap, fsync
of the folder) and keeps the previous version as a timestamped backup (a bounded number). A write happens only over
the version the scan was merged into: a user's edit saved meanwhile is read and the scan merged into it again, so no
hand edit is lost to a rescan. A state file the user broke by hand is never overwritten: writes stop until it parses
again.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from llama_host.atomic import write_if_unchanged

from .scan import FoundModel

log = logging.getLogger("llama_host.discovery_gguf")

STATE_VERSION = 1
#: Keys of an entry that belong to the user: a scan never changes them.
USER_FIELDS = ("params", "aliases", "ttl", "pinned", "unlisted", "memory", "args", "env", "binary", "runtime",
               "priority", "filters", "upstream_model")
#: Keys a scan writes; the file's metadata summary is kept so that missing models still show what they were.
SUMMARY_FIELDS = ("architecture", "parameter_count", "quantization", "context_length")
HEADER = """\
# llama-host: models found by the discovery_gguf plugin. Written by the host; safe to edit.
# Per model you may rename it (the key) and set params, aliases, ttl, pinned, unlisted, memory, args, env, binary,
# priority, filters, upstream_model; `ignore: true` hides it. An edit applies when the file is saved.
# `path` identifies the file; the other keys are refreshed by every scan.
# Files that disappear are kept with `missing: true`: delete the entry to forget one.
"""
_UNSAFE_NAME = re.compile(r"[\s:/\\]+")
#: Times a write is retried over a newer user edit before it is left to the next scan.
SAVE_ATTEMPTS = 20
#: Seconds to wait for a state file that does not parse to be finished by the editor writing it.
PARTIAL_WAIT = 0.05


@dataclass(slots=True)
class Changes:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.missing)


class StateFileError(Exception):
    """The state file exists but cannot be used (bad YAML, wrong shape); it is left untouched."""


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def safe_name(name: str) -> str:
    """A model name usable in URLs and Ollama ``name:tag`` references."""
    return _UNSAFE_NAME.sub("-", name.strip()).strip("-") or "model"


def unique_name(base: str, path: str, taken: set[str]) -> str:
    """``base``, else ``base-<parent folder>``, else ``base-<hash of the path>``: stable for a given path."""
    base = safe_name(base)
    if base.lower() not in taken:
        return base
    parent = safe_name(Path(path).parent.name.lower())
    candidate = f"{base}-{parent}"
    if parent and parent != "model" and candidate.lower() not in taken:
        return candidate
    digest = hashlib.sha1(path.encode("utf-8", "surrogateescape")).hexdigest()
    for n in range(6, len(digest) + 1, 2):
        candidate = f"{base}-{digest[:n]}"
        if candidate.lower() not in taken:
            return candidate
    raise AssertionError("no free name")  # pragma: no cover - 40 hex digits of sha1 collide on nothing


def backups_of(path: Path) -> list[Path]:
    """Backups of ``path`` kept by :func:`llama_host.atomic.write_atomic`, oldest first."""
    escaped = re.sub(r"([\[\]*?])", r"[\1]", path.name)
    return sorted(path.parent.glob(f"{escaped}.*.bak"))


class Catalogue:
    """Discovered models by name, persisted in ``path`` (``None``: kept in memory only)."""

    def __init__(self, path: str | os.PathLike[str] | None, *, backups: int = 5,
                 default_params: dict[str, Any] | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.backups = backups
        self.default_params = dict(default_params or {})
        self.entries: dict[str, dict[str, Any]] = {}
        self.error: str | None = None
        self._stamp: tuple[int, int] | None = None
        self._text: str | None = None

    # --- the file ---------------------------------------------------------------------------------------------

    def load(self) -> None:
        """Read the state file when it changed since it was last read or written (user edits).

        :raises StateFileError: the file is unreadable or malformed; the entries in memory are kept, and
            :meth:`save` will not overwrite the file until it loads again.
        """
        if self.path is None:
            return
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self.error = None
            self._stamp = None
            return
        except OSError as exc:
            self.error = f"cannot read the state file: {exc}"
            raise StateFileError(self.error) from exc
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            self.error = f"{self.path}: {exc}".replace("\n", " ")
            raise StateFileError(self.error) from exc
        self._adopt(text, stamp)
        if self.error is not None:
            raise StateFileError(self.error)

    def changed_on_disk(self) -> bool:
        """Whether the file differs from the version last read or written (its size and modification time)."""
        if self.path is None:
            return False
        try:
            return self._file_stamp() != self._stamp
        except OSError:
            return True

    def _adopt(self, text: str | None, stamp: tuple[int, int] | None = None) -> None:
        """Take the file's ``text`` (``None``: there is no file) as the entries, or set :attr:`error`.

        An empty file is what an editor saving in place leaves between truncating the file and writing it: it is read
        again shortly and, if it stays empty, left alone like a broken file (delete it to start over) rather than
        taken as "no models", which the next write would make final.
        """
        for attempt in range(4):
            if text is None:
                self.entries, self._text, self._stamp, self.error = {}, None, None, None
                return
            try:
                if not text.strip():
                    raise ValueError("the file is empty (delete it to start over)")
                entries = _validate(yaml.safe_load(text) or {})
            except (yaml.YAMLError, ValueError) as exc:
                self.error = f"{self.path}: {exc}".replace("\n", " ")
                if attempt == 3:
                    return
                time.sleep(PARTIAL_WAIT)
                assert self.path is not None
                try:
                    stamp = self._file_stamp()
                    text = self.path.read_text(encoding="utf-8")
                except FileNotFoundError:
                    text = None
                except (OSError, UnicodeDecodeError):
                    return
                continue
            self.entries, self._text, self.error = entries, text, None
            self._stamp = stamp if stamp is not None else self._file_stamp()
            return

    def render(self) -> str:
        body = yaml.safe_dump({"version": STATE_VERSION, "models": self.entries}, sort_keys=False,
                              allow_unicode=True, default_flow_style=False, width=120)
        return HEADER + body

    def save(self, reapply: Callable[[], Any] | None = None) -> bool:
        """Write the state file if its content changed; False when nothing was written.

        The file is replaced only if it still holds the version the entries were read from. When the user saved an
        edit since, that version is read instead and ``reapply()`` (the scan's :meth:`merge`) runs again on it before
        the next try; without ``reapply`` the user's version is kept as it is.
        """
        if self.path is None:
            return False
        for _ in range(SAVE_ATTEMPTS):
            if self.error is not None:
                return False
            text = self.render()
            if text == self._text:
                return False
            written, current = write_if_unchanged(self.path, text, self._text, backups=self.backups)
            if written:
                self._text = text
                self._stamp = self._file_stamp()
                return True
            log.info("discovery: %s was edited during the scan; merging the scan into the edit", self.path)
            self._adopt(current)
            if reapply is None:
                return False
            reapply()
        log.warning("discovery: %s keeps changing; the scan is written at the next rescan", self.path)
        return False

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()  # type: ignore[union-attr]
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    # --- merging a scan ---------------------------------------------------------------------------------------

    def merge(self, found: Iterable[FoundModel], *, reserved: Iterable[str] = (),
              errors: dict[str, str] | None = None) -> Changes:
        """Fold a scan into the entries and say which names were added, changed or went missing.

        :param reserved: names taken elsewhere (configured models): new entries avoid them.
        :param errors: ``path → reason`` for files that exist but cannot be read: their entries become missing
            with that error.
        """
        errors = errors or {}
        changes = Changes()
        now = _now()
        by_path: dict[str, str] = {}
        by_real: dict[str, str] = {}
        for name, entry in self.entries.items():
            p = str(entry.get("path", ""))
            by_path.setdefault(p, name)
            by_real.setdefault(os.path.realpath(p), name)
        taken = {n.lower() for n in self.entries} | {r.lower() for r in reserved}
        present: set[str] = set()

        for model in found:
            name = by_path.get(model.path) or by_real.get(model.key)
            meta = model.metadata
            if name is None:
                name = unique_name(model.name, model.path, taken)
                taken.add(name.lower())
                entry: dict[str, Any] = {"path": model.path, "params": self._new_params(meta)}
                self.entries[name] = entry
                self._refresh(entry, model, meta)
                entry["first_seen"] = now
                changes.added.append(name)
                present.add(name)
                continue
            entry = self.entries[name]
            present.add(name)
            was_missing = bool(entry.get("missing"))
            before = (entry.get("size"), entry.get("mtime"), entry.get("mmproj"), entry.get("path"))
            self._refresh(entry, model, meta)
            after = (entry.get("size"), entry.get("mtime"), entry.get("mmproj"), entry.get("path"))
            if was_missing:
                changes.added.append(name)
            elif before != after:
                changes.changed.append(name)

        for name, entry in self.entries.items():
            if name in present:
                continue
            path = str(entry.get("path", ""))
            error = errors.get(path)
            if entry.get("error") != error:
                entry["error"] = error
                if not error:
                    entry.pop("error", None)
            if not entry.get("missing"):
                entry["missing"] = True
                entry["missing_since"] = now
                changes.missing.append(name)
        return changes

    def _new_params(self, meta: dict[str, Any]) -> dict[str, Any]:
        """The configured defaults, plus the flag llama-server needs to serve an embedding or reranking model."""
        params = copy.deepcopy(self.default_params)
        if meta.get("reranker"):
            params.setdefault("reranking", True)
        elif meta.get("embedding"):
            params.setdefault("embeddings", True)
        return params

    @staticmethod
    def _refresh(entry: dict[str, Any], model: FoundModel, meta: dict[str, Any]) -> None:
        entry["path"] = model.path
        if model.mmproj:
            entry["mmproj"] = model.mmproj
        else:
            entry.pop("mmproj", None)
        if len(model.parts) > 1:
            entry["parts"] = len(model.parts)
        else:
            entry.pop("parts", None)
        for key in SUMMARY_FIELDS:
            entry[key] = meta.get(key)
        entry["size"] = meta.get("size")
        entry["mtime"] = round(float(meta.get("mtime") or 0.0), 3)
        entry["missing"] = False
        entry.pop("missing_since", None)
        entry.pop("error", None)

    # --- specs ------------------------------------------------------------------------------------------------

    def spec_dicts(self, metadata: dict[str, dict[str, Any]], source: str) -> list[dict[str, Any]]:
        """One ``ModelSpec``-shaped dict per entry not ignored; ``metadata`` maps paths to the scan's metadata."""
        out = []
        for name, entry in self.entries.items():
            if entry.get("ignore"):
                continue
            path = str(entry["path"])
            spec: dict[str, Any] = {"name": name, "path": path, "source": source,
                                    "missing": bool(entry.get("missing"))}
            for key in USER_FIELDS:
                if entry.get(key) is not None:
                    spec[key] = entry[key]
            if entry.get("mmproj") and not spec["missing"]:
                spec["mmproj"] = entry["mmproj"]
            meta = metadata.get(path)
            if meta is None:
                meta = {k: entry.get(k) for k in (*SUMMARY_FIELDS, "size", "mtime")}
                if entry.get("error"):
                    meta["error"] = entry["error"]
            spec["metadata"] = meta
            out.append(spec)
        return out


def _validate(data: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(data, dict):
        raise ValueError("the state file must be a mapping with a 'models' key")
    models = data.get("models") or {}
    if not isinstance(models, dict):
        raise ValueError("'models' must be a mapping of model names to entries")
    out: dict[str, dict[str, Any]] = {}
    for name, entry in models.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            raise ValueError(f"models.{name}: an entry needs a 'path' string")
        params = entry.get("params")
        if params is not None and not isinstance(params, dict):
            raise ValueError(f"models.{name}.params: must be a mapping")
        out[str(name)] = entry
    return out
