"""Where a file lives: rendezvous (highest random weight) hashing of its id
over the storage nodes.

Every node gets a weight for every file, a hash of (node address, file id),
and a file's replicas are the R live nodes of highest weight. Everyone
computes the same order from the same membership with no coordination, and a
node joining or leaving moves only the files whose top R it enters or
leaves, about R/N of them.

A node's place is its address, the one thing the cluster file and the
masters' membership both name: a reader holding only the cluster file
computes the same order as one holding the masters' view. A node moved to a
new address is a node removed and another added; repair moves its files.

Pure: no sockets, no clock.
"""
from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

ALIVE, LOST = "alive", "lost"


@dataclass(frozen=True, slots=True)
class StorageMember:
    """One storage node as the masters (or the cluster file) know it."""
    address: str
    node: bytes = b""               # its node id; empty when known only from the cluster file
    state: str = ALIVE              # ALIVE or LOST
    free_bytes: int | None = None   # None: not known (from the cluster file)

    @property
    def alive(self) -> bool:
        return self.state == ALIVE


def weight(address: str, file_id: bytes) -> int:
    """The node's rendezvous weight for the file: 8 bytes of BLAKE2b."""
    digest = hashlib.blake2b(file_id, digest_size=8, key=address.encode()[:64]).digest()
    return int.from_bytes(digest, "big")


def rendezvous_order(file_id: bytes, members: Iterable[StorageMember]) -> list[StorageMember]:
    """Every member, highest weight first (ties, which need a hash collision,
    broken by address so the order is total)."""
    return sorted(members, key=lambda member: (-weight(member.address, file_id), member.address))


def replica_set(file_id: bytes, members: Iterable[StorageMember], replicas: int) -> list[StorageMember]:
    """The file's R homes: the first `replicas` live members in rendezvous order."""
    return [member for member in rendezvous_order(file_id, members) if member.alive][:replicas]


def read_order(file_id: bytes, members: Iterable[StorageMember]) -> list[StorageMember]:
    """Where to look for a file: live members in rendezvous order, then lost
    ones (a node declared lost may be back before the masters notice)."""
    ordered = rendezvous_order(file_id, members)
    return [member for member in ordered if member.alive] + [member for member in ordered if not member.alive]


def put_order(file_id: bytes, members: Iterable[StorageMember], size: int) -> list[StorageMember]:
    """Live members that may take a file of `size` bytes, in rendezvous order:
    a node known to be too full is skipped, and so the next in order takes
    its place."""
    return [member for member in rendezvous_order(file_id, members)
            if member.alive and (member.free_bytes is None or member.free_bytes >= size)]
