"""Storage as a content-addressed dict, and the output every simulated
program writes: a proof of which job, chunk, attempt and worker made it."""
from __future__ import annotations

from typing import NamedTuple

from uds.wire.ids import file_id_of

FileRef = tuple[bytes, int]
PROOF_NAME = "proof"


class Proof(NamedTuple):
    job: bytes
    chunk: int
    attempt: int
    worker: bytes

    def content(self) -> bytes:
        return f"{self.job.hex()} {self.chunk} {self.attempt} {self.worker.hex()}".encode()

    @classmethod
    def parse(cls, content: bytes) -> "Proof":
        job, chunk, attempt, worker = content.decode().split()
        return cls(bytes.fromhex(job), int(chunk), int(attempt), bytes.fromhex(worker))


class ContentStore:
    """Blobs by id; the id is the content's hash, so a blob never changes."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, bytes] = {}

    def put(self, content: bytes) -> FileRef:
        file_id = file_id_of(content)
        self.blobs.setdefault(file_id, content)
        return file_id, len(content)

    def proof_of(self, ref: FileRef) -> Proof | None:
        content = self.blobs.get(bytes(ref[0]))
        return None if content is None else Proof.parse(content)
