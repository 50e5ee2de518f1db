"""The design document's seed structs must stay exactly as it declares them.

A C peer built from the design document packs generic_message, worker_request,
worker_status, file_request and file_response with the document's fields,
in the document's order, of the document's types. tests/seed_structs.h holds
those declarations verbatim; this test reads them and csrc/wire.h with one
strict little parser and compares field by field, so a seed struct cannot
drift again (worker_request.num_input_files once did: uint32_t where the
document says uint64_t). The compiled cffi module is held to the same list.
"""
from __future__ import annotations

import pathlib
import re

import pytest

from uds.wire._wire_cffi import ffi

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEED_COPY = ROOT / "tests" / "seed_structs.h"
HEADER = ROOT / "csrc" / "wire.h"
DESIGN_DOCUMENT = ROOT.parent / "shared" / "seeds" / "design-document.txt"

SEED_STRUCTS = ("generic_message", "worker_request", "worker_status", "file_request", "file_response")

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.DOTALL)
_STRUCT = re.compile(r"\bstruct\s+(\w+)\s*\{([^{}]*)\}")
_FIELD = re.compile(r"(struct\s+\w+|u?int(?:8|16|32|64)_t)\s+(\w+)")

Field = tuple[str, str]  # (type, name), e.g. ("uint64_t", "num_input_files")


class StructParseError(ValueError):
    """A struct body holds something other than plain `type name;` fields."""


def parse_structs(text: str) -> dict[str, list[Field]]:
    """Every `struct NAME { ... }` definition in `text`: its fields in order.

    Comments are dropped; each field must be `TYPE NAME;` with TYPE a fixed-
    width integer or a named struct. Anything else in a body raises, so an
    unreadable declaration can never pass as an empty or shorter one."""
    structs: dict[str, list[Field]] = {}
    for match in _STRUCT.finditer(_COMMENT.sub(" ", text)):
        name, body = match.groups()
        *declarations, rest = body.split(";")
        if rest.strip():
            raise StructParseError(f"struct {name}: {rest.strip()!r} lacks its ';'")
        fields = []
        for declaration in declarations:
            field = _FIELD.fullmatch(" ".join(declaration.split()))
            if field is None:
                raise StructParseError(f"struct {name}: cannot read field {declaration.strip()!r}")
            fields.append((" ".join(field.group(1).split()), field.group(2)))
        if name in structs:
            raise StructParseError(f"struct {name} is defined twice")
        structs[name] = fields
    return structs


def _show(field: Field | None) -> str:
    return "nothing" if field is None else f"`{field[0]} {field[1]}`"


def seed_drift(seed: dict[str, list[Field]], header: dict[str, list[Field]]) -> list[str]:
    """How `header` departs from `seed` for each seed struct, one line per
    difference; empty when every seed struct matches field for field."""
    problems = []
    for name, seed_fields in seed.items():
        if name not in header:
            problems.append(f"struct {name}: missing from csrc/wire.h")
            continue
        header_fields = header[name]
        for index in range(max(len(seed_fields), len(header_fields))):
            wanted = seed_fields[index] if index < len(seed_fields) else None
            found = header_fields[index] if index < len(header_fields) else None
            if wanted != found:
                problems.append(f"struct {name}: field {index} is {_show(found)} in csrc/wire.h, "
                                f"{_show(wanted)} in the design document")
    return problems


def _seed() -> dict[str, list[Field]]:
    return parse_structs(SEED_COPY.read_text())


def test_the_copy_holds_the_five_seed_structs():
    seed = _seed()
    assert tuple(seed) == SEED_STRUCTS
    assert seed["worker_request"][-1] == ("uint64_t", "num_input_files")
    assert seed["generic_message"] == [("uint8_t", "message_type"), ("uint64_t", "node_uuid_upper"),
                                       ("uint64_t", "node_uuid_lower"), ("uint64_t", "header_length")]


def test_wire_h_declares_every_seed_struct_as_the_design_document_does():
    assert seed_drift(_seed(), parse_structs(HEADER.read_text())) == []


