"""Where a model may start: the scheduler's placement policy as pure functions.

``plan(target, running, limits)`` looks at the model to start, the models that occupy memory now and the site's
limits, and returns a :class:`Decision` — start now (after unloading some idle models), drain some busy models first,
wait for a start in progress, or refuse. It does no I/O, takes no locks and never logs: the scheduler applies the
decision (stops runners, waits on events) and asks again when something changed. So every policy is tested without a
process (tests/test_placement.py), and a new policy is a change here, not in the scheduler's effects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

SlotState = Literal["loading", "loaded"]


@dataclass(frozen=True)
class Slot:
    """A model as placement sees it: the one to start, or one that holds room now (loading or loaded)."""

    name: str
    memory: int = 0
    state: SlotState = "loaded"
    in_flight: int = 0
    #: requests waiting for this model's start to finish: it is about to be used, so it is busy
    pending: int = 0
    last_used: float = 0.0
    priority: int = 0
    pinned: bool = False
    #: False for runtimes that occupy no local memory (a remote server): never counted, never evicted for room
    local: bool = True

    @property
    def busy(self) -> bool:
        return self.in_flight > 0 or self.pending > 0


@dataclass(frozen=True)
class Group:
    """A set of models with rules for running together (llama-swap's groups).

    ``swap``: at most one member runs at a time; starting one unloads the others.
    ``exclusive``: starting a member unloads every model outside the group (but persistent ones and pinned ones).
    ``persistent``: members are never unloaded to make room for a model outside the group.
    """

    name: str
    members: frozenset[str]
    swap: bool = True
    exclusive: bool = False
    persistent: bool = False


@dataclass(frozen=True)
class Limits:
    max_loaded: int = 1  # 0 = no limit
    memory_budget: int | None = None
    groups: Sequence[Group] = ()

    def group_of(self, name: str) -> Group | None:
        return next((g for g in self.groups if name in g.members), None)


Action = Literal["start", "drain", "wait", "refuse"]


@dataclass(frozen=True)
class Decision:
    """``start``: unload ``evict`` (idle) and start the target now. ``drain``: these busy models take no new requests
    and are unloaded once their in-flight requests end; then plan again. ``wait``: a start in progress must finish
    first; plan again when it has. ``refuse``: it can never fit; ``reason`` says why."""

    action: Action
    evict: tuple[str, ...] = ()
    drain: tuple[str, ...] = ()
    reason: str = ""


@dataclass
class _Room:
    """The running set as it would be after the removals chosen so far."""

    slots: list[Slot]
    removed: list[Slot] = field(default_factory=list)

    def remove(self, slot: Slot) -> None:
        self.slots.remove(slot)
        self.removed.append(slot)


def plan(target: Slot, running: Iterable[Slot], limits: Limits) -> Decision:
    """Decide how ``target`` can start given the models holding room (``running``, the target excluded)."""
    if not target.local:
        return Decision("start")
    budget = limits.memory_budget
    if budget is not None and target.memory > budget:
        return Decision("refuse", reason=f"model '{target.name}' needs about {size_text(target.memory)}, more than "
                                         f"the whole memory budget of {size_text(budget)}")
    room = _Room([s for s in running if s.local and s.name != target.name])
    mine = limits.group_of(target.name)

    def protected(s: Slot) -> bool:
        """Never unloaded for the target: pinned, or a persistent group's member when the target is an outsider."""
        other = limits.group_of(s.name)
        return s.pinned or (other is not None and other.persistent and other is not mine)

    forced = [s for s in room.slots if not protected(s) and _group_excludes(mine, limits.group_of(s.name), s)]
    for s in forced:
        room.remove(s)
    candidates = sorted((s for s in room.slots if not protected(s) and s.state == "loaded"),
                        key=lambda s: (s.busy, s.priority, s.last_used))
    while not _fits(room.slots, target, limits):
        if candidates:
            room.remove(candidates.pop(0))
        elif any(s.state == "loading" and not protected(s) for s in room.slots):
            return Decision("wait", reason="a model being loaded takes its requests first")
        else:
            held = ", ".join(f"{s.name} ({_why_kept(s, limits)})" for s in sorted(room.slots, key=lambda s: s.name))
            return Decision("refuse", reason=f"cannot load model '{target.name}': the models that may not be "
                                             f"unloaded for it use all the room: {held or 'none'}")
    loading = [s for s in room.removed if s.state == "loading"]
    if loading:  # a group rule removes a model still starting: let it start (and serve its waiters) first
        return Decision("wait", reason=f"model '{loading[0].name}' is still loading")
    busy = tuple(s.name for s in room.removed if s.busy)
    if busy:
        return Decision("drain", drain=busy)
    return Decision("start", evict=tuple(s.name for s in room.removed))


def _group_excludes(mine: Group | None, theirs: Group | None, slot: Slot) -> bool:
    """Whether a running model must give way to the target because of group rules."""
    if mine is None:
        return False
    if theirs is mine:
        return mine.swap
    return mine.exclusive


def _why_kept(slot: Slot, limits: Limits) -> str:
    if slot.pinned:
        return "pinned"
    group = limits.group_of(slot.name)
    return f"persistent group '{group.name}'" if group is not None and group.persistent else slot.state


def _fits(slots: list[Slot], target: Slot, limits: Limits) -> bool:
    if limits.max_loaded > 0 and len(slots) + 1 > limits.max_loaded:
        return False
    budget = limits.memory_budget
    return budget is None or sum(s.memory for s in slots) + target.memory <= budget


def can_admit(in_flight: int, max_concurrent: int | None) -> bool:
    """Whether one more request may go to a model's runner now (``max_concurrent``: ``None`` or 0 = no limit)."""
    return not max_concurrent or in_flight < max_concurrent


def backoff_seconds(failures: int) -> float:
    """How long a model that failed to start ``failures`` times in a row waits before the next start (>= 2)."""
    return float(min(2 ** (failures - 2), 30))


def backoff_left(failures: int, seconds_since_failure: float) -> float:
    """Seconds a failed model must still wait before another start; 0 when it may start now."""
    if failures < 2:
        return 0.0
    return max(0.0, backoff_seconds(failures) - seconds_since_failure)


def idle_seconds(ttl: float | None) -> float | None:
    """Per-request ttl → seconds until unload: ``None`` (or negative) = never, ``0`` = right after the request."""
    if ttl is None or ttl < 0:
        return None
    return float(ttl)


def size_text(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
