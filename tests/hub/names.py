"""Names shared by the pull tests (tests/downloads) and the dashboard's download test."""

from __future__ import annotations

from pathlib import Path

REPO = "test-user/tiny-GGUF"
SPLIT_REPO = "test-user/split-GGUF"


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
