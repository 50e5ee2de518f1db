"""Golden byte vectors, both directions, for every message type."""
import pytest

from uds import wire
from golden import load_vectors, samples

VECTORS = load_vectors()
SAMPLES = {type(sample).SPEC.name: sample for sample in samples()}


def test_every_message_type_has_a_golden_vector():
    names = {cls.SPEC.name for cls in wire.REGISTRY.values()}
    assert names == set(VECTORS) == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_encode_gives_the_golden_bytes(name):
    frames = [bytes(frame).hex() for frame in wire.encode(SAMPLES[name])]
    assert frames == VECTORS[name]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_bytes_decode_to_the_sample(name):
    decoded = wire.decode([bytes.fromhex(frame) for frame in VECTORS[name]])
    assert decoded == SAMPLES[name]
    assert type(decoded).SPEC.name == name


def test_generic_header_layout_is_fixed():
    # message_type, node_uuid_upper, node_uuid_lower, header_length: 1 + 8 + 8 + 8 bytes.
    frame = bytes.fromhex(VECTORS["file_request"][0])
    assert len(frame) == 41
    assert frame[0] == 3
    assert frame[1:9] == bytes.fromhex("0011223344556677")[::-1]
    assert frame[9:17] == bytes.fromhex("8899aabbccddeeff")[::-1]
    assert int.from_bytes(frame[17:25], "little") == 41
    assert frame[25:33] == bytes.fromhex("a1b2c3d4e5f60718")[::-1]


def test_seed_message_numbers_are_kept():
    assert (wire.MessageType.WORKER_REQUEST, wire.MessageType.WORKER_STATUS,
            wire.MessageType.FILE_REQUEST, wire.MessageType.FILE_RESPONSE) == (1, 2, 3, 4)


def test_id_properties_join_the_halves():
    sample = SAMPLES["file_read"]
    assert sample.file_uuid == bytes.fromhex("a1b2c3d4e5f60718293a4b5c6d7e8f90")
    assert sample.node_uuid == bytes.fromhex("00112233445566778899aabbccddeeff")
    assert sample.header_length == 65
