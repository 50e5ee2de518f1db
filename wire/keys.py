"""Cluster keys: one CURVE key pair per role, and who holds what.

`uds keys init DIR` writes the cluster's whole key set, to be kept off the
hosts (it holds every secret):

    public/ROLE.key           z85 public key of each role (client, master,
                              loadbalancer, storage, worker); more keys of
                              a role may be added as ROLE-NAME.key
    private/                  mode 0700
    private/ROLE.key_secret   mode 0600, one per role
    private/raft.password     mode 0600, pysyncobj's password (master/raft.py)
    private/admin.token       mode 0600, the cluster's admin token: what the
                              dashboard asks before it changes anything
                              (doc/dashboard.md)

`uds keys export --role ROLE DIR` writes what one host of that role holds:
the same layout with every role's public key (the keys it trusts and pins),
its own role's secret, the Raft password for masters only, and the admin
token for clients only. A cluster
file's `keys` names a folder holding one such folder per role,
`KEYS/ROLE/`; each process opens the one of its own role (`open_role`).

A daemon binds with its role's key pair, connects with it, and pins the
public key of the role it connects to. The ZAP handler (wire/transport.py)
admits every key in `public/` and tags the connection with the role named
by the file, so a peer's role is known from its key, never from what it says.
Certificates are in pyzmq's format (`zmq.auth.create_certificates`).
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import stat
import struct

import zmq
import zmq.auth
from zmq.utils import z85

from uds.wire.enums import NodeRole

RAFT_PASSWORD_FILE = "raft.password"
ADMIN_TOKEN_FILE = "admin.token"
PUBLIC_DIR = "public"
PRIVATE_DIR = "private"

RAFT_PASSWORD_BYTES = 32
ADMIN_TOKEN_BYTES = 32
CURVE_KEY_BYTES = 32
Z85_KEY_CHARS = 40  # CURVE_KEY_BYTES in z85

PRIVATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600
# Any of these bits on a secret means someone besides the owner can reach it.
GROUP_OTHER_BITS = 0o077

ROLES: tuple[NodeRole, ...] = tuple(NodeRole)
# Only these roles hold the Raft password.
RAFT_ROLES = frozenset({NodeRole.MASTER})
# Only these roles hold the admin token.
ADMIN_ROLES = frozenset({NodeRole.CLIENT})
# The role a connection goes to when its caller names none: a client's and a
# load balancer's go to the masters, a worker's to its load balancer; masters
# and storage nodes talk to their own kind.
UPSTREAM_ROLE: dict[NodeRole, NodeRole] = {
    NodeRole.CLIENT: NodeRole.MASTER,
    NodeRole.WORKER: NodeRole.LOADBALANCER,
    NodeRole.LOADBALANCER: NodeRole.MASTER,
    NodeRole.MASTER: NodeRole.MASTER,
    NodeRole.STORAGE: NodeRole.STORAGE,
}


class KeyFolderError(Exception):
    """The key folder is missing, incomplete, unreadable or too permissive."""


def role_name(role: NodeRole) -> str:
    """The role as it names files and folders: "loadbalancer"."""
    return NodeRole(role).name.lower()


def role_of_name(name: str) -> NodeRole:
    """The role a file or folder name stands for; ValueError if none."""
    try:
        return NodeRole[name.upper()]
    except KeyError:
        raise ValueError(f"unknown role {name!r}; one of: {', '.join(map(role_name, ROLES))}") from None


class KeyFolder:
    """The keys of one role, validated: its own pair, every role's public
    key, and the Raft password if it is a master. Opening it without its
    role's secret fails, so a daemon cannot start as a role it has no key for."""

    path: pathlib.Path
    role: NodeRole

    def __init__(self, path: str | os.PathLike[str], role: NodeRole) -> None:
        self.path = pathlib.Path(path)
        self.role = NodeRole(role)
        if not self.path.is_dir():
            raise KeyFolderError(f"no key folder for the {role_name(self.role)} role at {self.path}")
        self._public_keys = {peer: _read_public(self.public_dir / f"{role_name(peer)}.key")
                             for peer in ROLES}
        self._keypair = _load_keypair(self.path, self.role)
        self._raft_password = _load_raft_password(self.path) if self.role in RAFT_ROLES else None

    @classmethod
    def open(cls, path: str | os.PathLike[str], role: NodeRole) -> KeyFolder:
        return cls(path, role)

    @property
    def public_dir(self) -> pathlib.Path:
        return self.path / PUBLIC_DIR

    @property
    def private_dir(self) -> pathlib.Path:
        return self.path / PRIVATE_DIR

    def keypair(self) -> tuple[bytes, bytes]:
        """(z85 public, z85 secret) this role binds and connects with."""
        return self._keypair

    def public_key(self, role: NodeRole) -> bytes:
        """The z85 public key of `role`, pinned when connecting to it."""
        return self._public_keys[NodeRole(role)]

    def admitted_roles(self) -> dict[bytes, NodeRole]:
        """z85 public key -> role, for every `ROLE.key` and `ROLE-NAME.key`
        (another key of that role, e.g. one per host) in public/, read now
        (it may change). A file that names no role is an error: its key
        would have no role to be tagged with."""
        admitted: dict[bytes, NodeRole] = {}
        for cert in sorted(self.public_dir.glob("*.key")):
            try:
                role = role_of_name(cert.stem.split("-", 1)[0])
            except ValueError as fault:
                raise KeyFolderError(f"{cert}: {fault}") from None
            admitted[_read_public(cert)] = role
        return admitted

    def raft_password(self) -> str:
        if self._raft_password is None:
            raise KeyFolderError(f"{self.path} is a {role_name(self.role)} key folder; "
                                 f"only masters hold the Raft password")
        return self._raft_password

    def admin_token(self) -> str | None:
        """The cluster's admin token, read now; None when this folder holds
        none (another role's, or made before there was one). A token file
        others can read, or an empty one, is an error."""
        token_file = self.private_dir / ADMIN_TOKEN_FILE
        if not token_file.exists():
            return None
        return _read_secret_text(token_file, "the admin token")

    def __repr__(self) -> str:
        return f"KeyFolder({str(self.path)!r}, {role_name(self.role)})"


