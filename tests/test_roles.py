"""Each role's key may send only its own messages, against real daemons; a
key that is not admitted is told so at once; a daemon without its role's
secret does not start."""
import dataclasses
import os
import pathlib
import subprocess
import sys
import time

import pytest
import zmq

from uds import client
from uds import wire
from uds.storage.client import StorageClient
from golden import samples
from uds.wire.enums import ErrorCode, NodeRole
from uds.wire.keys import create_cluster_keys, export_every_role
from uds.wire.transport import Transport, recv_message, send_message

REPLY_TIMEOUT_MS = 5000
# A refusal must be said within this; the request timeout is far longer.
REFUSAL_WITHIN_S = 1.0
ROOT = pathlib.Path(__file__).resolve().parent.parent


def sample(message_type: type, **changes) -> wire.Message:
    [message] = [m for m in samples() if type(m) is message_type]
    return dataclasses.replace(message, **changes)


def _address(layout, role):
    loaded = layout.cluster
    return {NodeRole.MASTER: loaded.masters[0].address, NodeRole.LOADBALANCER: loaded.loadbalancers[0].address,
            NodeRole.STORAGE: loaded.storage[0].address}[role]


def ask(layout, sender: NodeRole, receiver: NodeRole, message: wire.Message,
        timeout_ms: int = REPLY_TIMEOUT_MS) -> wire.Message | None:
    """Send `message` with `sender`'s key to the daemon of `receiver`; its reply."""
    with Transport(layout.keys(sender)) as transport:
        socket = transport.client_socket(zmq.DEALER, _address(layout, receiver), receiver)
        send_message(socket, wire.encode(message))
        if not socket.poll(timeout_ms, zmq.POLLIN):
            return None
        return wire.decode(recv_message(socket, None).frames)


def stats(layout, receiver: NodeRole) -> dict:
    reply = ask(layout, NodeRole.CLIENT, receiver, wire.StatsQuery.make(bytes(16), request_id=9))
    assert isinstance(reply, wire.StatsReply), reply
    return reply.counters


def assert_forbidden(reply, message):
    assert isinstance(reply, wire.Error), reply
    assert reply.error_code == ErrorCode.FORBIDDEN, reply
    assert reply.failed_type == message.message_type
    return reply.reason


WORKER_HELLO = sample(wire.Hello)
LOADBALANCER_HELLO = sample(wire.Hello, role=int(NodeRole.LOADBALANCER), slots=0, cache_bytes=0)


def test_a_client_key_cannot_say_hello_as_a_worker(shared_cluster):
    layout = shared_cluster.layout
    before = stats(layout, NodeRole.LOADBALANCER)
    reason = assert_forbidden(ask(layout, NodeRole.CLIENT, NodeRole.LOADBALANCER, WORKER_HELLO), WORKER_HELLO)
    assert "hello from a client key" in reason
    after = stats(layout, NodeRole.LOADBALANCER)
    assert after["slots"] == before["slots"]  # no worker joined
    assert after["forbidden"] == before.get("forbidden", 0) + 1


def test_a_worker_key_cannot_say_hello_as_another_role(shared_cluster):
    reply = ask(shared_cluster.layout, NodeRole.WORKER, NodeRole.LOADBALANCER, LOADBALANCER_HELLO)
    assert "hello as a loadbalancer from a worker key" in assert_forbidden(reply, LOADBALANCER_HELLO)


def test_a_client_key_cannot_report_a_worker_status(shared_cluster):
    status = sample(wire.WorkerStatus)
    before = stats(shared_cluster.layout, NodeRole.LOADBALANCER)
    assert_forbidden(ask(shared_cluster.layout, NodeRole.CLIENT, NodeRole.LOADBALANCER, status), status)
    after = stats(shared_cluster.layout, NodeRole.LOADBALANCER)
    assert after["forbidden"] == before.get("forbidden", 0) + 1
    assert after.get("worker_statuses", 0) == before.get("worker_statuses", 0)


def test_a_client_key_cannot_take_a_load_balancers_place(shared_cluster):
    layout = shared_cluster.layout
    for message in (LOADBALANCER_HELLO, sample(wire.ChunkEvents), sample(wire.NodeReport)):
        assert_forbidden(ask(layout, NodeRole.CLIENT, NodeRole.MASTER, message), message)
    # The real load balancer still gets the work.
    job = shared_cluster.connection.submit_job("/bin/true", chunks=1)
    assert job.wait(timeout=60).state == "succeeded"


def test_a_worker_key_cannot_submit_jobs(shared_cluster):
    submit = sample(wire.JobSubmit)
    assert_forbidden(ask(shared_cluster.layout, NodeRole.WORKER, NodeRole.MASTER, submit), submit)
    with pytest.raises(client.UnknownJobError):
        shared_cluster.connection.job(submit.job_uuid.hex()).status()


