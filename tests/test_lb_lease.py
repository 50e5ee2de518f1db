"""The balancer's own view of its lease (loadbalancer/lease.py): it never
believes it is active past the point a master could grant the lease to
another balancer, whatever the clock rates within the drift margin."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from uds.loadbalancer.lease import ASK_INTERVAL_S, DRIFT_MARGIN, RENEW_INTERVAL_S, BalancerLease, safe_term
from uds.master.links import LOADBALANCER_LEASE_S

LEASE_S = LOADBALANCER_LEASE_S
# Each clock strays this far from real time; the two apart stay within the margin.
RATE = DRIFT_MARGIN / 2.5


def test_it_is_active_from_a_grant_until_the_safe_term_after_its_request_was_sent():
    lease = BalancerLease()
    assert not lease.active(0.0) and lease.ask_due(0.0)
    lease.ask(1, 10.0)
    assert not lease.ask_due(10.0 + ASK_INTERVAL_S - 0.01) and lease.ask_due(10.0 + ASK_INTERVAL_S + 1e-9)
    assert lease.granted(1, 3, LEASE_S)
    # Active, it renews less often: each renewal is a Raft entry.
    assert not lease.ask_due(10.0 + RENEW_INTERVAL_S - 0.01) and lease.ask_due(10.0 + RENEW_INTERVAL_S + 1e-9)
    assert lease.epoch == 3
    assert lease.active(10.0 + safe_term(LEASE_S) - 0.001)
    assert not lease.active(10.0 + safe_term(LEASE_S))
    assert safe_term(LEASE_S) < LEASE_S * (1 - DRIFT_MARGIN)


def test_a_reply_to_no_request_or_of_a_lower_epoch_extends_nothing_and_a_refusal_ends_it():
    lease = BalancerLease()
    assert not lease.granted(7, 1, LEASE_S)
    lease.ask(1, 0.0)
    lease.ask(2, 0.3)
    assert lease.granted(2, 5, LEASE_S)
    assert not lease.granted(1, 4, LEASE_S)          # a lower epoch: stale
    assert lease.epoch == 5
    lease.refused(0.5)
    assert not lease.active(0.5)


@given(balancer_rate=st.floats(-RATE, RATE), leader_rate=st.floats(-RATE, RATE),
       balancer_offset=st.floats(-1e6, 1e6), leader_offset=st.floats(-1e6, 1e6),
       renewals=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 0.5), st.booleans()),
                         min_size=1, max_size=12))
def test_the_balancer_stops_before_any_master_could_grant_the_lease_elsewhere(
        balancer_rate, leader_rate, balancer_offset, leader_offset, renewals):
    """Real time t; the balancer's clock reads b(t), the leader's l(t). Each
    request is sent at real s, committed at c >= s (the leader starts its
    count at l(c)) and answered, or lost. The lease could go elsewhere at
    the real time g with l(g) = l(c) + LEASE_S for the last commit."""
    def b(t: float) -> float:
        return balancer_offset + t * (1 + balancer_rate)

    def real_of_b(clock: float) -> float:
        return (clock - balancer_offset) / (1 + balancer_rate)

    lease = BalancerLease()
    real, last_commit = 0.0, None
    for request_id, (gap, delay, answered) in enumerate(renewals, start=1):
        real += gap
        lease.ask(request_id, b(real))
        if answered:   # only a committed request is answered; a lost one counts nowhere
            last_commit = real + delay / 2
            lease.granted(request_id, 1, LEASE_S)
    if lease.valid_until == float("-inf"):
        return
    # The leader may grant elsewhere once LEASE_S has passed on its clock.
    elsewhere_at = last_commit + LEASE_S / (1 + leader_rate)
    assert real_of_b(lease.valid_until) <= elsewhere_at