def open_role(keys_root: str | os.PathLike[str], role: NodeRole) -> KeyFolder:
    """The key folder of `role` under a cluster file's `keys`: KEYS/ROLE/."""
    return KeyFolder(pathlib.Path(keys_root) / role_name(role), role)


def create_cluster_keys(path: str | os.PathLike[str]) -> pathlib.Path:
    """Write a new key set (every role's pair and a Raft password) at `path`;
    refuse to touch existing keys."""
    root = pathlib.Path(path)
    _refuse_existing(root)
    try:
        public, private = _make_folders(root)
        for role in ROLES:
            public_file, secret_file = zmq.auth.create_certificates(private, role_name(role))
            os.chmod(secret_file, SECRET_FILE_MODE)
            os.replace(public_file, public / f"{role_name(role)}.key")
        _write_secret(private / RAFT_PASSWORD_FILE, secrets.token_hex(RAFT_PASSWORD_BYTES) + "\n")
        _write_secret(private / ADMIN_TOKEN_FILE, secrets.token_urlsafe(ADMIN_TOKEN_BYTES) + "\n")
    except OSError as e:
        raise KeyFolderError(f"cannot create key folder {root}: {e}") from e
    for role in ROLES:
        KeyFolder(root, role)  # what was written must read back
    return root


def export_role(cluster_keys: str | os.PathLike[str], role: NodeRole,
                destination: str | os.PathLike[str]) -> KeyFolder:
    """Write the folder one host of `role` holds, from a key set made by
    `create_cluster_keys`: every public key, its own secret, and the Raft
    password if it is a master. Nothing else leaves the key set."""
    source = KeyFolder(cluster_keys, role)
    root = pathlib.Path(destination)
    _refuse_existing(root)
    try:
        public, private = _make_folders(root)
        for peer in ROLES:
            shutil.copyfile(source.public_dir / f"{role_name(peer)}.key", public / f"{role_name(peer)}.key")
        secret_name = f"{role_name(role)}.key_secret"
        _write_secret(private / secret_name, (source.private_dir / secret_name).read_text())
        if role in RAFT_ROLES:
            _write_secret(private / RAFT_PASSWORD_FILE, source.raft_password() + "\n")
        admin_token = KeyFolder.admin_token(source)
        if role in ADMIN_ROLES and admin_token is not None:
            _write_secret(private / ADMIN_TOKEN_FILE, admin_token + "\n")
    except OSError as e:
        raise KeyFolderError(f"cannot write key folder {root}: {e}") from e
    return KeyFolder(root, role)


