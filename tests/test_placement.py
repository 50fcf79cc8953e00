"""The placement policy without processes: llama_host.placement.plan and its helpers, case by case."""

import pytest

from llama_host.placement import (
    Decision,
    Group,
    Limits,
    Slot,
    backoff_left,
    backoff_seconds,
    can_admit,
    idle_seconds,
    plan,
)

GiB = 2**30


def loaded(name, *, used=0.0, memory=GiB, **kw):
    return Slot(name, memory=memory, last_used=used, **kw)


def start(*evict):
    return Decision("start", evict=tuple(evict))


# --- count limit and least recently used ----------------------------------------------------------------------------

def test_empty_host_starts_at_once():
    assert plan(Slot("a"), [], Limits()) == start()


def test_max_loaded_one_swaps_the_idle_model():
    assert plan(Slot("b"), [loaded("a")], Limits(max_loaded=1)) == start("a")


def test_room_left_evicts_nothing():
    assert plan(Slot("c"), [loaded("a"), loaded("b")], Limits(max_loaded=3)) == start()


def test_no_count_limit():
    assert plan(Slot("z"), [loaded(str(i)) for i in range(50)], Limits(max_loaded=0)) == start()


def test_least_recently_used_goes_first():
    running = [loaded("new", used=30), loaded("old", used=10), loaded("mid", used=20)]
    assert plan(Slot("x"), running, Limits(max_loaded=3)) == start("old")


def test_several_evicted_when_the_limit_shrank():
    running = [loaded("a", used=1), loaded("b", used=2), loaded("c", used=3)]
    assert plan(Slot("x"), running, Limits(max_loaded=2)) == start("a", "b")


def test_the_target_itself_is_not_counted():
    assert plan(Slot("a"), [loaded("a")], Limits(max_loaded=1)) == start()


# --- pins ---------------------------------------------------------------------------------------------------------

def test_pinned_model_is_never_evicted():
    running = [loaded("pin", used=0, pinned=True), loaded("b", used=5)]
    assert plan(Slot("x"), running, Limits(max_loaded=2)) == start("b")


def test_only_pinned_models_left_refuses_naming_them():
    d = plan(Slot("x"), [loaded("p1", pinned=True)], Limits(max_loaded=1))
    assert d.action == "refuse" and "p1 (pinned)" in d.reason and "'x'" in d.reason


# --- memory budget ------------------------------------------------------------------------------------------------

def test_budget_evicts_until_it_fits():
    running = [loaded("a", used=1, memory=3 * GiB), loaded("b", used=2, memory=3 * GiB)]
    assert plan(Slot("x", memory=4 * GiB), running, Limits(max_loaded=0, memory_budget=8 * GiB)) == start("a")


def test_budget_with_room_evicts_nothing():
    running = [loaded("a", memory=2 * GiB)]
    assert plan(Slot("x", memory=2 * GiB), running, Limits(max_loaded=0, memory_budget=8 * GiB)) == start()


def test_model_larger_than_the_budget_is_refused():
    d = plan(Slot("huge", memory=9 * GiB), [], Limits(memory_budget=8 * GiB))
    assert d.action == "refuse" and "9.00 GiB" in d.reason and "8.00 GiB" in d.reason


def test_count_and_budget_both_apply():
    running = [loaded("a", used=1, memory=GiB), loaded("b", used=2, memory=6 * GiB)]
    # the count allows three, the budget needs the 6 GiB model gone although it is the more recent one
    assert plan(Slot("x", memory=3 * GiB), running, Limits(max_loaded=3, memory_budget=8 * GiB)) == start("a", "b")


def test_remote_models_take_no_room_and_are_not_evicted():
    running = [loaded("remote", local=False), loaded("a")]
    assert plan(Slot("x"), running, Limits(max_loaded=1)) == start("a")
    assert plan(Slot("r2", local=False), [loaded("a")], Limits(max_loaded=1)) == start()


# --- drain and pending starts -------------------------------------------------------------------------------------

def test_busy_model_is_drained_not_cut():
    assert plan(Slot("x"), [loaded("a", in_flight=2)], Limits(max_loaded=1)) == Decision("drain", drain=("a",))


def test_idle_models_go_before_busy_ones():
    running = [loaded("busy", used=0, in_flight=1), loaded("idle", used=9)]
    assert plan(Slot("x"), running, Limits(max_loaded=2)) == start("idle")


def test_a_model_with_waiters_for_its_start_counts_as_busy():
    assert plan(Slot("x"), [loaded("a", pending=1)], Limits(max_loaded=1)).action == "drain"


def test_drain_names_only_the_busy_victims():
    running = [loaded("idle", used=1), loaded("busy", used=2, in_flight=1)]
    d = plan(Slot("x"), running, Limits(max_loaded=1))
    assert d == Decision("drain", drain=("busy",))


def test_a_start_in_progress_makes_the_next_wait():
    d = plan(Slot("x"), [Slot("a", state="loading", memory=GiB)], Limits(max_loaded=1))
    assert d.action == "wait"


