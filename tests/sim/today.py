"""Today's timing constants, read from the shells and cores that own them,
in one place. The worker runs as its real core, which carries its own."""
from loadbalancer.node import (  # noqa: F401
    EVENTS_PER_BATCH, MASTER_HELLO_RETRY_S, NODE_REPORT_INTERVAL_S, RESEND_BATCH_S, SETTLE_HEARTBEATS,
)
from master.leader import (  # noqa: F401
    HEARTBEAT_INTERVAL_S, LOADBALANCER_LEASE_S, MAX_COMMANDS_PER_PROPOSAL, MAX_OUTSTANDING_PROPOSALS,
    PROPOSAL_TIMEOUT_S, RESEND_DISPATCHED_S, dispatch_records,
)
from master.node import IDLE_POLL_MS  # noqa: F401