def export_every_role(cluster_keys: str | os.PathLike[str], keys_root: str | os.PathLike[str]) -> None:
    """KEYS_ROOT/ROLE/ for every role: what a one-host cluster (`uds dev`,
    tests) points its cluster file's `keys` at."""
    for role in ROLES:
        export_role(cluster_keys, role, pathlib.Path(keys_root) / role_name(role))


# -- writing ----------------------------------------------------------------

def _refuse_existing(root: pathlib.Path) -> None:
    """A key folder is only ever written where none is."""
    if root.exists() and not root.is_dir():
        raise KeyFolderError(f"{root} exists and is not a directory")
    for sub in (root / PUBLIC_DIR, root / PRIVATE_DIR):
        if sub.exists():
            raise KeyFolderError(f"{sub} already exists; refusing to overwrite cluster keys")


def _make_folders(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    public, private = root / PUBLIC_DIR, root / PRIVATE_DIR
    root.mkdir(parents=True, exist_ok=True)
    public.mkdir()
    # Closed before any secret is written into it, so there is no window
    # where a default umask leaves a secret readable by others.
    private.mkdir(mode=PRIVATE_DIR_MODE)
    os.chmod(private, PRIVATE_DIR_MODE)
    return public, private


def _write_secret(path: pathlib.Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


# -- loading ----------------------------------------------------------------

def _load_keypair(root: pathlib.Path, role: NodeRole) -> tuple[bytes, bytes]:
    public_file = root / PUBLIC_DIR / f"{role_name(role)}.key"
    secret_file = root / PRIVATE_DIR / f"{role_name(role)}.key_secret"
    public = _read_public(public_file)
    _check_secret_file(secret_file, f"the {role_name(role)} role's secret key")
    try:
        secret_public, secret = zmq.auth.load_certificate(secret_file)
    except (OSError, ValueError) as e:
        raise KeyFolderError(f"cannot read {secret_file}: {e}") from e
    if secret is None:
        raise KeyFolderError(f"{secret_file} holds no secret-key")
    _check_z85(secret_file, secret)
    # A stale public ROLE.key would make peers pin a key this role no longer
    # has; every connection would then fail with no clue why.
    if secret_public != public:
        raise KeyFolderError(f"{public_file} does not match the public key in {secret_file}")
    return public, secret


def _read_public(public_file: pathlib.Path) -> bytes:
    if not public_file.is_file():
        raise KeyFolderError(f"missing public certificate {public_file}")
    try:
        public, _ = zmq.auth.load_certificate(public_file)
    except (OSError, ValueError) as e:
        raise KeyFolderError(f"cannot read {public_file}: {e}") from e
    _check_z85(public_file, public)
    return public


def _load_raft_password(root: pathlib.Path) -> str:
    return _read_secret_text(root / PRIVATE_DIR / RAFT_PASSWORD_FILE, "the Raft password")


def _read_secret_text(secret_file: pathlib.Path, what: str) -> str:
    _check_secret_file(secret_file, what)
    try:
        text = secret_file.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFolderError(f"cannot read {secret_file}: {e}") from e
    if not text:
        raise KeyFolderError(f"{secret_file} is empty")
    return text


def _check_secret_file(secret_file: pathlib.Path, what: str) -> None:
    try:
        mode = secret_file.stat().st_mode
    except FileNotFoundError:
        raise KeyFolderError(f"missing secret file {secret_file} ({what})") from None
    except OSError as e:
        raise KeyFolderError(f"cannot stat {secret_file}: {e}") from e
    if not stat.S_ISREG(mode):
        raise KeyFolderError(f"{secret_file} is not a regular file")
    if mode & GROUP_OTHER_BITS:
        raise KeyFolderError(
            f"{secret_file} is accessible to group/others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {secret_file}"
        )
    if not os.access(secret_file, os.R_OK):
        raise KeyFolderError(f"{secret_file} is not readable by this user")


def _check_z85(source: pathlib.Path, key: bytes) -> None:
    try:
        valid = len(key) == Z85_KEY_CHARS and len(z85.decode(key)) == CURVE_KEY_BYTES
    except (ValueError, KeyError, struct.error):
        valid = False
    if not valid:
        raise KeyFolderError(f"{source} does not hold a valid z85 CURVE key")
