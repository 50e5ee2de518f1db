"""Cluster keys: a key set with a pair per role, the folder each role's hosts
hold, validation, and the errors an operator will see."""

import os
import stat

import pytest
import zmq
import zmq.auth

from uds.wire.enums import NodeRole
from uds.wire.keys import (
    KeyFolder, KeyFolderError, create_cluster_keys, export_every_role, export_role, open_role, role_name,
)

ROLE_NAMES = ("client", "master", "loadbalancer", "storage", "worker")
SECRET_FILES = (*(f"private/{name}.key_secret" for name in ROLE_NAMES), "private/raft.password")
PUBLIC_FILES = tuple(f"public/{name}.key" for name in ROLE_NAMES)
SERVER_ROLES = (NodeRole.MASTER, NodeRole.LOADBALANCER, NodeRole.STORAGE)


@pytest.fixture
def cluster_keys(tmp_path):
    return create_cluster_keys(tmp_path / "keys")


@pytest.fixture
def folder(cluster_keys):
    return KeyFolder(cluster_keys, NodeRole.MASTER)


def test_create_writes_a_usable_pair_per_role(cluster_keys):
    pairs = {role: KeyFolder(cluster_keys, role).keypair() for role in NodeRole}
    assert sorted(map(role_name, pairs)) == sorted(ROLE_NAMES)
    for public, secret in pairs.values():
        assert len(public) == len(secret) == 40
        assert zmq.curve_public(secret) == public
    assert len({public for public, _ in pairs.values()}) == len(pairs)
    folder = KeyFolder(cluster_keys, NodeRole.WORKER)
    assert folder.admitted_roles() == {public: role for role, (public, _) in pairs.items()}
    assert all(folder.public_key(role) == pairs[role][0] for role in NodeRole)
    assert folder.public_dir == folder.path / "public"


def test_create_sets_private_permissions(cluster_keys):
    assert stat.S_IMODE(os.stat(cluster_keys / "private").st_mode) == 0o700
    for name in SECRET_FILES:
        assert stat.S_IMODE(os.stat(cluster_keys / name).st_mode) == 0o600
    # Only public certificates are in public/, so it can be shared as is.
    assert sorted(p.name for p in (cluster_keys / "public").iterdir()) == sorted(f"{n}.key" for n in ROLE_NAMES)


def test_raft_password_is_32_random_bytes_hex(folder, tmp_path):
    password = folder.raft_password()
    assert len(bytes.fromhex(password)) == 32
    other = create_cluster_keys(tmp_path / "other")
    assert KeyFolder(other, NodeRole.MASTER).raft_password() != password


def test_only_masters_get_the_raft_password(cluster_keys):
    with pytest.raises(KeyFolderError, match="only masters hold the Raft password"):
        KeyFolder(cluster_keys, NodeRole.WORKER).raft_password()


def test_open_reads_back_the_same_keys(folder):
    reopened = KeyFolder.open(folder.path, NodeRole.MASTER)
    assert reopened.keypair() == folder.keypair()
    assert reopened.raft_password() == folder.raft_password()


def test_create_refuses_existing_keys(folder):
    with pytest.raises(KeyFolderError, match="already exists"):
        create_cluster_keys(folder.path)
    # The existing keys are untouched.
    assert KeyFolder.open(folder.path, NodeRole.MASTER).keypair() == folder.keypair()


def test_create_accepts_existing_empty_directory(tmp_path):
    create_cluster_keys(tmp_path)
    assert KeyFolder.open(tmp_path, NodeRole.MASTER).raft_password()


def test_create_refuses_a_file_path(tmp_path):
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    with pytest.raises(KeyFolderError, match="not a directory"):
        create_cluster_keys(path)


def test_open_missing_folder(tmp_path):
    with pytest.raises(KeyFolderError, match="no key folder for the storage role"):
        KeyFolder.open(tmp_path / "nowhere", NodeRole.STORAGE)


@pytest.mark.parametrize("name", ("public/master.key", "private/master.key_secret", "private/raft.password"))
def test_open_names_the_missing_file(folder, name):
    (folder.path / name).unlink()
    with pytest.raises(KeyFolderError) as caught:
        KeyFolder.open(folder.path, NodeRole.MASTER)
    assert str(folder.path / name) in str(caught.value)


@pytest.mark.parametrize("name", ("private/master.key_secret", "private/raft.password"))
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_open_refuses_secrets_open_to_others(folder, name, mode):
    os.chmod(folder.path / name, mode)
    with pytest.raises(KeyFolderError, match="chmod 600") as caught:
        KeyFolder.open(folder.path, NodeRole.MASTER)
    assert str(folder.path / name) in str(caught.value)