@pytest.mark.parametrize("receiver", [NodeRole.MASTER, NodeRole.STORAGE])
def test_an_error_is_never_answered(shared_cluster, receiver):
    error = sample(wire.Error)
    # Neither node has a use for an error from a client: counted, not answered.
    # Other traffic the node does not serve (a storage node's heartbeat to
    # masters that keep no storage membership) is counted and answered: only
    # an unanswered message makes `unexpected` outrun `errors_sent`.
    before = stats(shared_cluster.layout, receiver)
    assert ask(shared_cluster.layout, NodeRole.CLIENT, receiver, error, timeout_ms=500) is None
    after = stats(shared_cluster.layout, receiver)
    unanswered = ((after["unexpected"] - before.get("unexpected", 0))
                  - (after.get("errors_sent", 0) - before.get("errors_sent", 0)))
    assert unanswered == 1


# -- refusals are said at once -----------------------------------------------

def _cluster_file_with_keys(layout, folder: pathlib.Path) -> pathlib.Path:
    text = layout.path.read_text().replace('keys = "keys"', f'keys = "{folder / "keys"}"')
    assert str(folder) in text
    (folder / "cluster.toml").write_text(text)
    return folder / "cluster.toml"


@pytest.fixture(scope="module")
def stranger_cluster_file(shared_cluster, tmp_path_factory):
    """The shared cluster's file and its servers' public keys, but a client
    key pair the cluster never admitted."""
    folder = tmp_path_factory.mktemp("stranger")
    create_cluster_keys(folder / "cluster-keys")
    export_every_role(folder / "cluster-keys", folder / "keys")
    real = shared_cluster.layout.root / "keys" / "client" / "public"
    for role in ("master", "loadbalancer", "storage", "worker"):
        (folder / "keys" / "client" / "public" / f"{role}.key").write_bytes((real / f"{role}.key").read_bytes())
    return _cluster_file_with_keys(shared_cluster.layout, folder)


def test_keys_of_another_cluster_are_told_so_at_once(shared_cluster, tmp_path):
    create_cluster_keys(tmp_path / "cluster-keys")
    export_every_role(tmp_path / "cluster-keys", tmp_path / "keys")
    with client.connect(_cluster_file_with_keys(shared_cluster.layout, tmp_path), timeout=30) as connection:
        started = time.monotonic()
        with pytest.raises(client.AuthenticationRefused, match="by master at .*: it ends every handshake"):
            connection.nodes()
        assert time.monotonic() - started < REFUSAL_WITHIN_S


def test_a_key_not_admitted_is_told_so_at_once(shared_cluster, stranger_cluster_file):
    address = shared_cluster.layout.cluster.masters[0].address
    with client.connect(stranger_cluster_file, timeout=30) as connection:
        started = time.monotonic()
        with pytest.raises(client.AuthenticationRefused) as caught:
            connection.nodes()
        assert time.monotonic() - started < REFUSAL_WITHIN_S
    assert str(caught.value) == f"authentication refused by master at {address}: this key is not admitted"


def test_storage_refusal_is_said_at_once(shared_cluster, stranger_cluster_file, tmp_path):
    address = shared_cluster.layout.cluster.storage[0].address
    with client.connect(stranger_cluster_file, timeout=30) as connection:
        started = time.monotonic()
        with pytest.raises(client.AuthenticationRefused, match=f"refused by storage at {address}: this key"):
            connection.put(b"not admitted")
        assert time.monotonic() - started < REFUSAL_WITHIN_S


def test_the_command_says_the_key_is_refused(shared_cluster, stranger_cluster_file):
    environment = dict(os.environ, PYTHONPATH=str(ROOT))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "uds.client.cli", "--cluster", str(stranger_cluster_file), "nodes"],
                            capture_output=True, timeout=60, env=environment)
    # The interpreter's start is in this figure too; without the monitor it takes 30 s.
    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert b"this key is not admitted" in result.stderr, result.stderr


def test_storage_client_with_an_admitted_key_is_not_refused(shared_cluster):
    layout = shared_cluster.layout
    with Transport(layout.keys(NodeRole.WORKER)) as transport:
        with StorageClient(transport, layout.cluster.storage[0].address, bytes(16)) as storage:
            file_id, size = storage.put_bytes(b"from a worker key")
            assert storage.get(file_id) == b"from a worker key"


# -- a daemon needs its own role's secret --------------------------------------

@pytest.mark.parametrize("role", ["storage", "master"])
def test_a_daemon_without_its_roles_secret_does_not_start(daemons, role):
    secret = daemons.root / "keys" / role / "private" / f"{role}.key_secret"
    secret.unlink()
    daemon = daemons.start(role, wait=False)
    assert daemon.process.wait(timeout=30) == 2
    output = daemon.log().strip()
    assert output.splitlines() == [f"{role}: missing secret file {secret} (the {role} role's secret key)"]
