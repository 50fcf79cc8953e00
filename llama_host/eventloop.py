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


class Deadline:
    """One timer for a deadline that moves, instead of a new timer each time it moves (a keep-alive or idle deadline
    moves with every request). :meth:`at` sets the deadline (loop time) and arms the timer only when none is pending
    or the pending one would fire later; a timer that fires before the deadline re-arms for the rest; once the
    deadline has passed, ``expired()`` is called. :meth:`drop` forgets the deadline and leaves the timer to find
    nothing when it fires; :meth:`cancel` cancels the timer too."""

    __slots__ = ("loop", "when", "_expired", "_handle", "_armed_for")

    def __init__(self, loop: asyncio.AbstractEventLoop, expired: Callable[[], object]) -> None:
        self.loop = loop
        self.when: float | None = None
        self._expired = expired
        self._handle: asyncio.TimerHandle | None = None
        self._armed_for = 0.0

    def at(self, when: float) -> None:
        self.when = when
        if self._handle is None or self._armed_for > when:
            if self._handle is not None:
                self._handle.cancel()
            self._handle, self._armed_for = self.loop.call_at(when, self._fire), when

    def after(self, seconds: float) -> None:
        # :meth:`at` written out for its common case, a timer already pending for an earlier time (twice per request)
        when = self.when = self.loop.time() + seconds
        if self._handle is None or self._armed_for > when:
            self.at(when)

    def drop(self) -> None:
        """Forget the deadline (setting ``when`` to ``None`` does the same, without a call)."""
        self.when = None

    def cancel(self) -> None:
        self.when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _fire(self) -> None:
        self._handle = None
        when = self.when
        if when is None:
            return
        if when > self.loop.time():  # moved since the timer was set
            self._handle, self._armed_for = self.loop.call_at(when, self._fire), when
            return
        self.when = None
        self._expired()
