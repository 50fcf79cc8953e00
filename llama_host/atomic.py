"""Files written atomically (temp file, fsync, rename), keeping a bounded number of timestamped backups."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path


def write_atomic(path: str | Path, text: str, *, backups: int = 0) -> None:
    """Replace ``path`` with ``text`` so a crash at any moment leaves either the old or the new file.

    With ``backups > 0`` the previous version is kept as ``<name>.<timestamp>.bak`` and only the newest
    ``backups`` of those are kept.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        if backups > 0 and path.exists():
            stamp = time.strftime("%Y%m%dT%H%M%S") + f"{time.time() % 1:.6f}"[1:]
            os.link(path, path.with_name(f"{path.name}.{stamp}.bak"))
            for old in sorted(path.parent.glob(f"{path.name}.*.bak"))[:-backups]:
                old.unlink(missing_ok=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
