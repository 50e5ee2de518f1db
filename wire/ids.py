"""128-bit identifiers: node ids, job ids and file ids; and the block hashes
that bind a file's content to its id (doc/storage.md, "File ids").

On the wire an id is two uint64 halves (`upper` = the first 8 bytes read
big-endian); in bodies and in Python it is 16 bytes; for people it is 32
lowercase hex characters.

A file id is a tree hash, so that any 1 MiB block can be checked on its own:

    block_hash(i) = BLAKE3(bytes [i * BLOCK_BYTES, (i + 1) * BLOCK_BYTES))   32 bytes
    file_id       = BLAKE3-derive_key(FILE_ID_CONTEXT,
                        size as 8 bytes big-endian || block_hash(0) || block_hash(1) || ...)[:16]

A file of `size` bytes has ceil(size / BLOCK_BYTES) blocks (none when empty);
every block is full but the last. The list of block hashes is the file's
manifest. The id's derive_key mode keeps it apart from any block hash, and
the size in front binds where the last block ends. A file of one block needs
no manifest: its block, hashed and put through `file_id_of_blocks`, gives the id.

Rules: this module is the one definition; everything that hashes files calls
it. Nothing here copies a caller's buffer: hashing walks memoryviews.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import blake3

ID_BYTES = 16
BLOCK_BYTES = 1 << 20  # 1 MiB: the unit of verification, of the worker's cache and of its fetches
BLOCK_HASH_BYTES = 32
FILE_ID_CONTEXT = "uds 2026-11 file id over 1 MiB block hashes"  # BLAKE3 derive_key context
_SIZE_BYTES = 8


class ManifestMismatch(ValueError):
    """A manifest does not belong to the file id and size it was offered for."""


def split_id(identifier: bytes) -> tuple[int, int]:
    if len(identifier) != ID_BYTES:
        raise ValueError(f"an id is {ID_BYTES} bytes, got {len(identifier)}")
    return int.from_bytes(identifier[:8], "big"), int.from_bytes(identifier[8:], "big")


def join_id(upper: int, lower: int) -> bytes:
    return upper.to_bytes(8, "big") + lower.to_bytes(8, "big")


def new_id() -> bytes:
    return os.urandom(ID_BYTES)


def block_count(size: int) -> int:
    """Blocks of a file of `size` bytes (0 for an empty file)."""
    if size < 0:
        raise ValueError(f"negative size {size}")
    return -(-size // BLOCK_BYTES)


def block_length(size: int, index: int) -> int:
    """Bytes in block `index` of a file of `size` bytes."""
    if not 0 <= index < block_count(size):
        raise IndexError(f"block {index} of a file of {size} bytes")
    return min(BLOCK_BYTES, size - index * BLOCK_BYTES)


def block_hash(block: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte hash of one block's bytes."""
    return blake3.blake3(block).digest()


def file_id_of_blocks(size: int, block_hashes: bytes | bytearray | memoryview) -> bytes:
    """The file id of a file of `size` bytes whose blocks hash to `block_hashes`
    (their concatenation, in order)."""
    hasher = blake3.blake3(derive_key_context=FILE_ID_CONTEXT)
    hasher.update(size.to_bytes(_SIZE_BYTES, "big"))
    hasher.update(block_hashes)
    return hasher.digest(length=ID_BYTES)


@dataclass(frozen=True, slots=True)
class BlockManifest:
    """The block hashes of one file: `hashes` is their concatenation, 32 bytes each."""

    size: int
    hashes: bytes

    def __post_init__(self) -> None:
        if len(self.hashes) != block_count(self.size) * BLOCK_HASH_BYTES:
            raise ManifestMismatch(f"a file of {self.size} bytes has {block_count(self.size)} blocks, "
                                   f"the manifest {len(self.hashes)} bytes of hashes")

    @property
    def block_count(self) -> int:
        return block_count(self.size)

    def block_hash(self, index: int) -> bytes:
        if not 0 <= index < self.block_count:
            raise IndexError(f"block {index} of a file of {self.size} bytes")
        return self.hashes[index * BLOCK_HASH_BYTES:(index + 1) * BLOCK_HASH_BYTES]

    def file_id(self) -> bytes:
        return file_id_of_blocks(self.size, self.hashes)

    def check(self, file_id: bytes, size: int) -> None:
        """Raise ManifestMismatch unless this is the manifest of (file_id, size)."""
        if size != self.size:
            raise ManifestMismatch(f"{file_id.hex()}: manifest of {self.size} bytes, file of {size}")
        actual = self.file_id()
        if actual != file_id:
            raise ManifestMismatch(f"{file_id.hex()}: manifest hashes to {actual.hex()}")

    def block_matches(self, index: int, block: bytes | bytearray | memoryview) -> bool:
        """Whether `block` is block `index` of this file (its length and its hash)."""
        return len(block) == block_length(self.size, index) and block_hash(block) == self.block_hash(index)


class FileHasher:
    """A file id and manifest from content fed in pieces of any size, in one pass.
    Pieces are hashed where they lie (no copies); a block's hash is taken as soon
    as its last byte arrives."""

    __slots__ = ("size", "_block", "_block_filled", "_hashes")

    def __init__(self) -> None:
        self.size = 0
        self._block = blake3.blake3()
        self._block_filled = 0
        self._hashes = bytearray()

    def update(self, piece: bytes | bytearray | memoryview) -> None:
        view = memoryview(piece).cast("B")
        while view:
            take = min(len(view), BLOCK_BYTES - self._block_filled)
            self._block.update(view[:take])
            self._block_filled += take
            self.size += take
            view = view[take:]
            if self._block_filled == BLOCK_BYTES:
                self._hashes += self._block.digest()
                self._block, self._block_filled = blake3.blake3(), 0

    def manifest(self) -> BlockManifest:
        hashes = bytes(self._hashes)
        if self._block_filled:
            hashes += self._block.digest()
        return BlockManifest(self.size, hashes)

    def digest(self) -> bytes:
        """The file id of everything fed so far."""
        return self.manifest().file_id()


def file_hasher() -> FileHasher:
    return FileHasher()


def manifest_of(content: bytes | bytearray | memoryview) -> BlockManifest:
    hasher = FileHasher()
    hasher.update(content)
    return hasher.manifest()


def file_id_of(content: bytes | bytearray | memoryview) -> bytes:
    return manifest_of(content).file_id()


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
