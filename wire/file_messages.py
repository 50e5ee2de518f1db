"""The storage nodes' file messages: reading a file whole (`file_request`)
or by ranges, its block manifest, its length, and uploading one in parts.

Declared like those of wire/messages.py (see wire/message_class.py), into
the same REGISTRY.
"""
from __future__ import annotations

from uds.wire.enums import PutStatus
from uds.wire.ids import BLOCK_HASH_BYTES, block_count
from uds.wire.message_class import Message, check_member, message, require


@message("file_request")
class FileRequest(Message):
    file_uuid_upper: int
    file_uuid_lower: int


@message("file_response", data=("data",))
class FileResponse(Message):
    file_uuid_upper: int
    file_uuid_lower: int
    file_length: int
    data: bytes | memoryview

    def check(self) -> None:
        require(self.file_length == len(self.data),
                f"file_response: file_length {self.file_length} != {len(self.data)} data bytes")


@message("file_put_begin")
class FilePutBegin(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    file_length: int


@message("file_put_data", data=("data",))
class FilePutData(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    offset: int
    data: bytes | memoryview


@message("file_put_end")
class FilePutEnd(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int


@message("file_put_reply")
class FilePutReply(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    status: int

    def check(self) -> None:
        check_member(PutStatus, self.status, "file_put_reply.status")


@message("file_stat")
class FileStat(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int


@message("file_stat_reply")
class FileStatReply(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    file_length: int
    present: int

    def check(self) -> None:
        require(self.present in (0, 1), f"file_stat_reply: present {self.present} is not 0 or 1")


@message("file_read")
class FileRead(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    offset: int
    length: int


@message("file_read_reply", data=("data",))
class FileReadReply(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    offset: int
    length: int
    data: bytes | memoryview

    def check(self) -> None:
        require(self.length == len(self.data),
                f"file_read_reply: length {self.length} != {len(self.data)} data bytes")


@message("file_manifest")
class FileManifest(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    first_block: int


@message("file_manifest_reply", data=("hashes",))
class FileManifestReply(Message):
    request_id: int
    file_uuid_upper: int
    file_uuid_lower: int
    file_length: int
    first_block: int
    block_count: int
    hashes: bytes | memoryview

    def check(self) -> None:
        require(self.block_count * BLOCK_HASH_BYTES == len(self.hashes),
                f"file_manifest_reply: {self.block_count} blocks but {len(self.hashes)} bytes of hashes")
        require(self.first_block + self.block_count <= block_count(self.file_length),
                f"file_manifest_reply: blocks {self.first_block}..+{self.block_count} past the "
                f"{block_count(self.file_length)} of a file of {self.file_length} bytes")
