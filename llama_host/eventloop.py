"""The event loop the host serves on: asyncio's own by default, uvloop on request.

``event_loop`` in the site file chooses: ``asyncio`` (the default), ``uvloop`` (an error when it is not installed),
``auto`` (uvloop when importable). uvloop lowers host CPU per relayed request by ~10%, but libuv starts a runner by
fork()ing the whole host with the loop blocked (~10 ms at 70 MB, more with many open streams; asyncio's subprocess
uses vfork), which adds ~20 ms to a cold start (bench/README.md, "Hot path" and "Cold start"). Everything the host
does on its loop works on both; the tests run the fast path on both.
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
