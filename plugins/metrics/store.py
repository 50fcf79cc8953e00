"""Optional SQLite persistence of the activity log, so history survives restarts.

Writes go through a queue to one writer thread, which gathers rows for ``gather_seconds`` and writes them in one
transaction: :meth:`ActivityStore.put` costs a queue append on the event loop.
Reads (:meth:`load_recent`, :meth:`query`) block and are called through ``asyncio.to_thread``.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgspec

from llama_host.types import RequestFinished

from .recorder import activity_entry

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS activity (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    model TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS activity_model ON activity (model, id);
"""
_STOP = object()


class ActivityStore:
    """An ``activity`` table holding at most ``max_rows`` finished requests (the newest), each as its event's JSON."""

    def __init__(self, path: Path, max_rows: int, gather_seconds: float = 0.5) -> None:
        self.path = path
        self.max_rows = max_rows
        self.gather_seconds = gather_seconds
        self.written = 0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._hurry = threading.Event()  # flush() and close() cut the gathering short
        self._decoder = msgspec.json.Decoder(RequestFinished)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def open(self) -> None:
        """Create the file and table if needed and start the writer (blocks)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.executescript(SCHEMA)
        self._thread = threading.Thread(target=self._write_forever, name="metrics-activity-db", daemon=True)
        self._thread.start()

    def load_recent(self, limit: int) -> list[tuple[int, RequestFinished]]:
        """The newest ``limit`` rows, oldest first."""
        conn = self._connect()
        try:
            rows = conn.execute("SELECT id, data FROM activity ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
        finally:
            conn.close()
        out = []
        for seq, data in reversed(rows):
            try:
                out.append((seq, self._decoder.decode(data)))
            except msgspec.ValidationError:
                log.warning("metrics: skipping unreadable activity row %s in %s", seq, self.path)
        return out

    def query(self, limit: int, *, model: str | None = None, before: int | None = None) -> list[dict[str, Any]]:
        """Rows older than ``before`` (an activity id), newest first, as activity entries (after what is queued so
        far is written: a row may have left the in-memory log before the writer got to it)."""
        self.flush()
        sql, args = "SELECT id, data FROM activity WHERE id < ?", [before if before is not None else 2**62]
        if model is not None:
            sql += " AND model = ?"
            args.append(model)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        conn = self._connect()
        try:
            rows = conn.execute(sql, args).fetchall()
        finally:
            conn.close()
        out = []
        for seq, data in rows:
            try:
                out.append(activity_entry(seq, self._decoder.decode(data)))
            except msgspec.ValidationError:
                continue
        return out

    def put(self, seq: int, event: RequestFinished) -> None:
        """Queue one finished request for writing (event loop; never blocks)."""
        self._queue.put((seq, event))

    def close(self) -> None:
        """Write what is queued and stop the writer (blocks: call it through ``asyncio.to_thread``)."""
        if self._thread is not None:
            self._queue.put(_STOP)
            self._hurry.set()
            self._thread.join()
            self._thread = None

    def flush(self, timeout: float = 10.0) -> None:
        """Block until everything queued so far is written (or ``timeout``; at once when the writer is stopped)."""
        if self._thread is None or not self._thread.is_alive():
            return
        done = threading.Event()
        self._queue.put(done)
        self._hurry.set()
        done.wait(timeout)

    def _write_forever(self) -> None:
        encoder = msgspec.json.Encoder()
        conn = self._connect()
        try:
            stop = False
            while not stop:
                items = [self._queue.get()]
                # Gather rows for a moment: one transaction for many rows costs about what one row alone costs.
                self._hurry.wait(self.gather_seconds)
                self._hurry.clear()
                while True:
                    try:
                        items.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                rows, flushes = [], []
                for item in items:
                    if item is _STOP:
                        stop = True
                    elif isinstance(item, threading.Event):
                        flushes.append(item)
                    else:
                        seq, event = item
                        rows.append((seq, event.ts, event.model, encoder.encode(event)))
                if rows:
                    self._write(conn, rows)
                for done in flushes:
                    done.set()
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, rows: list[tuple[int, float, str, bytes]]) -> None:
        try:
            with conn:
                conn.executemany("INSERT OR REPLACE INTO activity (id, ts, model, data) VALUES (?, ?, ?, ?)", rows)
                conn.execute("DELETE FROM activity WHERE id <= ?", (rows[-1][0] - self.max_rows,))
            self.written += len(rows)
        except sqlite3.Error as exc:  # a full disk or a locked file loses these rows, never the host
            log.warning("metrics: could not write %d activity rows to %s: %s", len(rows), self.path, exc)
