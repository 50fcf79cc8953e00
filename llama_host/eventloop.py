"""The event loop the host serves on: uvloop where it is installed (the default), else asyncio's own.

``event_loop`` in the site file chooses: ``auto`` (uvloop when importable), ``uvloop`` (an error when it is not
installed), ``asyncio`` (the standard loop: the switch to turn uvloop off). Everything the host does on its loop —
signal handlers, subprocesses (runners), threads, timers, sockets — works on both; tests run on both (bench/README.md
"Event loop" has the figures that chose the default).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from typing import Literal

EventLoopChoice = Literal["auto", "asyncio", "uvloop"]


def uvloop_available() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_factory(choice: EventLoopChoice) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The factory for ``asyncio.Runner(loop_factory=...)`` (``None``: asyncio's default loop)."""
    if choice == "asyncio" or (choice == "auto" and not uvloop_available()):
        return None
    import uvloop  # an ImportError here names what is missing (event_loop: uvloop without uvloop installed)

    return uvloop.new_event_loop


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"
