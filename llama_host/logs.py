"""One logging setup for the whole process: records go through a queue, a thread writes them to stderr and to a
rotating host log, so logging never blocks the event loop. (Runner output does not come this way: each runner's log
file is written in bounded memory by ``llama_host.process.RunnerLogFile``.)"""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path

MAX_BYTES = 10 * 2**20
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"

_queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
_listener: QueueListener | None = None


def _ensure_listener(handlers: list[logging.Handler]) -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
    _listener = QueueListener(_queue, *handlers, respect_handler_level=True)
    _listener.start()


def configure(level: str = "info", log_dir: str | Path | None = None) -> None:
    """Configure the root logger once: human-readable stderr, plus ``<log_dir>/llama-host.log`` (rotating)."""
    fmt = logging.Formatter(FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    handlers: list[logging.Handler] = [stderr]
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        file = RotatingFileHandler(Path(log_dir) / "llama-host.log", maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                   encoding="utf-8")
        file.setFormatter(fmt)
        handlers.append(file)
    _ensure_listener(handlers)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(QueueHandler(_queue))
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "uvicorn.error"):  # one "Started server process" line per listener
        logging.getLogger(noisy).setLevel(logging.WARNING)


def shutdown() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(shutdown)
