"""The event loop the host serves on: uvloop when installed, else asyncio's own.

``event_loop`` in the site file chooses: ``auto`` (the default: uvloop when importable), ``uvloop`` (an error when it
is not installed), ``asyncio``. uvloop lowers host CPU per relayed request by ~13% (bench/README.md, "The runner
hop"). Runners are not started through the loop's own spawn (libuv forks the whole host with the loop blocked) but
with ``subprocess.Popen`` on either loop (:class:`llama_host.process._Process`), so a cold start costs the same on
both. Everything the host does on its loop works on both; the tests run the fast path on both.
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