def test_the_compiled_module_lays_out_every_seed_struct_as_the_design_document_does():
    compiled = {name: [(field.type.cname, field_name) for field_name, field in ffi.typeof(f"struct {name}").fields]
                for name in SEED_STRUCTS}
    assert seed_drift(_seed(), compiled) == []
    assert ffi.sizeof("struct worker_request") == 57


# Deliberately altered copies of csrc/wire.h: each must be caught, and named.
ALTERATIONS = {
    "the old 32-bit num_input_files": (
        "    uint64_t num_input_files;", "    uint32_t num_input_files;",
        "struct worker_request: field 4 is `uint32_t num_input_files` in csrc/wire.h, "
        "`uint64_t num_input_files` in the design document"),
    "a wider state": (
        "    uint8_t state;\n} UDS_PACKED;\n\n/* anyone -> storage: send me",
        "    uint16_t state;\n} UDS_PACKED;\n\n/* anyone -> storage: send me",
        "struct worker_status: field 3 is `uint16_t state` in csrc/wire.h, `uint8_t state`"),
    "two fields swapped": (
        "    uint64_t node_uuid_upper;    /* sender's node id */\n    uint64_t node_uuid_lower;",
        "    uint64_t node_uuid_lower;\n    uint64_t node_uuid_upper;    /* sender's node id */",
        "struct generic_message: field 1 is `uint64_t node_uuid_lower` in csrc/wire.h"),
    "a renamed field": (
        "    uint64_t file_length;\n} UDS_PACKED;\n\n/* any -> any",
        "    uint64_t length;\n} UDS_PACKED;\n\n/* any -> any",
        "struct file_response: field 3 is `uint64_t length` in csrc/wire.h, `uint64_t file_length`"),
    "an extra field": (
        "    uint64_t file_uuid_lower;\n} UDS_PACKED;\n\n/* storage -> requester: a whole file",
        "    uint64_t file_uuid_lower;\n    uint32_t flags;\n} UDS_PACKED;\n\n"
        "/* storage -> requester: a whole file",
        "struct file_request: field 3 is `uint32_t flags` in csrc/wire.h, nothing in the design document"),
    "a dropped field": (
        "    uint64_t program_length;\n", "",
        "struct worker_request: field 3 is `uint64_t num_input_files` in csrc/wire.h, "
        "`uint64_t program_length`"),
    "a missing struct": (
        "struct file_response {", "struct file_reply {",
        "struct file_response: missing from csrc/wire.h"),
}


@pytest.mark.parametrize("old, new, expected", ALTERATIONS.values(), ids=ALTERATIONS.keys())
def test_an_altered_header_is_caught(old, new, expected):
    text = HEADER.read_text()
    assert text.count(old) == 1, "the alteration no longer applies to csrc/wire.h"
    problems = seed_drift(_seed(), parse_structs(text.replace(old, new)))
    assert any(problem.startswith(expected) for problem in problems), problems


def test_an_altered_seed_copy_is_caught():
    altered = SEED_COPY.read_text().replace("  uint8_t state;", "  uint32_t state;")
    assert seed_drift(parse_structs(altered), parse_structs(HEADER.read_text())) == [
        "struct worker_status: field 3 is `uint8_t state` in csrc/wire.h, "
        "`uint32_t state` in the design document"]


@pytest.mark.parametrize("body", [
    "uint64_t a; uint64_t b",           # a field without its ';'
    "uint64_t a; unsigned long b;",     # not a fixed-width type
    "uint64_t a, b;",                   # two names in one declaration
    "uint64_t a[2];",                   # an array
])
def test_the_parser_refuses_what_it_cannot_read(body):
    with pytest.raises(StructParseError):
        parse_structs(f"struct odd {{ {body} }}")


def test_the_copy_is_verbatim_from_the_design_document():
    if not DESIGN_DOCUMENT.exists():
        pytest.skip(f"{DESIGN_DOCUMENT} is not beside this checkout")
    document = DESIGN_DOCUMENT.read_text()
    blocks = re.findall(r"^struct .*?^\}$", SEED_COPY.read_text(), re.DOTALL | re.MULTILINE)
    assert len(blocks) == len(SEED_STRUCTS)
    for block in blocks:
        assert block in document, block.splitlines()[0]
