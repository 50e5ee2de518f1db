"""The timing constants of the shells that the simulation imitates (the load
balancer's and the worker's), read from those shells in one place. The
master's leader runs as its real core, which carries its own."""
from loadbalancer.node import (  # noqa: F401
    EVENTS_PER_BATCH, MASTER_HELLO_RETRY_S, NODE_REPORT_INTERVAL_S, RESEND_BATCH_S, SETTLE_HEARTBEATS,
)
from worker.node import HELLO_RETRY_S, RESEND_STATUS_S, STARTED_DELAY_S  # noqa: F401
