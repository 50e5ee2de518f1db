"""Today's timing constants, read from the modules that own them, in one
place: when the sim's nodes move onto the real cores, only this module
changes."""
from uds.loadbalancer.node import (  # noqa: F401
    EVENTS_PER_BATCH, MASTER_HELLO_RETRY_S, NODE_REPORT_INTERVAL_S, RESEND_BATCH_S, SETTLE_HEARTBEATS,
)
from uds.master.leader import HEARTBEAT_INTERVAL_S, RESEND_DISPATCHED_S  # noqa: F401
from uds.master.links import LOADBALANCER_LEASE_S, dispatch_records  # noqa: F401
from uds.master.node import IDLE_POLL_MS  # noqa: F401
from uds.master.proposals import (  # noqa: F401
    MAX_COMMANDS_PER_PROPOSAL, MAX_OUTSTANDING_PROPOSALS, PROPOSAL_TIMEOUT_S,
)
