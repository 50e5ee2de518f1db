"""Cost of one encode and one decode of file_request, in microseconds.

The limit it is compared with, measured in the same run: packing and
unpacking the same 41 bytes with a precompiled struct.Struct, the fastest
way Python has to do it without validation. Prints one JSON line.
"""
from __future__ import annotations

import json
import os
import struct
import sys
import timeit

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from uds import wire  # noqa: E402

ITERATIONS = 50_000
REPEATS = 7


def best_microseconds(function) -> float:
    times = timeit.repeat(function, number=ITERATIONS, repeat=REPEATS)
    return min(times) / ITERATIONS * 1e6


def main() -> None:
    node, file = os.urandom(16), os.urandom(16)
    message = wire.FileRequest.make(node, file=file)
    frames = wire.encode(message)
    raw_struct = struct.Struct("<BQQQQQ")
    fields = (3, message.node_uuid_upper, message.node_uuid_lower, 41,
              message.file_uuid_upper, message.file_uuid_lower)
    assert raw_struct.pack(*fields) == frames[0]

    for _ in range(ITERATIONS):  # warm up caches and the allocator
        wire.decode(wire.encode(message))

    encode_us = best_microseconds(lambda: wire.encode(message))
    decode_us = best_microseconds(lambda: wire.decode(frames))
    pack_us = best_microseconds(lambda: raw_struct.pack(*fields))
    unpack_us = best_microseconds(lambda: raw_struct.unpack(frames[0]))
    print(json.dumps({
        "benchmark": "wire_codec",
        "message": "file_request",
        "encode_us": round(encode_us, 3),
        "decode_us": round(decode_us, 3),
        "limit_struct_pack_us": round(pack_us, 3),
        "limit_struct_unpack_us": round(unpack_us, 3),
        "encode_ratio_to_limit": round(encode_us / pack_us, 1),
        "decode_ratio_to_limit": round(decode_us / unpack_us, 1),
        "encode_per_second": round(1e6 / encode_us),
        "decode_per_second": round(1e6 / decode_us),
        "python": sys.version.split()[0],
    }))


if __name__ == "__main__":
    main()
