"""encode then decode gives the same message, for every type."""
import pytest
from hypothesis import given, settings

from uds import wire
from strategies import messages_of

TYPES = sorted(wire.REGISTRY.values(), key=lambda cls: cls.message_type)


@pytest.mark.parametrize("cls", TYPES, ids=lambda cls: cls.SPEC.name)
def test_round_trip(cls):
    @settings(max_examples=60, deadline=None)
    @given(messages_of(cls))
    def round_trip(message):
        frames = wire.encode(message)
        assert len(frames) == cls.SPEC.frame_count
        assert wire.decode(frames) == message
        assert wire.decode([bytes(frame) for frame in frames]) == message

    round_trip()


def test_data_frames_are_not_copied():
    payload = bytearray(b"x" * 100_000)
    message = wire.FileReadReply.make(bytes(16), request_id=1, file=bytes(16), offset=0,
                                      length=len(payload), data=memoryview(payload))
    frames = wire.encode(message)
    assert frames[1] is message.data
    decoded = wire.decode(frames)
    payload[0] = ord("y")
    assert bytes(decoded.data[:1]) == b"y"  # a view of the received buffer
