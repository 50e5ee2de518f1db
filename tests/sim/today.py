"""The timing constants of the one shell that the simulation imitates (the
load balancer's), read from that shell in one place. The master's leader and
the worker run as their real cores, which carry their own."""
from uds.loadbalancer.node import (  # noqa: F401
    EVENTS_PER_BATCH, MASTER_HELLO_RETRY_S, NODE_REPORT_INTERVAL_S, RESEND_BATCH_S, SETTLE_HEARTBEATS,
)
