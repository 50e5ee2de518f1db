"""cffi build script: compiles csrc/wire.h into the module uds.wire._wire_cffi.

Out-of-line API mode, so the C compiler itself lays out the structs and cffi
checks its own (packed) reading of them against that layout at build time.
"""
from __future__ import annotations

import pathlib

import cffi

HEADER = pathlib.Path(__file__).resolve().parent / "wire.h"


def cdef_source(header_text: str) -> str:
    """The declarations between the CDEF markers, without the packing macro
    (cffi is told `packed=True` instead)."""
    begin = header_text.index("/* CDEF BEGIN */")
    end = header_text.index("/* CDEF END */")
    return header_text[begin:end].replace("UDS_PACKED", "")


ffibuilder = cffi.FFI()
ffibuilder.cdef(cdef_source(HEADER.read_text()), packed=True)
ffibuilder.set_source(
    "uds.wire._wire_cffi",
    '#include "wire.h"',
    include_dirs=[str(HEADER.parent)],
    depends=[str(HEADER)],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
