"""SQLite persistence of the activity log."""

from __future__ import annotations

from llama_host.types import RequestFinished
from llama_host_metrics.recorder import Recorder
from llama_host_metrics.store import ActivityStore


def finished(i: int, model: str = "m") -> RequestFinished:
    return RequestFinished(surface="openai_api", model=model, endpoint="/v1/completions", status=200,
                           duration=float(i), completion_tokens=i, tokens_per_second=100.0 + i)


def test_rows_survive_a_restart_and_stay_bounded(tmp_path):
    path = tmp_path / "sub" / "activity.db"
    store = ActivityStore(path, max_rows=5)
    store.open()
    rec = Recorder(sink=store.put)
    for i in range(8):
        rec.record(finished(i, model="a" if i % 2 else "b"))
    store.close()

    again = ActivityStore(path, max_rows=5)
    again.open()
    rows = again.load_recent(100)
    assert [seq for seq, _ in rows] == [4, 5, 6, 7, 8]  # oldest first, the 3 oldest pruned
    assert rows[-1][1].completion_tokens == 7 and rows[-1][1].tokens_per_second == 107.0

    rec2 = Recorder(sink=again.put)
    rec2.seed_activity(again.load_recent(3))
    rec2.record(finished(99))
    again.flush()
    assert [e["id"] for e in rec2.recent(10)] == [9, 8, 7, 6]
    # Writing row 9 pruned row 4.
    assert [e["id"] for e in again.query(10, before=7)] == [6, 5]
    assert [e["id"] for e in again.query(10, model="a")] == [8, 6]
    assert again.query(1)[0]["completion_tokens"] == 99
    again.close()
