"""Who may send what: for each message type, the roles whose keys may send
it. The request dispatcher (daemon/dispatch.py) checks every message against
this table, with the role the transport learnt from the sender's key
(wire/keys.py), and answers anything else with ERR_FORBIDDEN.

Rules: a type missing here is sent by nobody, so a new message type is
refused until it is added. A message that names its sender's role (hello)
must name the role of its key: a client key cannot say hello as a worker.
"""
from __future__ import annotations

from uds.wire.enums import MessageType as T
from uds.wire.enums import NodeRole

CLIENT, MASTER, LOADBALANCER, STORAGE, WORKER = (
    NodeRole.CLIENT, NodeRole.MASTER, NodeRole.LOADBALANCER, NodeRole.STORAGE, NodeRole.WORKER)
ANYONE = frozenset(NodeRole)
# Those who read and write files: clients, and workers for inputs and outputs.
FILE_USERS = frozenset({CLIENT, WORKER})
# Those who read files: also storage nodes, which pull a replica from another in a repair.
FILE_READERS = frozenset({CLIENT, WORKER, STORAGE})

SENDERS: dict[T, frozenset[NodeRole]] = {
    # jobs: clients ask the masters
    T.JOB_SUBMIT: frozenset({CLIENT}),
    T.JOB_STATUS: frozenset({CLIENT}),
    T.JOB_CANCEL: frozenset({CLIENT}),
    T.JOB_RELEASE: frozenset({CLIENT}),
    T.JOB_SUBMIT_REPLY: frozenset({MASTER}),
    T.JOB_STATUS_REPLY: frozenset({MASTER}),
    # membership: workers join a load balancer, a load balancer the masters
    T.HELLO: frozenset({WORKER, LOADBALANCER}),
    T.HELLO_REPLY: frozenset({MASTER, LOADBALANCER}),
    T.HEARTBEAT: frozenset({WORKER, LOADBALANCER}),
    T.NODE_REPORT: frozenset({LOADBALANCER}),
    # the chunk path: masters -> load balancer -> workers, and results back
    T.CHUNK_DISPATCH: frozenset({MASTER}),
    T.CHUNK_CANCEL: frozenset({MASTER, LOADBALANCER}),
    T.WORKER_REQUEST: frozenset({LOADBALANCER}),
    T.WORKER_STATUS: frozenset({WORKER}),
    T.STATUS_ACK: frozenset({LOADBALANCER}),
    T.CHUNK_EVENTS: frozenset({LOADBALANCER}),
    T.CHUNK_EVENTS_ACK: frozenset({MASTER}),
    # files
    T.FILE_REQUEST: FILE_READERS,
    T.FILE_STAT: FILE_READERS,
    T.FILE_READ: FILE_READERS,
    T.FILE_MANIFEST: FILE_READERS,
    T.FILE_PUT_BEGIN: FILE_USERS,
    T.FILE_PUT_DATA: FILE_USERS,
    T.FILE_PUT_END: FILE_USERS,
    T.FILE_RESPONSE: frozenset({STORAGE}),
    T.FILE_STAT_REPLY: frozenset({STORAGE}),
    T.FILE_READ_REPLY: frozenset({STORAGE}),
    T.FILE_MANIFEST_REPLY: frozenset({STORAGE}),
    T.FILE_PUT_REPLY: frozenset({STORAGE}),
    # read-only questions any member of the cluster may ask, and their answers
    T.NODES_QUERY: ANYONE,
    T.EVENTS_QUERY: ANYONE,
    T.ATTEMPTS_QUERY: ANYONE,
    T.JOBS_QUERY: ANYONE,
    T.JOB_SPEC_QUERY: ANYONE,
    T.STATS_QUERY: ANYONE,
    T.NODES_REPLY: frozenset({MASTER, LOADBALANCER}),
    T.EVENTS_REPLY: frozenset({MASTER}),
    T.ATTEMPTS_REPLY: frozenset({MASTER}),
    T.JOBS_REPLY: frozenset({MASTER}),
    T.JOB_SPEC_REPLY: frozenset({MASTER}),
    T.STATS_REPLY: frozenset({MASTER, LOADBALANCER, STORAGE}),
    T.ERROR: ANYONE,
    # the Raft group's members: an operator's client asks the leader. There
    # is no admin role apart from the client role: whoever holds the
    # cluster's client key may change the membership.
    T.MASTER_CHANGE: frozenset({CLIENT}),
    T.MASTER_CHANGE_REPLY: frozenset({MASTER}),
    # storage nodes: membership through the masters, repair between nodes,
    # collection checked with the masters; pins and collection runs are an
    # operator's (client) requests
    T.STORAGE_HEARTBEAT: frozenset({STORAGE}),
    T.STORAGE_HEARTBEAT_REPLY: frozenset({MASTER}),
    T.FILE_REPLICATE: frozenset({STORAGE}),
    T.GC_CHECK: frozenset({STORAGE}),
    T.GC_CHECK_REPLY: frozenset({MASTER}),
    T.GC_RUN: frozenset({CLIENT}),
    T.GC_RUN_REPLY: frozenset({STORAGE}),
    T.FILE_PIN: frozenset({CLIENT}),
    T.FILE_PIN_REPLY: frozenset({MASTER}),
}

# Message types with a field naming the sender's own role.
ROLE_FIELDS: dict[T, str] = {T.HELLO: "role"}


# The same tables by type number: checking a message costs two dict lookups
# and a scan of a short tuple, where the role is found by identity (hashing
# an enum member would run Python code for every message).
_SENDERS_BY_NUMBER = {int(message_type): tuple(roles) for message_type, roles in SENDERS.items()}
_ROLE_FIELDS_BY_NUMBER = {int(message_type): field for message_type, field in ROLE_FIELDS.items()}


def refusal(role: NodeRole | None, message: object) -> str | None:
    """Why a sender of `role` may not send `message`, or None if it may."""
    number = message.message_type  # type: ignore[attr-defined]
    if role in _SENDERS_BY_NUMBER.get(number, ()):
        field = _ROLE_FIELDS_BY_NUMBER.get(number)
        if field is None or getattr(message, field) == role:
            return None
    return _reason(role, message)


def _role_text(role: object) -> str:
    return NodeRole(role).name.lower() if role in NodeRole._value2member_map_ else f"role {role}"


def _reason(role: NodeRole | None, message: object) -> str:
    name = T(message.message_type).name.lower()  # type: ignore[attr-defined]
    if role is None:
        return f"{name} from a peer of unknown role"
    if role not in SENDERS.get(T(message.message_type), ()):  # type: ignore[attr-defined]
        return f"{name} from a {_role_text(role)} key"
    field = ROLE_FIELDS[T(message.message_type)]  # type: ignore[attr-defined]
    return f"{name} as a {_role_text(getattr(message, field))} from a {_role_text(role)} key"
