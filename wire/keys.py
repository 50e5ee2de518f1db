"""The cluster key folder: who may talk to whom.

Layout (one folder per cluster, copied to every host):

    public/server.key        z85 public key daemons bind with (clients pin it)
    public/client.key        z85 public key daemons and clients connect with
    public/*.key             every public key here is admitted by servers
    private/                 mode 0700
    private/server.key_secret, private/client.key_secret   mode 0600
    private/raft.password    mode 0600, pysyncobj's password (see master/raft.py)

Certificates are in pyzmq's format (`zmq.auth.create_certificates`), so the
authenticator reads `public/` directly. `public/server.key` is admitted too;
that is harmless because only daemons hold its secret.
"""

from __future__ import annotations

import os
import pathlib
import secrets
import stat
import struct

import zmq
import zmq.auth
from zmq.utils import z85

SERVER_KEY_NAME = "server"
CLIENT_KEY_NAME = "client"
RAFT_PASSWORD_FILE = "raft.password"
PUBLIC_DIR = "public"
PRIVATE_DIR = "private"

RAFT_PASSWORD_BYTES = 32
CURVE_KEY_BYTES = 32
Z85_KEY_CHARS = 40  # CURVE_KEY_BYTES in z85

PRIVATE_DIR_MODE = 0o700
SECRET_FILE_MODE = 0o600
# Any of these bits on a secret means someone besides the owner can reach it.
GROUP_OTHER_BITS = 0o077


class KeyFolderError(Exception):
    """The key folder is missing, incomplete, unreadable or too permissive."""


class KeyFolder:
    """A validated key folder. Build one with `create` or `open`."""

    path: pathlib.Path

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Open and validate `path`; same as `KeyFolder.open`."""
        self.path = pathlib.Path(path)
        self._server = self._load_keypair(SERVER_KEY_NAME)
        self._client = self._load_keypair(CLIENT_KEY_NAME)
        self._raft_password = self._load_raft_password()

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> KeyFolder:
        """Make a new key folder with fresh keys; refuse to touch existing keys."""
        root = pathlib.Path(path)
        if root.exists() and not root.is_dir():
            raise KeyFolderError(f"{root} exists and is not a directory")
        public = root / PUBLIC_DIR
        private = root / PRIVATE_DIR
        for sub in (public, private):
            if sub.exists():
                raise KeyFolderError(
                    f"{sub} already exists; refusing to overwrite cluster keys"
                )
        try:
            root.mkdir(parents=True, exist_ok=True)
            public.mkdir()
            # The directory is closed before any secret is written into it, so
            # there is no window where create_certificates' default umask
            # leaves a secret readable by others.
            private.mkdir(mode=PRIVATE_DIR_MODE)
            os.chmod(private, PRIVATE_DIR_MODE)
            for name in (SERVER_KEY_NAME, CLIENT_KEY_NAME):
                public_file, secret_file = zmq.auth.create_certificates(private, name)
                os.chmod(secret_file, SECRET_FILE_MODE)
                os.replace(public_file, public / f"{name}.key")
            password_file = private / RAFT_PASSWORD_FILE
            fd = os.open(
                password_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, SECRET_FILE_MODE
            )
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(RAFT_PASSWORD_BYTES) + "\n")
        except OSError as e:
            raise KeyFolderError(f"cannot create key folder {root}: {e}") from e
        return cls(root)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> KeyFolder:
        """Open an existing key folder, raising KeyFolderError naming any bad file."""
        return cls(path)

    @property
    def public_dir(self) -> pathlib.Path:
        """Folder of admitted public certificates (`*.key`)."""
        return self.path / PUBLIC_DIR

    @property
    def private_dir(self) -> pathlib.Path:
        return self.path / PRIVATE_DIR

    def server_keypair(self) -> tuple[bytes, bytes]:
        """(z85 public, z85 secret) that daemons bind with."""
        return self._server

    def client_keypair(self) -> tuple[bytes, bytes]:
        """(z85 public, z85 secret) that daemons and clients connect with."""
        return self._client

    def server_public_key(self) -> bytes:
        return self._server[0]

    def admitted_public_keys(self) -> set[bytes]:
        """z85 public keys of every `*.key` in public/, read now (it may change)."""
        keys = set()
        for cert in sorted(self.public_dir.glob("*.key")):
            keys.add(self._read_public(cert))
        return keys

    def raft_password(self) -> str:
        return self._raft_password

    def __repr__(self) -> str:
        return f"KeyFolder({str(self.path)!r})"

    # -- loading -----------------------------------------------------------

    def _load_keypair(self, name: str) -> tuple[bytes, bytes]:
        public_file = self.public_dir / f"{name}.key"
        secret_file = self.private_dir / f"{name}.key_secret"
        public = self._read_public(public_file)
        self._check_secret_file(secret_file)
        try:
            secret_public, secret = zmq.auth.load_certificate(secret_file)
        except (OSError, ValueError) as e:
            raise KeyFolderError(f"cannot read {secret_file}: {e}") from e
        if secret is None:
            raise KeyFolderError(f"{secret_file} holds no secret-key")
        _check_z85(secret_file, secret)
        # A stale public/NAME.key would make clients pin a key the server no
        # longer has; every connection would then fail with no clue why.
        if secret_public != public:
            raise KeyFolderError(
                f"{public_file} does not match the public key in {secret_file}"
            )
        return public, secret

    def _read_public(self, public_file: pathlib.Path) -> bytes:
        if not public_file.is_file():
            raise KeyFolderError(f"missing public certificate {public_file}")
        try:
            public, _ = zmq.auth.load_certificate(public_file)
        except (OSError, ValueError) as e:
            raise KeyFolderError(f"cannot read {public_file}: {e}") from e
        _check_z85(public_file, public)
        return public

    def _load_raft_password(self) -> str:
        password_file = self.private_dir / RAFT_PASSWORD_FILE
        self._check_secret_file(password_file)
        try:
            password = password_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise KeyFolderError(f"cannot read {password_file}: {e}") from e
        if not password:
            raise KeyFolderError(f"{password_file} is empty")
        return password

    @staticmethod
    def _check_secret_file(secret_file: pathlib.Path) -> None:
        try:
            mode = secret_file.stat().st_mode
        except FileNotFoundError:
            raise KeyFolderError(f"missing secret file {secret_file}") from None
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