def test_pinned_model_loading_is_not_waited_for():
    d = plan(Slot("x"), [Slot("p", state="loading", pinned=True)], Limits(max_loaded=1))
    assert d.action == "refuse"


# --- priorities ---------------------------------------------------------------------------------------------------

def test_lower_priority_goes_first_even_when_more_recent():
    running = [loaded("important", used=1, priority=10), loaded("cheap", used=9, priority=0)]
    assert plan(Slot("x"), running, Limits(max_loaded=2)) == start("cheap")


def test_equal_priority_falls_back_to_lru():
    running = [loaded("a", used=5, priority=3), loaded("b", used=1, priority=3), loaded("c", used=0, priority=7)]
    assert plan(Slot("x"), running, Limits(max_loaded=3)) == start("b")


def test_negative_priority_is_evicted_before_default():
    running = [loaded("default", used=0), loaded("scratch", used=9, priority=-1)]
    assert plan(Slot("x"), running, Limits(max_loaded=2)) == start("scratch")


def test_idle_high_priority_goes_before_busy_low_priority():
    running = [loaded("high", priority=9), loaded("low", priority=0, in_flight=1)]
    assert plan(Slot("x"), running, Limits(max_loaded=2)) == start("high")


# --- groups -------------------------------------------------------------------------------------------------------

CODERS = Group("coders", frozenset({"c1", "c2"}), swap=True)
TOGETHER = Group("pair", frozenset({"p1", "p2"}), swap=False)
SOLO = Group("solo", frozenset({"s1"}), swap=True, exclusive=True)
KEEP = Group("keep", frozenset({"embed"}), swap=False, persistent=True)


def test_swap_group_members_replace_each_other():
    assert plan(Slot("c2"), [loaded("c1")], Limits(max_loaded=0, groups=[CODERS])) == start("c1")


def test_swap_group_leaves_other_models_alone():
    running = [loaded("c1"), loaded("other")]
    assert plan(Slot("c2"), running, Limits(max_loaded=0, groups=[CODERS])) == start("c1")


def test_non_swap_group_members_run_together():
    assert plan(Slot("p2"), [loaded("p1")], Limits(max_loaded=0, groups=[TOGETHER])) == start()


def test_exclusive_group_clears_everything_else():
    running = [loaded("a"), loaded("p1")]
    assert plan(Slot("s1"), running, Limits(max_loaded=0, groups=[SOLO, TOGETHER])) == start("a", "p1")


def test_persistent_members_survive_an_exclusive_group():
    running = [loaded("embed"), loaded("a")]
    assert plan(Slot("s1"), running, Limits(max_loaded=0, groups=[SOLO, KEEP])) == start("a")


def test_persistent_members_survive_count_pressure_from_outsiders():
    d = plan(Slot("x"), [loaded("embed", used=0)], Limits(max_loaded=1, groups=[KEEP]))
    assert d.action == "refuse" and "embed (persistent group 'keep')" in d.reason


def test_pinned_model_survives_an_exclusive_group():
    running = [loaded("pin", pinned=True), loaded("a")]
    assert plan(Slot("s1"), running, Limits(max_loaded=0, groups=[SOLO])) == start("a")


def test_busy_group_member_is_drained_before_the_swap():
    d = plan(Slot("c2"), [loaded("c1", in_flight=1)], Limits(max_loaded=0, groups=[CODERS]))
    assert d == Decision("drain", drain=("c1",))


def test_group_member_still_loading_is_waited_for():
    d = plan(Slot("c2"), [Slot("c1", state="loading")], Limits(max_loaded=0, groups=[CODERS]))
    assert d.action == "wait" and "c1" in d.reason


def test_groups_apply_on_top_of_the_count_limit():
    running = [loaded("p1", used=1), loaded("a", used=2)]
    assert plan(Slot("p2"), running, Limits(max_loaded=2, groups=[TOGETHER])) == start("p1")


# --- concurrency limits, backoff, per-request ttl -----------------------------------------------------------------

@pytest.mark.parametrize("in_flight, limit, ok", [(0, None, True), (99, 0, True), (3, 4, True), (4, 4, False),
                                                  (5, 4, False)])
def test_concurrency_limit(in_flight, limit, ok):
    assert can_admit(in_flight, limit) is ok


def test_backoff_grows_and_is_capped():
    assert [backoff_seconds(n) for n in (2, 3, 4, 5, 6, 10)] == [1, 2, 4, 8, 16, 30]


def test_backoff_left():
    assert backoff_left(1, 0.0) == 0  # one failure: the next request may try at once
    assert backoff_left(3, 0.5) == pytest.approx(1.5)
    assert backoff_left(3, 5.0) == 0


@pytest.mark.parametrize("ttl, seconds", [(None, None), (-1, None), (0, 0.0), (30, 30.0), (2.5, 2.5)])
def test_per_request_ttl(ttl, seconds):
    assert idle_seconds(ttl) == seconds
