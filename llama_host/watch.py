"""Watching files for changes (``watchfiles``, inotify on Linux) without blocking the event loop.

The folder of each file is watched, not the file itself: editors and :func:`llama_host.atomic.write_atomic` save by
renaming a new file over the old one, which a watch on the old file's inode would miss.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from watchfiles import Change, awatch

log = logging.getLogger(__name__)

#: milliseconds without a further change before a burst of changes is reported (an editor's save is several events)
DEBOUNCE_STEP_MS = 50
#: milliseconds a steady stream of changes is grouped for at most
DEBOUNCE_MAX_MS = 1000


async def watch_files(paths: Iterable[Path], on_change: Callable[[set[Path]], Awaitable[None]], *,
                      stop: asyncio.Event | None = None, step_ms: int = DEBOUNCE_STEP_MS,
                      debounce_ms: int = DEBOUNCE_MAX_MS) -> None:
    """Call ``on_change(changed paths)`` after each burst of changes to ``paths`` (created, written, replaced or
    deleted), until cancelled or ``stop`` is set. ``on_change`` runs to its end before the next burst is reported;
    changes meanwhile are kept and reported after it. An exception in ``on_change`` is logged, never raised."""
    targets = {os.path.abspath(p) for p in paths}
    folders = sorted({os.path.dirname(p) for p in targets if os.path.isdir(os.path.dirname(p))})
    if not folders:
        return

    def wanted(change: Change, path: str) -> bool:
        return os.path.abspath(path) in targets

    async for changes in awatch(*folders, watch_filter=wanted, step=step_ms, debounce=debounce_ms,
                                recursive=False, stop_event=stop):
        changed = {Path(path) for _, path in changes}
        try:
            await on_change(changed)
        except Exception:
            log.exception("handling a change of %s failed", ", ".join(sorted(map(str, changed))))
