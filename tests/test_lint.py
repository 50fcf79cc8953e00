"""ruff and mypy (strict on ``llama_host/``) report nothing: the README's test command is CI, so it runs them too.

Configuration: ``[tool.ruff]`` and ``[tool.mypy]`` in pyproject.toml. mypy keeps its cache in ``.mypy_cache`` (git
ignores it): about 20 s the first time, about 1 s after. Deselect with ``-m "not lint"``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.lint


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          check=False)


def test_ruff_finds_nothing() -> None:
    done = _run("ruff", "check", "--no-cache", "--output-format", "concise", ".")
    assert done.returncode == 0, f"ruff check found problems:\n{done.stdout}{done.stderr}"


def test_mypy_strict_on_the_core_finds_nothing() -> None:
    done = _run("mypy")  # files = ["llama_host"], strict: from [tool.mypy]
    assert done.returncode == 0, f"mypy found problems:\n{done.stdout}{done.stderr}"
