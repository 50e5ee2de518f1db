"""The one request dispatcher, without sockets: every rule, and the role table."""
import logging

import pytest

from uds import wire
from golden import samples
from uds.daemon.dispatch import Dispatcher, RequestRefused
from uds.wire.limits import ERROR_REASON_MAX_CHARS
from uds.wire.enums import ErrorCode, MessageType, NodeRole
from uds.wire.senders import SENDERS, refusal
from uds.wire.transport import Received

NODE = bytes(range(16))
PEER = b"peer"


class Refusal(Exception):
    pass


@pytest.fixture
def node():
    """A dispatcher serving stats and file reads, recording what it sends and counts."""
    sent, counted = [], []

    def on_stats(message, peer, now):
        return wire.StatsReply.make(NODE, request_id=message.request_id, role=int(NodeRole.STORAGE),
                                    counters={"now": int(now)})

    def on_read(message, peer, now):
        if message.offset == 1:
            raise Refusal("odd offset")
        if message.offset == 2:
            raise RequestRefused(ErrorCode.RANGE, "beyond the end")
        raise KeyError("a bug")

    dispatcher = Dispatcher("storage", NODE, {wire.StatsQuery: on_stats, wire.FileRead: on_read},
                            lambda peer, message: sent.append((peer, message)), counted.append,
                            logging.getLogger("test"), refusals={Refusal: ErrorCode.INVALID})
    return dispatcher, sent, counted


def deliver(dispatcher, message_or_frames, role=NodeRole.CLIENT, now=7.0):
    frames = message_or_frames if isinstance(message_or_frames, list) else wire.encode(message_or_frames)
    dispatcher.handle(Received(peer=PEER, role=role, frames=[memoryview(f) for f in frames]), now)


def read(offset):
    return wire.FileRead.make(NODE, request_id=5, file=bytes(16), offset=offset, length=1)


def the_error(sent):
    [(peer, message)] = sent
    assert peer == PEER and isinstance(message, wire.Error)
    return message


def test_a_handlers_return_value_is_the_reply(node):
    dispatcher, sent, counted = node
    deliver(dispatcher, wire.StatsQuery.make(NODE, request_id=3))
    [(peer, reply)] = sent
    assert peer == PEER and reply.request_id == 3 and reply.counters == {"now": 7}
    assert counted == []


def test_bytes_that_do_not_decode_are_malformed(node):
    dispatcher, sent, counted = node
    deliver(dispatcher, [bytes([int(MessageType.FILE_READ)]) + b"short"])
    error = the_error(sent)
    assert error.error_code == ErrorCode.MALFORMED and error.failed_type == MessageType.FILE_READ
    assert counted == ["malformed", "errors_sent"]


def test_a_type_not_served_is_unexpected(node):
    dispatcher, sent, counted = node
    deliver(dispatcher, wire.NodesQuery.make(NODE, request_id=4))
    error = the_error(sent)
    assert (error.error_code, error.request_id) == (ErrorCode.UNEXPECTED, 4)
    assert error.reason == "storage does not accept nodes_query"
    assert counted == ["unexpected", "errors_sent"]


# A storage node may read from another (repair pulls), so it is not among them.
@pytest.mark.parametrize("role", [NodeRole.MASTER, NodeRole.LOADBALANCER, None])
def test_a_type_the_role_may_not_send_is_forbidden(node, role):
    dispatcher, sent, counted = node
    deliver(dispatcher, read(0), role=role)
    error = the_error(sent)
    assert (error.error_code, error.failed_type) == (ErrorCode.FORBIDDEN, MessageType.FILE_READ)
    assert counted == ["forbidden", "errors_sent"]


def test_refusals_and_faults_become_errors(node):
    dispatcher, sent, counted = node
    for offset, code in ((1, ErrorCode.INVALID), (2, ErrorCode.RANGE), (3, ErrorCode.INTERNAL)):
        sent.clear()
        deliver(dispatcher, read(offset), role=NodeRole.WORKER)
        assert the_error(sent).error_code == code
    assert counted.count("internal_errors") == 1
    assert "KeyError" in the_error(sent).reason


def test_an_error_is_never_answered(node):
    dispatcher, sent, counted = node
    deliver(dispatcher, wire.Error.make(NODE, request_id=1, error_code=1, failed_type=0, reason="x"))
    assert sent == [] and counted == ["unexpected"]


def test_reasons_are_cut_to_a_readable_length(node):
    dispatcher, sent, _ = node
    dispatcher.send_error(PEER, 1, 0, ErrorCode.INVALID, "x" * 5000)
    assert len(the_error(sent).reason) == ERROR_REASON_MAX_CHARS


def test_every_message_type_has_senders():
    assert set(SENDERS) == set(MessageType)


@pytest.mark.parametrize("message", samples(), ids=lambda m: type(m).SPEC.name)
def test_the_table_admits_its_roles_and_no_other(message):
    allowed = SENDERS[MessageType(message.message_type)]
    for role in NodeRole:
        admitted = refusal(role, message) is None
        claimed = getattr(message, "role", role) if message.message_type == MessageType.HELLO else role
        assert admitted == (role in allowed and claimed == role), (role, message)


def test_hello_must_name_its_keys_role():
    [hello] = [m for m in samples() if isinstance(m, wire.Hello)]
    assert hello.role == NodeRole.WORKER
    assert refusal(NodeRole.WORKER, hello) is None
    assert refusal(NodeRole.LOADBALANCER, hello) == "hello as a worker from a loadbalancer key"
    assert refusal(NodeRole.CLIENT, hello) == "hello from a client key"
