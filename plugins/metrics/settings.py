"""The ``plugins.metrics`` section of the site file."""

from __future__ import annotations

from typing import Annotated

import msgspec

DURATION_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
TTFT_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
TOKENS_PER_SECOND_BUCKETS = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0, 1000.0,
                             2000.0, 5000.0, 10000.0]
LOAD_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Buckets = Annotated[list[Annotated[float, msgspec.Meta(gt=0)]], msgspec.Meta(min_length=1)]


class Settings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Settings of the metrics plugin (``plugins.metrics`` in the site file)."""

    #: Seconds between two samples of the runner processes and the machine (psutil, nvidia-smi); 0 turns sampling off.
    sample_seconds: NonNegative = 5.0
    #: Finished requests kept in memory for ``GET /api/v1/activity``.
    activity_size: Positive = 500
    #: SQLite file keeping the activity log across restarts (a relative path is taken from the site file's folder);
    #: null keeps it in memory only.
    activity_db: str | None = None
    #: Most rows kept in ``activity_db``; older rows are deleted.
    activity_db_rows: Positive = 100_000
    #: Samples kept as history for charts (``history`` in ``GET /api/v1/metrics`` and the ``snapshot`` event).
    history_samples: Positive = 120
    #: Query ``nvidia-smi`` (when it is on PATH) for GPU memory and utilisation.
    gpu: bool = True
    #: Events buffered per ``/api/v1/events`` client; a client that falls further behind loses events, never the host.
    stream_buffer: Positive = 1000
    #: Seconds over which ``/api/v1/events`` gathers events into one write (0: write each at once).
    stream_gather_seconds: NonNegative = 0.1
    #: Seconds between keep-alive comments on ``/api/v1/events``.
    stream_ping_seconds: Annotated[float, msgspec.Meta(gt=0)] = 15.0
    #: Histogram buckets: request duration (s), time to first token (s), generation tokens/s, model load time (s).
    duration_buckets: Buckets = msgspec.field(default_factory=lambda: list(DURATION_BUCKETS))
    ttft_buckets: Buckets = msgspec.field(default_factory=lambda: list(TTFT_BUCKETS))
    tokens_per_second_buckets: Buckets = msgspec.field(default_factory=lambda: list(TOKENS_PER_SECOND_BUCKETS))
    load_buckets: Buckets = msgspec.field(default_factory=lambda: list(LOAD_BUCKETS))
