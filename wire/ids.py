"""128-bit identifiers: node ids, job ids and file ids.

On the wire an id is two uint64 halves (`upper` = the first 8 bytes read
big-endian); in bodies and in Python it is 16 bytes; for people it is 32
lowercase hex characters. A file id is the first 128 bits of BLAKE2b of the
file's content, so the id names the bytes and can be checked against them.
"""
from __future__ import annotations

import hashlib
import os

ID_BYTES = 16


def split_id(identifier: bytes) -> tuple[int, int]:
    if len(identifier) != ID_BYTES:
        raise ValueError(f"an id is {ID_BYTES} bytes, got {len(identifier)}")
    return int.from_bytes(identifier[:8], "big"), int.from_bytes(identifier[8:], "big")


def join_id(upper: int, lower: int) -> bytes:
    return upper.to_bytes(8, "big") + lower.to_bytes(8, "big")


def new_id() -> bytes:
    return os.urandom(ID_BYTES)


def file_hasher() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=ID_BYTES)


def file_id_of(content: bytes | memoryview) -> bytes:
    hasher = file_hasher()
    hasher.update(content)
    return hasher.digest()


def id_to_hex(identifier: bytes) -> str:
    return identifier.hex()


def id_from_hex(text: str) -> bytes:
    """Parse 32 hex characters; raises ValueError with a readable reason."""
    if len(text) != 2 * ID_BYTES:
        raise ValueError(f"an id is {2 * ID_BYTES} hex characters, got {len(text)}: {text!r}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"not a hex id: {text!r}") from None
