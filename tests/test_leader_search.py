"""The search for the leader (wire/leader_search.py) and the leader's
address in an ERR_NOT_LEADER (wire/leader_hint.py): exact steps for small
scenarios, and hypothesis over any sequence of refusals, hints and silence."""
from __future__ import annotations

import pathlib
import random

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from uds import wire
from uds.wire.enums import ErrorCode
from uds.wire.leader_hint import LEADER_AT, NO_LEADER_YET, leader_hint, not_leader_reason
from uds.wire.leader_search import MAX_MASTERS, LeaderSearch

A, B, C, D, E = (f"tcp://10.0.0.{n}:7000" for n in range(1, 6))


def search(*addresses: str, seed: int = 0, **options) -> LeaderSearch:
    return LeaderSearch(addresses or (A, B, C), random.Random(seed), **options)


def not_leader(reason: str) -> wire.Error:
    return wire.Error.replying(bytes(16), 1, int(wire.MessageType.JOB_STATUS), ErrorCode.NOT_LEADER, reason)


# ---- the hint ----------------------------------------------------------------

@pytest.mark.parametrize("address", [A, "tcp://[::1]:5555", "ipc:///tmp/uds master; 1"])
def test_the_hint_reads_back_the_address_it_was_written_with(address):
    reason = not_leader_reason(address)
    assert reason == f"not the leader; the leader is at {address}"
    assert leader_hint(not_leader(reason)) == address


def test_no_hint_without_a_leader_or_from_another_error():
    assert not_leader_reason(None) == "no leader elected yet"
    assert leader_hint(not_leader(not_leader_reason(None))) is None
    busy = wire.Error.replying(bytes(16), 1, 0, ErrorCode.BUSY, not_leader_reason(A))
    assert leader_hint(busy) is None


def test_the_wire_doc_gives_the_form_of_the_hint():
    doc = (pathlib.Path(__file__).resolve().parent.parent / "doc" / "wire.md").read_text()
    assert f"`{LEADER_AT}ADDRESS`" in doc and f"`{NO_LEADER_YET}`" in doc


def test_the_hint_survives_the_wire():
    frames = wire.encode(not_leader(not_leader_reason(B)))
    assert leader_hint(wire.decode(frames)) == B


# ---- exact scenarios -----------------------------------------------------------

def test_a_hint_is_followed_at_once():
    s = search()
    s.asked(0.0)
    s.refused(0, C, 0.01)
    assert s.due(0.01) == 2 and s.address == C


def test_a_hint_naming_a_master_outside_the_list_adds_it_up_to_the_cap():
    """A master added to the Raft group after the cluster file was read."""
    s = search()
    s.asked(0.0)
    s.refused(0, D, 0.01)
    assert s.addresses == (A, B, C, D) and s.due(0.01) == 3 and s.address == D
    s.refused(3, D, 0.02)                       # not followed twice in a round
    assert s.addresses == (A, B, C, D)
    many = search()
    for number in range(100):
        many.refused(many.target, f"tcp://10.1.0.{number}:7000", float(number))
    assert len(many.addresses) == MAX_MASTERS


def test_a_silent_master_is_left_for_the_next():
    s = search(silence_s=0.5)
    s.asked(1.0)
    assert not s.overdue(1.5)
    assert s.overdue(1.51) and s.due(1.51) == 1


def test_a_request_that_asked_to_wait_is_given_its_wait_too():
    s = search(silence_s=0.5)
    s.asked(0.0)
    assert not s.overdue(1.4, patience_s=1.0)
    assert s.overdue(1.6, patience_s=1.0) and s.target == 1


def test_a_master_that_hung_up_holding_a_request_is_left_at_once_whatever_the_wait():
    s = search(silence_s=0.5)
    s.asked(0.0)
    s.hung_up(1, 0.1)             # not the target: old news
    assert s.target == 0
    s.hung_up(0, 0.2)
    assert s.target == 1 and s.quiet(0, 0.3) and s.due(0.2) == 1


