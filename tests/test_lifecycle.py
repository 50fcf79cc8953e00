"""The scheduler's explicit model states: only the lifecycle's transitions are allowed."""

import pytest

from llama_host.scheduler import TRANSITIONS, Entry, InvalidTransition
from llama_host.types import ModelSpec, Runner, RunnerBase

PATH = ["loading", "loaded", "stopping", "unloaded", "loading", "failed", "loading", "loaded", "failed", "unloaded"]


def test_the_whole_lifecycle_walks():
    entry = Entry(ModelSpec(name="m"))
    for state in PATH:
        entry.move(state)
    assert entry.state == "unloaded"


@pytest.mark.parametrize("start, to", [(a, b) for a in TRANSITIONS for b in TRANSITIONS
                                       if b not in TRANSITIONS[a]])
def test_every_other_transition_is_refused(start, to):
    entry = Entry(ModelSpec(name="m"))
    entry.state = start
    with pytest.raises(InvalidTransition, match=f"'m': {start} -> {to}"):
        entry.move(to)
    assert entry.state == start


def test_a_stopping_model_is_stopping_and_takes_no_room():
    entry = Entry(ModelSpec(name="m"))
    entry.move("loading")
    entry.move("loaded")
    entry.move("stopping")
    assert entry.stopping and not entry.occupies


def test_runner_base_gives_the_protocols_abilities():
    class Remote(RunnerBase):
        model = ModelSpec(name="r")
        base_url, headers, logs = "http://x", {}, None

        async def start(self, timeout): ...
        async def stop(self, grace): ...
        async def wait(self): ...

    r = Remote()
    assert isinstance(r, Runner) and not r.exited() and r.exit_status() is None and r.kill_now() is None
