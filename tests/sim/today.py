"""Today's timing constants, read from the shells that own them, in one
place: when the leader and worker cores take them over, only this module
changes."""
from uds.loadbalancer.node import (  # noqa: F401
    EVENTS_PER_BATCH, MASTER_HELLO_RETRY_S, NODE_REPORT_INTERVAL_S, RESEND_BATCH_S, SETTLE_HEARTBEATS,
)
from uds.master.node import (  # noqa: F401
    HEARTBEAT_INTERVAL_S, IDLE_POLL_MS, LOADBALANCER_LEASE_S, MAX_COMMANDS_PER_PROPOSAL,
    MAX_OUTSTANDING_PROPOSALS, PROPOSAL_TIMEOUT_S, RESEND_DISPATCHED_S, _dispatch_records as dispatch_records,
)
from uds.worker.node import HELLO_RETRY_S, RESEND_STATUS_S, STARTED_DELAY_S  # noqa: F401
