"""One logging setup for the whole process: records go through a queue, a thread writes them to stderr, to a
rotating host log and to one rotating log per runner, so logging never blocks the event loop."""

from __future__ import annotations

import atexit
import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener, RotatingFileHandler
from pathlib import Path

RUNNER_PREFIX = "llama_host.runner."
MAX_BYTES = 10 * 2**20
BACKUPS = 3
FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class _RunnerFiles(logging.Handler):
    """Writes each runner's lines to its own rotating file (created on first use)."""

    def __init__(self) -> None:
        super().__init__()
        self.paths: dict[str, Path] = {}
        self._files: dict[str, RotatingFileHandler] = {}

    def emit(self, record: logging.LogRecord) -> None:
        path = self.paths.get(record.name)
        if path is None:
            return
        handler = self._files.get(record.name)
        if handler is not None and handler.baseFilename != str(path.absolute()):  # the model moved to another log_dir
            handler.close()
            handler = None
        if handler is None:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = RotatingFileHandler(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")
            handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
            self._files[record.name] = handler
        handler.emit(record)

    def close(self) -> None:
        for h in self._files.values():
            h.close()
        super().close()


class _NotRunner(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(RUNNER_PREFIX)


_queue: queue.SimpleQueue = queue.SimpleQueue()
_runner_files = _RunnerFiles()
_listener: QueueListener | None = None


def _ensure_listener(handlers: list[logging.Handler]) -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
    _listener = QueueListener(_queue, *handlers, _runner_files, respect_handler_level=True)
    _listener.start()


def configure(level: str = "info", log_dir: str | Path | None = None) -> None:
    """Configure the root logger once: human-readable stderr, plus ``<log_dir>/llama-host.log`` (rotating)."""
    fmt = logging.Formatter(FORMAT)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(fmt)
    stderr.addFilter(_NotRunner())
    handlers: list[logging.Handler] = [stderr]
    if log_dir:
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        file = RotatingFileHandler(Path(log_dir) / "llama-host.log", maxBytes=MAX_BYTES, backupCount=BACKUPS,
                                   encoding="utf-8")
        file.setFormatter(fmt)
        file.addFilter(_NotRunner())
        handlers.append(file)
    _ensure_listener(handlers)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(QueueHandler(_queue))
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "uvicorn.error"):  # one "Started server process" line per listener
        logging.getLogger(noisy).setLevel(logging.WARNING)


def attach_file(logger: logging.Logger, path: Path) -> None:
    """Send ``logger`` (a runner's) to its own rotating file through the shared queue."""
    if _listener is None:
        _ensure_listener([])
    _runner_files.paths[logger.name] = path
    if not any(isinstance(h, QueueHandler) for h in logger.handlers):
        logger.addHandler(QueueHandler(_queue))
    logger.setLevel(logging.INFO)


def shutdown() -> None:
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(shutdown)