def test_hearing_from_the_target_stops_its_silence_clock():
    s = search(silence_s=0.5)
    s.asked(0.0)
    s.heard_from(0, 0.4)
    assert not s.overdue(5.0)
    s.asked(5.0)
    s.heard_from(1, 5.1)          # another master: says nothing of the target
    assert s.overdue(5.6)


def test_a_fruitless_round_backs_off_then_starts_at_the_last_named_master():
    s = search(backoff_first_s=0.1, backoff_cap_s=1.0)
    s.refused(0, None, 0.0)                 # no leader elected yet
    s.refused(1, None, 0.0)
    assert s.due(0.0) == 2
    s.refused(2, B, 0.0)                    # names B, tried already in this round
    assert s.due(0.0) is None and 0.05 <= s.wait_s(0.0) <= 0.1
    assert s.target == 1 and s.due(0.1) == 1


def test_a_silent_master_is_left_out_while_quiet():
    s = search(silence_s=0.5, quiet_s=2.0)
    s.asked(0.0)
    assert s.overdue(0.6)                   # A, the old leader, silent
    s.refused(1, None, 0.6)                 # B: no leader yet
    s.refused(2, None, 0.6)                 # C too: the round is over without A
    assert s.due(0.6) is None
    now = 0.6 + s.wait_s(0.6)
    assert s.due(now) in (1, 2)
    s.refused(s.target, None, now)
    s.refused(s.target, None, now)
    assert s.due(now) is None               # another round without A
    now = 2.7                               # A's quiet is over: it is tried again
    s.refused(s.target, None, now)
    s.refused(s.target, None, now)
    assert s.target == 0


def test_a_hint_ends_a_silent_masters_quiet_once_per_quiet_period():
    s = search(silence_s=0.5, quiet_s=2.0)
    s.asked(0.0)
    assert s.overdue(0.6)                   # A silent: frozen, say, then elected again
    s.refused(1, A, 0.7)                    # B names A, a leader it heard from lately
    assert not s.quiet(0, 0.7)
    assert s.target == 2                    # A was tried in this round: C first
    s.refused(2, A, 0.7)                    # the round is over; the next starts at A
    assert s.due(0.7) is None and s.target == 0
    now = 0.7 + s.wait_s(0.7)
    s.asked(now)
    now += 0.6
    assert s.overdue(now)                   # A silent again: the hint was stale
    s.refused(1, A, now)                    # a second hint within the quiet: not followed
    assert s.target == 2 and s.quiet(0, now)
    assert s.quiet(0, 2.75)                 # silent since about 1.35: quiet until about 3.35
    s.refused(2, A, 2.75)                   # a quiet period after the first lift: followed again
    assert not s.quiet(0, 2.75)


def test_anything_heard_from_a_silent_master_ends_its_quiet():
    s = search(silence_s=0.5)
    s.asked(0.0)
    s.overdue(0.6)
    assert s.quiet(0, 0.7)
    s.heard_from(0, 0.7)                    # a late answer: alive after all
    assert not s.quiet(0, 0.7)
    s.refused(1, None, 0.7)
    s.refused(2, A, 0.7)                    # the round is over; the next begins at A
    assert s.target == 0


def test_when_every_master_is_quiet_they_are_all_tried():
    s = search(silence_s=0.5, quiet_s=10.0)
    now, targets = 0.0, []
    for _ in range(6):
        now += s.wait_s(now)
        targets.append(s.target)
        s.asked(now)
        now += 0.51
        assert s.overdue(now)
    assert targets == [0, 1, 2, 0, 1, 2]


def test_serving_ends_the_search_and_a_late_answer_counts():
    s = search()
    s.asked(0.0)
    s.overdue(1.0)
    assert s.target == 1
    s.served(0, 1.1)                        # A answered late after all
    assert s.target == 0 and s.due(1.1) == 0 and s.fruitless_rounds == 0


def test_a_refusal_from_a_master_already_left_changes_nothing():
    s = search()
    s.refused(0, None, 0.0)
    s.refused(0, C, 0.0)
    assert s.target == 1


def test_one_master_is_asked_again_after_a_backoff():
    s = search(A, backoff_first_s=0.05)
    s.refused(0, None, 0.0)
    assert s.due(0.0) is None and s.target == 0
    assert s.due(s.wait_s(0.0)) == 0


