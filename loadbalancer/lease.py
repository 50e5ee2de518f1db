"""The load balancer's own view of its lease from the masters.

The balancer counts its lease from the moment it SENT the request that the
masters granted (its own monotonic clock), never from the reply: the
masters' count starts at the commit, which is later. It believes it is
active only until

    sent_at + lease_s * (1 - DRIFT_MARGIN) - SAFETY_GAP_S

so that, even if its clock runs DRIFT_MARGIN faster than the leader's
(a later "now" in the leader's time per second of its own), it has stopped
dispatching before any master could grant the lease to another balancer
(doc/loadbalancer.md gives the arithmetic). No wall clocks are compared.

Pure: no sockets, no clock; `now` comes in.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Clock rates may differ by this fraction between balancer and masters.
DRIFT_MARGIN = 0.05
# Stop this much earlier still: the time a last assignment may take to go out.
SAFETY_GAP_S = 0.1
# A standby asks for the lease this often: a refusal costs the masters no
# Raft entry, and the sooner it asks after a lapse the shorter the failover.
ASK_INTERVAL_S = 0.1
# The holder renews this often: each renewal is a Raft entry, and three per
# lease let one be lost without a gap.
RENEW_INTERVAL_S = 0.5
# Requests that got no answer are forgotten after this long.
FORGET_REQUEST_S = 10.0


@dataclass
class BalancerLease:
    """Asked, granted, refused: whether this balancer may dispatch now."""

    epoch: int = 0                              # the highest epoch granted to it
    valid_until: float = float("-inf")          # on its own clock
    last_asked: float = float("-inf")
    asked: dict[int, float] = field(default_factory=dict)   # request id -> sent at

    def ask(self, request_id: int, now: float) -> None:
        """A lease request is being sent at `now`."""
        self.last_asked = now
        self.asked[request_id] = now
        for old in [rid for rid, sent in self.asked.items() if now - sent > FORGET_REQUEST_S]:
            del self.asked[old]

    def ask_due(self, now: float) -> bool:
        interval = RENEW_INTERVAL_S if self.active(now) else ASK_INTERVAL_S
        return now - self.last_asked >= interval

    def granted(self, request_id: int, epoch: int, lease_s: float) -> bool:
        """The masters granted the request `request_id` at `epoch`; True if
        it extends the lease. A lower epoch than one already held is stale."""
        sent_at = self.asked.pop(request_id, None)
        if sent_at is None or epoch < self.epoch:
            return False
        self.epoch = epoch
        self.valid_until = max(self.valid_until, sent_at + safe_term(lease_s))
        return True

    def refused(self, now: float) -> None:
        """The masters said another holds the lease: stop now."""
        self.valid_until = min(self.valid_until, now)

    def active(self, now: float) -> bool:
        return now < self.valid_until


def safe_term(lease_s: float) -> float:
    """How long after sending its request the balancer may act on the lease."""
    return max(0.0, lease_s * (1.0 - DRIFT_MARGIN) - SAFETY_GAP_S)
