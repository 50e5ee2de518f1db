"""The storage nodes' cluster messages: their heartbeat to the masters
(membership), repair between nodes, garbage collection and pins.

Declared like those of wire/messages.py (see wire/message_class.py), into
the same REGISTRY. See doc/storage.md for the protocols.
"""
from __future__ import annotations

from dataclasses import field

from uds.wire.message_class import MAX_TIME_MS, Message, message, require
from uds.wire.messages import NODE_FACTS
from uds.wire.schema import FILE_REF, ID, I64, U64, Choice, List, Map, Str, record

# At most this many file ids in one gc_check, gc_check_reply or file_pin:
# 16 bytes and about 3 of msgpack framing each, well inside one body.
MAX_FILES_PER_MESSAGE = 100_000
# A storage node's figures: name -> value, a few dozen at most.
FIGURES = Map(Str(64), I64, max_items=64)
STORAGE_MEMBER = record(node=ID, address=Str(1024), state=Choice(("alive", "lost")), free_bytes=U64)
FILE_IDS = List(ID, max_items=MAX_FILES_PER_MESSAGE)


@message("storage_heartbeat", body=dict(host=Str(255), address=Str(1024), version=U64, figures=FIGURES,
                                        **NODE_FACTS))
class StorageHeartbeat(Message):
    request_id: int
    start_time_ms: int
    host: str
    address: str
    version: int
    figures: dict
    software: str = ""              # NODE_FACTS (wire/messages.py)
    cpus: int = 0
    machine_memory_bytes: int = 0
    machine_disk_bytes: int = 0
    addresses: list = field(default_factory=list)

    def check(self) -> None:
        require(self.address.startswith(("tcp://", "ipc://")),
                f"storage_heartbeat: address {self.address!r} is not a tcp:// or ipc:// address")


@message("storage_heartbeat_reply", body=dict(nodes=List(STORAGE_MEMBER, max_items=4096)))
class StorageHeartbeatReply(Message):
    request_id: int
    heartbeat_interval_ms: int
    nodes: list


@message("file_replicate", body=dict(source=Str(1024)))
class FileReplicate(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    file_length: int
    source: str

    def check(self) -> None:
        require(self.source.startswith(("tcp://", "ipc://")),
                f"file_replicate: source {self.source!r} is not a tcp:// or ipc:// address")


@message("gc_check", body=dict(files=FILE_IDS))
class GcCheck(Message):
    request_id: int
    files: list


@message("gc_check_reply", body=dict(files=FILE_IDS))
class GcCheckReply(Message):
    request_id: int
    files: list


@message("gc_run")
class GcRun(Message):
    request_id: int
    dry_run: int

    def check(self) -> None:
        require(self.dry_run in (0, 1), f"gc_run: dry_run {self.dry_run} is not 0 or 1")


@message("gc_run_reply", body=dict(files=List(FILE_REF, max_items=MAX_FILES_PER_MESSAGE)))
class GcRunReply(Message):
    request_id: int
    dry_run: int
    blobs_examined: int
    bytes: int
    files: list

    def check(self) -> None:
        require(self.dry_run in (0, 1), f"gc_run_reply: dry_run {self.dry_run} is not 0 or 1")


@message("file_pin", body=dict(files=FILE_IDS))
class FilePin(Message):
    request_id: int
    until_ms: int
    files: list

    def check(self) -> None:
        require(self.until_ms <= MAX_TIME_MS, f"file_pin: until_ms {self.until_ms} is beyond {MAX_TIME_MS}")


@message("file_pin_reply")
class FilePinReply(Message):
    request_id: int
    file_count: int
