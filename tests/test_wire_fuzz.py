"""Fuzzed frames: decode raises WireError and nothing else, and whatever it
accepts encodes back to an equivalent message. 10,000 examples in all;
bench/fuzz_wire.py runs a longer campaign."""
import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uds import wire
from golden import load_vectors

GOLDEN = [[bytes.fromhex(frame) for frame in frames] for frames in load_vectors().values()]
WITH_BODY = [[bytes.fromhex(frame) for frame in frames] for name, frames in load_vectors().items()
             if next(cls for cls in wire.REGISTRY.values() if cls.SPEC.name == name).SPEC.body]
FUZZ_SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


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


@settings(max_examples=6000, **FUZZ_SETTINGS)
@given(mutated())
def test_mutated_golden_frames(frames):
    decode_only_wire_errors(frames)


msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=8)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=2500, **FUZZ_SETTINGS)
@given(st.sampled_from(WITH_BODY), msgpack_values, st.data())
def test_arbitrary_bodies_under_valid_headers(frames, value, data):
    body = msgpack.packb(value, use_bin_type=True)
    if isinstance(value, dict) and data.draw(st.booleans()):
        # Keep the valid keys, with arbitrary values, to get past the shape check.
        original = msgpack.unpackb(frames[1])
        body = msgpack.packb({key: data.draw(msgpack_values) for key in original}, use_bin_type=True)
    decode_only_wire_errors([frames[0], body, *frames[2:]])


@settings(max_examples=1500, **FUZZ_SETTINGS)
@given(st.lists(st.binary(max_size=96), min_size=0, max_size=5))
def test_random_frames(frames):
    decode_only_wire_errors(frames)
