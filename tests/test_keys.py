"""KeyFolder: creation, validation and the errors an operator will see."""

import os
import stat

import pytest
import zmq
import zmq.auth

from wire.keys import KeyFolder, KeyFolderError

SECRET_FILES = ("private/server.key_secret", "private/client.key_secret", "private/raft.password")
REQUIRED_FILES = ("public/server.key", "public/client.key", *SECRET_FILES)


@pytest.fixture
def folder(tmp_path):
    return KeyFolder.create(tmp_path / "keys")


def test_create_writes_usable_key_pairs(folder):
    for public, secret in (folder.server_keypair(), folder.client_keypair()):
        assert len(public) == len(secret) == 40
        assert zmq.curve_public(secret) == public
    assert folder.server_public_key() == folder.server_keypair()[0]
    assert folder.server_keypair() != folder.client_keypair()
    assert folder.admitted_public_keys() == {
        folder.server_keypair()[0],
        folder.client_keypair()[0],
    }
    assert folder.public_dir == folder.path / "public"


def test_create_sets_private_permissions(folder):
    assert stat.S_IMODE(os.stat(folder.path / "private").st_mode) == 0o700
    for name in SECRET_FILES:
        assert stat.S_IMODE(os.stat(folder.path / name).st_mode) == 0o600
    # Only public certificates are in public/, so it can be shared as is.
    assert sorted(p.name for p in folder.public_dir.iterdir()) == ["client.key", "server.key"]


def test_raft_password_is_32_random_bytes_hex(folder, tmp_path):
    password = folder.raft_password()
    assert len(bytes.fromhex(password)) == 32
    assert KeyFolder.create(tmp_path / "other").raft_password() != password


def test_open_reads_back_the_same_keys(folder):
    reopened = KeyFolder.open(folder.path)
    assert reopened.server_keypair() == folder.server_keypair()
    assert reopened.client_keypair() == folder.client_keypair()
    assert reopened.raft_password() == folder.raft_password()


def test_create_refuses_existing_keys(folder):
    with pytest.raises(KeyFolderError, match="already exists"):
        KeyFolder.create(folder.path)
    # The existing keys are untouched.
    assert KeyFolder.open(folder.path).server_keypair() == folder.server_keypair()


def test_create_accepts_existing_empty_directory(tmp_path):
    KeyFolder.create(tmp_path)
    assert KeyFolder.open(tmp_path).raft_password()


def test_create_refuses_a_file_path(tmp_path):
    path = tmp_path / "not-a-dir"
    path.write_text("x")
    with pytest.raises(KeyFolderError, match="not a directory"):
        KeyFolder.create(path)


def test_open_missing_folder(tmp_path):
    with pytest.raises(KeyFolderError, match="server.key"):
        KeyFolder.open(tmp_path / "nowhere")


@pytest.mark.parametrize("name", REQUIRED_FILES)
def test_open_names_the_missing_file(folder, name):
    (folder.path / name).unlink()
    with pytest.raises(KeyFolderError) as caught:
        KeyFolder.open(folder.path)
    assert str(folder.path / name) in str(caught.value)


@pytest.mark.parametrize("name", SECRET_FILES)
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620])
def test_open_refuses_secrets_open_to_others(folder, name, mode):
    os.chmod(folder.path / name, mode)
    with pytest.raises(KeyFolderError, match="chmod 600") as caught:
        KeyFolder.open(folder.path)
    assert str(folder.path / name) in str(caught.value)


def test_open_refuses_a_garbled_public_key(folder):
    cert = folder.public_dir / "client.key"
    cert.write_text(cert.read_text().replace('public-key = "', 'public-key = "~~'))
    with pytest.raises(KeyFolderError, match="client.key"):
        KeyFolder.open(folder.path)


def test_open_refuses_public_key_not_matching_secret(folder, tmp_path):
    other = KeyFolder.create(tmp_path / "other")
    (folder.public_dir / "server.key").write_bytes(
        (other.public_dir / "server.key").read_bytes()
    )
    with pytest.raises(KeyFolderError, match="does not match"):
        KeyFolder.open(folder.path)


def test_open_refuses_empty_raft_password(folder):
    (folder.path / "private/raft.password").write_text("\n")
    with pytest.raises(KeyFolderError, match="raft.password is empty"):
        KeyFolder.open(folder.path)


def test_admitted_keys_follow_public_dir(folder, tmp_path):
    cert, _ = zmq.auth.create_certificates(tmp_path, "worker7")
    os.replace(cert, folder.public_dir / "worker7.key")
    public, _ = zmq.auth.load_certificate(folder.public_dir / "worker7.key")
    assert public in folder.admitted_public_keys()
    (folder.public_dir / "worker7.key").unlink()
    assert public not in folder.admitted_public_keys()


def test_admitted_keys_report_a_bad_certificate(folder):
    (folder.public_dir / "junk.key").write_text("metadata\n")
    with pytest.raises(KeyFolderError, match="junk.key"):
        folder.admitted_public_keys()
