"""A long fuzz campaign against wire.decode: 1,000,000 inputs by default.

Inputs are the golden vectors of every message type, mutated (truncated,
extended, bit-flipped, frames replaced, dropped, added, type byte changed,
bodies replaced by random msgpack), plus wholly random frames. Decode must
raise WireError or return a message that encodes back to itself; anything
else is a failure. Prints one JSON line; exits 1 if anything failed.

    python bench/fuzz_wire.py [--inputs N] [--seed S]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

import msgpack  # noqa: E402

from uds import wire  # noqa: E402
from golden import load_vectors  # noqa: E402

MAX_FAILURES_KEPT = 10


def random_msgpack(rng: random.Random, depth: int = 0):
    choice = rng.randrange(9 if depth < 3 else 6)
    if choice == 0:
        return None
    if choice == 1:
        return rng.choice([True, False])
    if choice == 2:
        return rng.choice([0, 1, -1, 2**32, 2**64 - 1, -(2**63), rng.randrange(-1000, 1000)])
    if choice == 3:
        return rng.choice([0.0, -1.5, 1e300, float("inf"), float("nan")])
    if choice == 4:
        return "".join(rng.choice("ab/.\0é") for _ in range(rng.randrange(6)))
    if choice == 5:
        return rng.randbytes(rng.choice([0, 3, 16, 17]))
    if choice == 6:
        return [random_msgpack(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["reason", "inputs", "events", "x", "chunk", "job"]): random_msgpack(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def mutate(rng: random.Random, golden: list[list[bytes]], bodies: dict) -> list[bytes]:
    if rng.random() < 0.05:
        return [rng.randbytes(rng.randrange(0, 100)) for _ in range(rng.randrange(0, 6))]
    frames = list(rng.choice(golden))
    for _ in range(rng.randrange(1, 4)):
        if not frames:
            frames.append(rng.randbytes(rng.randrange(0, 64)))
            continue
        index = rng.randrange(len(frames))
        frame = bytearray(frames[index])
        operation = rng.randrange(8)
        if operation == 0:
            frames[index] = bytes(frame[: rng.randrange(0, len(frame) + 1)])
        elif operation == 1:
            frames[index] = bytes(frame) + rng.randbytes(rng.randrange(1, 32))
        elif operation in (2, 3) and frame:
            for _ in range(rng.randrange(1, 4)):
                frame[rng.randrange(len(frame))] ^= 1 << rng.randrange(8)
            frames[index] = bytes(frame)
        elif operation == 4:
            frames[index] = rng.randbytes(rng.randrange(0, 80))
        elif operation == 5:
            del frames[index]
        elif operation == 6 and frames[0]:
            head = bytearray(frames[0])
            head[0] = rng.randrange(256)
            frames[0] = bytes(head)
        elif len(frames) > 1 and frames[0][:1] in bodies:
            keys = bodies[frames[0][:1]]
            value = {key: random_msgpack(rng) for key in keys if rng.random() < 0.9}
            frames[1] = msgpack.packb(value, use_bin_type=True)
    return frames


def campaign(inputs: int, seed: int) -> dict:
    """`inputs` mutated frames from `seed` (the same seed, the same inputs),
    decoded and re-encoded: the figures, with the first failures' frames."""
    rng = random.Random(seed)
    golden = [[bytes.fromhex(frame) for frame in frames] for frames in load_vectors().values()]
    bodies = {frames[0][:1]: [name for name, _ in wire.REGISTRY[frames[0][0]].SPEC.body]
              for frames in golden if wire.REGISTRY[frames[0][0]].SPEC.body}
    accepted = rejected = 0
    failures: list[dict] = []
    started = time.perf_counter()
    for _ in range(inputs):
        frames = mutate(rng, golden, bodies)
        try:
            message = wire.decode(frames)
        except wire.WireError:
            rejected += 1
            continue
        except BaseException as fault:  # noqa: BLE001 - the point is to catch anything
            failures.append({"frames": [frame.hex() for frame in frames], "error": repr(fault)})
            if len(failures) >= MAX_FAILURES_KEPT:
                break
            continue
        accepted += 1
        try:
            if wire.decode(wire.encode(message)) != message:
                raise AssertionError("re-encoded message differs")
        except BaseException as fault:  # noqa: BLE001
            failures.append({"frames": [frame.hex() for frame in frames], "error": repr(fault)})
    seconds = time.perf_counter() - started
    return {
        "benchmark": "fuzz_wire",
        "inputs": accepted + rejected + len(failures),
        "accepted": accepted,
        "rejected_with_wire_error": rejected,
        "failures": len(failures),
        "failure_examples": failures[:3],
        "seconds": round(seconds, 1),
        "inputs_per_second": round((accepted + rejected) / max(seconds, 1e-9)),
        "seed": seed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=20261123)
    options = parser.parse_args()
    result = campaign(options.inputs, options.seed)
    print(json.dumps(result))
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
