"""``llama-host`` under tracemalloc, for finding what each open stream or queued request costs (bench_streams.py).

Starts tracemalloc (``LLAMA_HOST_TRACEMALLOC_FRAMES`` frames, default 1), then runs ``llama_host.cli``; SIGUSR1 writes a
snapshot to ``LLAMA_HOST_TRACEMALLOC_DIR/snapshot-<n>.pickle``. The bench diffs two snapshots (idle, all streams open).
"""

from __future__ import annotations

import os
import signal
import sys
import tracemalloc
from pathlib import Path

tracemalloc.start(int(os.environ.get("LLAMA_HOST_TRACEMALLOC_FRAMES", "1")))
_out = Path(os.environ.get("LLAMA_HOST_TRACEMALLOC_DIR", "."))
_count = [0]


def _dump(signum: int, frame: object) -> None:
    _count[0] += 1
    tracemalloc.take_snapshot().dump(str(_out / f"snapshot-{_count[0]}.pickle"))


signal.signal(signal.SIGUSR1, _dump)

from llama_host.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