def test_open_refuses_a_garbled_public_key(folder):
    cert = folder.public_dir / "client.key"
    cert.write_text(cert.read_text().replace('public-key = "', 'public-key = "~~'))
    with pytest.raises(KeyFolderError, match="client.key"):
        KeyFolder.open(folder.path, NodeRole.MASTER)


def test_open_refuses_public_key_not_matching_secret(folder, tmp_path):
    other = create_cluster_keys(tmp_path / "other")
    (folder.public_dir / "master.key").write_bytes((other / "public" / "master.key").read_bytes())
    with pytest.raises(KeyFolderError, match="does not match"):
        KeyFolder.open(folder.path, NodeRole.MASTER)


def test_open_refuses_empty_raft_password(folder):
    (folder.path / "private/raft.password").write_text("\n")
    with pytest.raises(KeyFolderError, match="raft.password is empty"):
        KeyFolder.open(folder.path, NodeRole.MASTER)


def test_admitted_keys_follow_public_dir(folder, tmp_path):
    cert, _ = zmq.auth.create_certificates(tmp_path, "worker-7")
    os.replace(cert, folder.public_dir / "worker-7.key")
    public, _ = zmq.auth.load_certificate(folder.public_dir / "worker-7.key")
    assert folder.admitted_roles()[public] == NodeRole.WORKER
    (folder.public_dir / "worker-7.key").unlink()
    assert public not in folder.admitted_roles()


def test_admitted_keys_report_a_bad_certificate(folder):
    (folder.public_dir / "worker-junk.key").write_text("metadata\n")
    with pytest.raises(KeyFolderError, match="worker-junk.key"):
        folder.admitted_roles()


def test_admitted_keys_refuse_a_key_of_no_role(folder):
    (folder.public_dir / "stranger.key").write_bytes((folder.public_dir / "client.key").read_bytes())
    with pytest.raises(KeyFolderError, match="stranger.key: unknown role"):
        folder.admitted_roles()


# -- what each host holds ----------------------------------------------------

def _files(root):
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


@pytest.mark.parametrize("role", list(NodeRole))
def test_export_holds_every_public_key_and_only_its_own_secret(cluster_keys, tmp_path, role):
    exported = export_role(cluster_keys, role, tmp_path / role_name(role))
    expected = [*PUBLIC_FILES, f"private/{role_name(role)}.key_secret"]
    if role == NodeRole.MASTER:
        expected.append("private/raft.password")
    if role == NodeRole.CLIENT:
        expected.append("private/admin.token")
    assert _files(exported.path) == sorted(expected)
    if role != NodeRole.CLIENT:
        assert exported.admin_token() is None
    assert exported.keypair() == KeyFolder(cluster_keys, role).keypair()
    assert stat.S_IMODE(os.stat(exported.private_dir).st_mode) == 0o700
    for secret in exported.private_dir.iterdir():
        assert stat.S_IMODE(os.stat(secret).st_mode) == 0o600


def test_a_clients_folder_holds_no_server_secret_and_no_raft_password(cluster_keys, tmp_path):
    exported = export_role(cluster_keys, NodeRole.CLIENT, tmp_path / "client")
    contents = b"".join(path.read_bytes() for path in exported.path.rglob("*") if path.is_file())
    for role in (*SERVER_ROLES, NodeRole.WORKER):
        server_secret = KeyFolder(cluster_keys, role).keypair()[1]
        assert server_secret not in contents
        with pytest.raises(KeyFolderError, match=f"{role_name(role)}.key_secret"):
            KeyFolder(exported.path, role)
    assert KeyFolder(cluster_keys, NodeRole.MASTER).raft_password().encode() not in contents
    with pytest.raises(KeyFolderError, match="only masters"):
        exported.raft_password()
    assert exported.admin_token() == KeyFolder(cluster_keys, NodeRole.CLIENT).admin_token()


def test_an_admin_token_others_can_read_is_refused(cluster_keys):
    token = cluster_keys / "private" / "admin.token"
    os.chmod(token, 0o644)
    with pytest.raises(KeyFolderError, match="chmod 600"):
        KeyFolder(cluster_keys, NodeRole.CLIENT).admin_token()


def test_export_refuses_existing_keys(cluster_keys, tmp_path):
    export_role(cluster_keys, NodeRole.WORKER, tmp_path / "w")
    with pytest.raises(KeyFolderError, match="already exists"):
        export_role(cluster_keys, NodeRole.WORKER, tmp_path / "w")


def test_export_every_role_lays_out_one_folder_per_role(cluster_keys, tmp_path):
    export_every_role(cluster_keys, tmp_path / "hosts")
    assert sorted(p.name for p in (tmp_path / "hosts").iterdir()) == sorted(ROLE_NAMES)
    for role in NodeRole:
        assert open_role(tmp_path / "hosts", role).keypair() == KeyFolder(cluster_keys, role).keypair()
