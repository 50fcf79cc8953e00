"""Find GGUF models in folders: walk (bounded, loop-safe), group split files, attach projectors, cache metadata.

A :class:`Scanner` keeps the facts of every file it read, keyed by the file's real path and checked against its size
and mtime, so a rescan reads only new or changed files and forgets files that are gone. It is synchronous: the plugin
runs it in a worker thread.
"""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .facts import FileFacts, facts_of, parameter_size
from .reader import GGUFError, read_gguf

log = logging.getLogger("llama_host.discovery_gguf")

SPLIT_RE = re.compile(r"^(?P<base>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
#: Tokens dropped from a projector's file name before matching it to a model name.
_PROJECTOR_NOISE = re.compile(
    r"(?:^|[-_.])(?:mmproj|model|vision|projector|f16|f32|bf16|q8_0|q4_0|q4_k_m|q6_k|q5_k_m)(?=$|[-_.])", re.IGNORECASE)


@dataclass(slots=True)
class FoundModel:
    """One model found on disk: a single file, or the first part of a split model."""

    name: str
    path: str
    parts: list[str]
    metadata: dict[str, Any]
    mmproj: str | None = None
    #: The file's identity (real path of part 1): the catalogue keys entries on it.
    key: str = ""


@dataclass(slots=True)
class ScanResult:
    models: list[FoundModel] = field(default_factory=list)
    #: Files and folders that could not be read: ``{"path": ..., "error": ...}``.
    errors: list[dict[str, str]] = field(default_factory=list)
    #: Files that are not models llama-server can run: ``{"path": ..., "reason": ...}``.
    skipped: list[dict[str, str]] = field(default_factory=list)
    #: Files whose header was (re)read in this scan (the rest came from the cache).
    read: list[str] = field(default_factory=list)
    files: int = 0
    duration: float = 0.0


@dataclass(slots=True)
class _Cached:
    size: int
    mtime_ns: int
    facts: FileFacts | None
    error: str | None


@dataclass(slots=True)
class _File:
    path: str  # as found under the scanned folder
    real: str
    size: int
    mtime_ns: int
    ident: tuple[int, int] = (0, 0)


def model_name(file_name: str) -> str:
    """The model name a file gets: lowercase, without ``.gguf`` and without a ``-00001-of-00003`` suffix."""
    m = SPLIT_RE.match(file_name)
    stem = m.group("base") if m else (file_name[:-5] if file_name.lower().endswith(".gguf") else file_name)
    return stem.lower()


def is_projector_name(file_name: str) -> bool:
    return file_name.lower().startswith("mmproj")


class Scanner:
    """Scan folders for GGUF models, reading each file's header at most once per (size, mtime)."""

    def __init__(self, *, max_depth: int = 6, follow_symlinks: bool = True, skip_hidden: bool = True,
                 reader: Callable[[str], Any] = read_gguf) -> None:
        self.max_depth = max_depth
        self.follow_symlinks = follow_symlinks
        self.skip_hidden = skip_hidden
        self._read = reader
        self._cache: dict[str, _Cached] = {}

    # --- walking ----------------------------------------------------------------------------------------------

    def _walk(self, root: str, result: ScanResult) -> list[_File]:
        files: list[_File] = []
        try:
            st = os.stat(root)
        except OSError as exc:
            result.errors.append({"path": root, "error": f"folder not readable: {exc.strerror or exc}"})
            return files
        if not stat.S_ISDIR(st.st_mode):
            result.errors.append({"path": root, "error": "not a folder"})
            return files
        visited = {(st.st_dev, st.st_ino)}
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            folder, depth = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                result.errors.append({"path": folder, "error": f"folder not readable: {exc.strerror or exc}"})
                continue
            subdirs: list[str] = []
            for entry in entries:
                if self.skip_hidden and entry.name.startswith("."):
                    continue
                try:
                    link = entry.is_symlink()
                    if link and not self.follow_symlinks:
                        continue
                    if entry.is_dir():
                        if depth >= self.max_depth:
                            continue
                        est = entry.stat()
                        ident = (est.st_dev, est.st_ino)
                        if ident in visited:  # a loop, or a folder already reached another way
                            continue
                        visited.add(ident)
                        subdirs.append(entry.path)
                    elif entry.name.lower().endswith(".gguf"):
                        if not entry.is_file():
                            if link:
                                result.errors.append({"path": entry.path, "error": "broken symbolic link"})
                            continue
                        est = entry.stat()
                        files.append(_File(entry.path, os.path.realpath(entry.path), est.st_size, est.st_mtime_ns,
                                           (est.st_dev, est.st_ino)))
                except OSError as exc:
                    result.errors.append({"path": entry.path, "error": f"not readable: {exc.strerror or exc}"})
            stack.extend((d, depth + 1) for d in reversed(subdirs))
        return files

    # --- reading ----------------------------------------------------------------------------------------------

    def _facts(self, f: _File, result: ScanResult) -> FileFacts | None:
        cached = self._cache.get(f.real)
        if cached is not None and cached.size == f.size and cached.mtime_ns == f.mtime_ns:
            if cached.error is not None:
                result.errors.append({"path": f.path, "error": cached.error})
            return cached.facts
        result.read.append(f.path)
        try:
            facts = facts_of(self._read(f.real))
            error = None
        except GGUFError as exc:
            facts, error = None, exc.reason
        except OSError as exc:
            facts, error = None, f"not readable: {exc.strerror or exc}"
        except Exception as exc:  # a reader bug must not stop the scan of other files
            log.exception("reading %s failed", f.path)
            facts, error = None, f"unexpected error: {exc!r}"
        self._cache[f.real] = _Cached(f.size, f.mtime_ns, facts, error)
        if error is not None:
            log.warning("discovery: %s: %s", f.path, error)
            result.errors.append({"path": f.path, "error": error})
        elif facts is not None and facts.kind == "skip":
            log.info("discovery: skipping %s: %s", f.path, facts.reason)
        return facts

    # --- scanning ---------------------------------------------------------------------------------------------

    def scan(self, dirs: Iterable[str | os.PathLike[str]]) -> ScanResult:
        """Walk ``dirs`` and return the models found, with the errors and skipped files met on the way."""
        started = time.perf_counter()
        result = ScanResult()
        seen_real: set[str] = set()
        seen_ident: set[tuple[int, int]] = set()
        files: list[_File] = []
        for d in dirs:
            root = os.path.abspath(os.path.expanduser(os.fspath(d)))
            for f in self._walk(root, result):
                if f.real in seen_real or f.ident in seen_ident:  # one file reached through links or hard links
                    continue
                seen_real.add(f.real)
                seen_ident.add(f.ident)
                files.append(f)
        result.files = len(files)

        by_folder: dict[str, list[_File]] = {}
        for f in files:
            by_folder.setdefault(os.path.dirname(f.path), []).append(f)
        for folder in sorted(by_folder):
            self._scan_folder(by_folder[folder], result)

        for gone in set(self._cache) - seen_real:  # forget files that are gone
            del self._cache[gone]
        result.models.sort(key=lambda m: m.path)
        result.duration = time.perf_counter() - started
        return result

    def _scan_folder(self, files: list[_File], result: ScanResult) -> None:
        singles: list[tuple[_File, FileFacts]] = []
        splits: dict[tuple[str, int], dict[int, tuple[_File, FileFacts | None]]] = {}
        projectors: list[tuple[_File, FileFacts]] = []
        for f in files:
            name = os.path.basename(f.path)
            m = SPLIT_RE.match(name)
            facts = self._facts(f, result)
            if facts is None:
                if m:  # keep the slot so that the group reports the broken part
                    splits.setdefault((m.group("base").lower(), int(m.group("count"))), {})[int(m.group("no"))] = \
                        (f, None)
                continue
            if facts.kind == "projector" or (is_projector_name(name) and facts.kind != "model"):
                projectors.append((f, facts))
            elif is_projector_name(name) and facts.kind == "model":
                # A file named mmproj* that holds a full model: list it (the name is only a hint).
                singles.append((f, facts))
            elif facts.kind == "skip":
                result.skipped.append({"path": f.path, "reason": facts.reason or "not a model"})
            elif m:
                key = (m.group("base").lower(), int(m.group("count")))
                splits.setdefault(key, {})[int(m.group("no"))] = (f, facts)
            elif facts.kind == "part":
                result.errors.append({"path": f.path, "error": "a split model part whose file name lacks "
                                                               "the -0000N-of-0000M suffix"})
            else:
                singles.append((f, facts))

        found: list[FoundModel] = []
        for f, facts in singles:
            meta = dict(facts.metadata)
            meta["size"] = f.size
            meta["mtime"] = f.mtime_ns / 1e9
            found.append(FoundModel(model_name(os.path.basename(f.path)), f.path, [f.path], meta, key=f.real))
        for (_, count), parts in sorted(splits.items()):
            model = self._join_split(parts, count, result)
            if model is not None:
                found.append(model)
        self._attach_projectors(found, projectors)
        result.models.extend(found)

    def _join_split(self, parts: dict[int, tuple[_File, FileFacts | None]], count: int,
                    result: ScanResult) -> FoundModel | None:
        first = parts.get(1)
        some = next(iter(parts.values()))[0]
        missing = [n for n in range(1, count + 1) if n not in parts]
        broken = [n for n, (_, facts) in sorted(parts.items()) if facts is None]
        if missing or broken or first is None or first[1] is None or first[1].kind == "skip":
            if first is not None and first[1] is not None and first[1].kind == "skip":
                result.skipped.append({"path": first[0].path, "reason": first[1].reason or "not a model"})
                return None
            problem = []
            if missing:
                problem.append("missing part(s) " + ", ".join(str(n) for n in missing))
            if broken:
                problem.append("unreadable part(s) " + ", ".join(str(n) for n in broken))
            result.errors.append({"path": (first or (some, None))[0].path,
                                  "error": f"split model of {count} parts: " + "; ".join(problem)})
            return None
        f1, facts1 = first
        meta = dict(facts1.metadata)
        ordered = [parts[n][0] for n in range(1, count + 1)]
        meta["size"] = sum(p.size for p in ordered)
        meta["mtime"] = max(p.mtime_ns for p in ordered) / 1e9
        meta["split_count"] = count
        if not _declared_count(facts1):
            total = sum(facts.n_elements for _, facts in parts.values() if facts is not None)
            meta["parameter_count"] = total
            meta["parameter_size"] = parameter_size(total)
        return FoundModel(model_name(os.path.basename(f1.path)), f1.path, [p.path for p in ordered], meta,
                          key=f1.real)

    @staticmethod
    def _attach_projectors(models: list[FoundModel], projectors: list[tuple[_File, FileFacts]]) -> None:
        """Give each model of a folder the projector that fits it (→ ``--mmproj``, vision/audio).

        A projector whose name, stripped of ``mmproj`` and type words, is a prefix of a model's name goes to that
        model; a projector with a generic name (``mmproj-model-f16``) goes to every model of the folder. When the
        projector says which text embedding size it feeds, models of another size are left out whenever some model
        of the folder has that size (llama-server refuses a mismatched projector).
        """
        if not projectors or not models:
            return
        stems = [(_projector_stem(os.path.basename(f.path)), f, facts) for f, facts in projectors]
        folder_sizes = {m.metadata.get("embedding_length") for m in models} - {None}
        for model in models:
            fitting = [(s, f, facts) for s, f, facts in stems if s and model.name.startswith(s)]
            if not fitting:
                fitting = [(s, f, facts) for s, f, facts in stems if not s]
            if not fitting and len(models) == 1:
                fitting = stems
            emb = model.metadata.get("embedding_length")
            # Drop projectors made for another model of this folder; prefer those made for this one.
            fitting = [c for c in fitting
                       if c[2].projection_dim is None or c[2].projection_dim == emb
                       or c[2].projection_dim not in folder_sizes]
            sized = [c for c in fitting if c[2].projection_dim is not None and c[2].projection_dim == emb]
            if sized:
                fitting = sized
            if not fitting:
                continue
            fitting.sort(key=lambda c: (-len(c[0]), c[1].path))
            _, f, facts = fitting[0]
            model.mmproj = f.path
            model.metadata["vision"] = bool(facts.vision) or not facts.audio
            model.metadata["audio"] = bool(facts.audio)
            model.metadata["mmproj"] = f.path


def _projector_stem(file_name: str) -> str:
    stem = file_name[:-5] if file_name.lower().endswith(".gguf") else file_name
    stem = _PROJECTOR_NOISE.sub("", stem.lower())
    return stem.strip("-_.")


def _declared_count(facts: FileFacts) -> bool:
    gguf = facts.metadata.get("gguf") or {}
    value = gguf.get("general.parameter_count")
    return isinstance(value, int) and value > 0


def resolve_dirs(dirs: Iterable[str], base: Path | None) -> list[str]:
    """Expand ``~`` and make relative folders relative to ``base`` (the site file's folder)."""
    out = []
    for d in dirs:
        p = Path(os.path.expandvars(os.path.expanduser(d)))
        if not p.is_absolute() and base is not None:
            p = base / p
        out.append(str(p))
    return out
