"""Finding runner binaries: configured path, then PATH, then the cache the build scripts fill."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def cache_dir() -> Path:
    root = (os.environ.get("LLAMA_HOST_CACHE")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "llama-host")
    return Path(root)


def find_binary(name: str, configured: str | None = None) -> str | None:
    """``configured`` (a path or a command name), else ``name`` on PATH, else the newest cached build."""
    if configured:
        found = shutil.which(os.path.expanduser(configured))
        return found or (configured if Path(configured).expanduser().is_file() else None)
    found = shutil.which(name)
    if found:
        return found
    cached = sorted(cache_dir().glob(f"{name}-*/{name}"), key=lambda p: p.stat().st_mtime)
    return str(cached[-1]) if cached else None