# ---- any sequence ----------------------------------------------------------------

ADDRESSES = st.integers(min_value=1, max_value=5).map(lambda n: (A, B, C, D, E)[:n])
# One failure of the target: silence, or a refusal naming a master (or
# nobody, or an address not in the cluster file, which the search learns).
FAILURES = st.one_of(st.just(("silent", None)),
                     st.tuples(st.just("refused"), st.one_of(st.none(), st.integers(0, 5))))


@given(addresses=ADDRESSES, failures=st.lists(FAILURES, max_size=60), seed=st.integers(0, 2**32),
       start=st.integers(0, 4), pauses=st.lists(st.floats(0.0, 1.0), min_size=60, max_size=60))
def test_every_round_tries_every_master_not_quiet_and_no_wait_exceeds_the_cap(addresses, failures, seed, start,
                                                                              pauses):
    s = LeaderSearch(addresses, random.Random(seed), silence_s=0.5, backoff_first_s=0.05,
                     backoff_cap_s=0.4, quiet_s=2.0, target=start % len(addresses))
    now = 0.0
    round_targets = [s.target]
    last_tried = {s.target: now}
    for (kind, named), pause in zip(failures, pauses):
        now += s.wait_s(now) + pause
        assert s.due(now) == s.target
        last_tried[s.target] = now
        if kind == "silent":
            s.asked(now)
            now += 0.51
            assert s.overdue(now)
        else:
            hint = (addresses + ("tcp://other:1",))[named] if named is not None and named <= len(addresses) \
                else None
            s.refused(s.target, hint, now)
        assert 0.0 <= s.wait_s(now) <= 0.4
        if s.wait_s(now) > 0:               # a round ended: it tried each master once, all but the quiet
            assert len(set(round_targets)) == len(round_targets)
            left_out = set(range(len(s.addresses))) - set(round_targets)
            assert all(s.quiet(index, now) for index in left_out)
            assert len(left_out) < len(s.addresses)
            round_targets = [s.target]
        else:
            round_targets.append(s.target)
            assert len(set(round_targets)) == len(round_targets) <= len(s.addresses)
    # None is left out for longer than its quiet and a round or two.
    bound = 2.0 + 2 * len(s.addresses) * 1.6 + 0.8
    for index in range(len(s.addresses)):
        if now > bound:
            assert now - last_tried.get(index, -10.0) <= bound


@given(addresses=ADDRESSES.filter(lambda a: len(a) > 1), seed=st.integers(0, 2**32),
       prefix=st.lists(st.tuples(st.booleans(), st.integers(0, 4)), max_size=12), data=st.data())
def test_a_hint_to_a_master_not_yet_tried_in_the_round_is_followed_at_once(addresses, seed, prefix, data):
    s = LeaderSearch(addresses, random.Random(seed))
    now = 0.0
    for silent, named in prefix:          # anywhere in a search
        now += s.wait_s(now)
        if silent:
            s.asked(now)
            now += 1.0
            s.overdue(now)
        else:
            s.refused(s.target, addresses[named % len(addresses)], now)
    now += s.wait_s(now)
    untried = [index for index in range(len(addresses)) if index not in s.tried and not s.quiet(index, now)]
    if not untried:
        s.served(s.target, now)
        untried = [index for index in range(len(addresses)) if index != s.target and not s.quiet(index, now)]
    assume(untried)
    hinted = data.draw(st.sampled_from(untried))
    s.refused(s.target, addresses[hinted], now)
    assert s.due(now) == hinted


@given(rounds=st.integers(0, 10_000), seed=st.integers(0, 2**32),
       first=st.floats(0.001, 1.0), cap=st.floats(0.001, 5.0))
def test_the_backoff_never_exceeds_its_cap(rounds, seed, first, cap):
    first = min(first, cap)
    s = LeaderSearch((A,), random.Random(seed), backoff_first_s=first, backoff_cap_s=cap,
                     fruitless_rounds=rounds)
    ceiling = min(cap, first * 2.0 ** min(30, max(0, rounds - 1)))
    assert ceiling / 2 <= s.backoff_s() <= ceiling <= cap
