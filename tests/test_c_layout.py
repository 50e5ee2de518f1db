"""gcc's layout of csrc/wire.h must be what the cffi module and the codec use."""
import pathlib
import shutil
import subprocess

import pytest

from uds import wire
from uds.wire._wire_cffi import ffi

CSRC = pathlib.Path(__file__).resolve().parent.parent / "csrc"
STRUCTS = ["generic_message"] + [cls.SPEC.name for cls in wire.REGISTRY.values()]


def _c_program() -> str:
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <string.h>', '#include "wire.h"',
             "int main(void) {"]
    for struct in STRUCTS:
        lines.append(f'  printf("size {struct} %zu\\n", sizeof(struct {struct}));')
        for field, _ in ffi.typeof(f"struct {struct}").fields:
            lines.append(f'  printf("offset {struct} {field} %zu %zu\\n", '
                         f'offsetof(struct {struct}, {field}), sizeof(((struct {struct} *)0)->{field}));')
    lines += [
        "  struct file_request request;",
        "  memset(&request, 0, sizeof request);",
        "  request.header.message_type = MSG_FILE_REQUEST;",
        "  request.header.node_uuid_upper = 0x0011223344556677ULL;",
        "  request.header.node_uuid_lower = 0x8899aabbccddeeffULL;",
        "  request.header.header_length = sizeof request;",
        "  request.file_uuid_upper = 0xa1b2c3d4e5f60718ULL;",
        "  request.file_uuid_lower = 0x293a4b5c6d7e8f90ULL;",
        '  printf("bytes ");',
        "  for (size_t i = 0; i < sizeof request; i++) printf(\"%02x\", ((unsigned char *)&request)[i]);",
        '  printf("\\n");',
        "  return 0;",
        "}",
    ]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def c_output(tmp_path_factory):
    if shutil.which("gcc") is None:
        pytest.fail("gcc is required (make test installs it)")
    folder = tmp_path_factory.mktemp("layout")
    source = folder / "layout.c"
    source.write_text(_c_program())
    binary = folder / "layout"
    subprocess.run(["gcc", "-Wall", "-Werror", "-std=c11", "-I", str(CSRC), str(source), "-o", str(binary)],
                   check=True)
    return subprocess.run([str(binary)], check=True, capture_output=True, text=True).stdout.splitlines()


def test_sizes_and_offsets_match_cffi(c_output):
    checked = 0
    for line in c_output:
        kind, *rest = line.split()
        if kind == "size":
            struct, size = rest
            assert int(size) == ffi.sizeof(f"struct {struct}"), struct
            checked += 1
        elif kind == "offset":
            struct, field, offset, size = rest
            assert int(offset) == ffi.offsetof(f"struct {struct}", field), (struct, field)
            assert int(size) == ffi.sizeof(dict(ffi.typeof(f"struct {struct}").fields)[field].type)
            checked += 1
    assert checked > 3 * len(STRUCTS)


def test_generic_message_is_25_packed_bytes(c_output):
    assert "size generic_message 25" in c_output
    assert "offset generic_message header_length 17 8" in c_output


def test_worker_request_is_the_design_documents_57_bytes(c_output):
    # The design document's worker_request ends in a uint64_t num_input_files.
    assert "size worker_request 57" in c_output
    assert "offset worker_request num_input_files 49 8" in c_output


def test_c_filled_file_request_decodes(c_output):
    hex_bytes = next(line.split()[1] for line in c_output if line.startswith("bytes "))
    message = wire.decode([bytes.fromhex(hex_bytes)])
    assert isinstance(message, wire.FileRequest)
    assert message.node_uuid == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert message.file_uuid == bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
    assert wire.encode(message) == [bytes.fromhex(hex_bytes)]
