"""Fuzzed frames: decode raises WireError and nothing else, and whatever it
accepts encodes back to an equivalent message. Hypothesis draws 2,400
examples (its strategies lean to edge values, and a failure shrinks);
bench/fuzz_wire.py's mutations, drawn from a seeded random source, give
30,000 more at a hundredth of the cost each (the bench runs a longer
campaign)."""
import importlib.util
import pathlib
import random

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uds import wire
from golden import load_vectors

GOLDEN = [[bytes.fromhex(frame) for frame in frames] for frames in load_vectors().values()]
WITH_BODY = [[bytes.fromhex(frame) for frame in frames] for name, frames in load_vectors().items()
             if next(cls for cls in wire.REGISTRY.values() if cls.SPEC.name == name).SPEC.body]
FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)
CAMPAIGN_INPUTS = 30_000


def decode_only_wire_errors(frames):
    try:
        message = wire.decode(frames)
    except wire.WireError:
        return
    # Accepted: it must be a faithful, re-encodable message.
    assert wire.decode(wire.encode(message)) == message


@st.composite
def mutated(draw):
    frames = list(draw(st.sampled_from(GOLDEN)))
    for _ in range(draw(st.integers(1, 3))):
        index = draw(st.integers(0, len(frames) - 1)) if frames else 0
        operation = draw(st.sampled_from(["truncate", "extend", "flip", "replace", "drop", "add", "retype"]))
        if not frames:
            frames.append(draw(st.binary(max_size=64)))
            continue
        frame = bytearray(frames[index])
        if operation == "truncate":
            frames[index] = bytes(frame[: draw(st.integers(0, max(0, len(frame) - 1)))])
        elif operation == "extend":
            frames[index] = bytes(frame) + draw(st.binary(min_size=1, max_size=32))
        elif operation == "flip" and frame:
            position = draw(st.integers(0, len(frame) - 1))
            frame[position] ^= 1 << draw(st.integers(0, 7))
            frames[index] = bytes(frame)
        elif operation == "replace":
            frames[index] = draw(st.binary(max_size=80))
        elif operation == "drop":
            del frames[index]
        elif operation == "add":
            frames.insert(index, draw(st.binary(max_size=40)))
        elif operation == "retype" and frames[0]:
            head = bytearray(frames[0])
            head[0] = draw(st.integers(0, 255))
            frames[0] = bytes(head)
    return frames


@settings(max_examples=1500, **FUZZ_SETTINGS)
@given(mutated())
def test_mutated_golden_frames(frames):
    decode_only_wire_errors(frames)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=600, **FUZZ_SETTINGS)
@given(st.sampled_from(WITH_BODY), msgpack_values, st.data())
def test_arbitrary_bodies_under_valid_headers(frames, value, data):
    body = msgpack.packb(value, use_bin_type=True)
    if isinstance(value, dict) and data.draw(st.booleans()):
        # Keep the valid keys, with arbitrary values, to get past the shape check.
        original = msgpack.unpackb(frames[1])
        body = msgpack.packb({key: data.draw(msgpack_values) for key in original}, use_bin_type=True)
    decode_only_wire_errors([frames[0], body, *frames[2:]])


@settings(max_examples=300, **FUZZ_SETTINGS)
@given(st.lists(st.binary(max_size=96), min_size=0, max_size=5))
def test_random_frames(frames):
    decode_only_wire_errors(frames)


def _bench_fuzz_wire():
    path = pathlib.Path(__file__).resolve().parent.parent / "bench" / "fuzz_wire.py"
    spec = importlib.util.spec_from_file_location("fuzz_wire", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_seeded_campaign_of_mutated_frames():
    # Another seed each run, as hypothesis draws other examples each run;
    # a failure names it: python bench/fuzz_wire.py --seed S --inputs N replays it.
    seed = random.randrange(2**32)
    result = _bench_fuzz_wire().campaign(CAMPAIGN_INPUTS, seed)
    assert result["inputs"] == CAMPAIGN_INPUTS and result["failures"] == 0, result
    assert result["accepted"] > CAMPAIGN_INPUTS // 50, result      # mutations that still decode
