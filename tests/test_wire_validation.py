"""decode rejects each kind of fault with a WireError that says what was wrong."""
from dataclasses import replace

import msgpack
import pytest

from uds import wire
from golden import samples
from uds.wire.limits import MAX_BODY_ITEMS, MAX_DATA_FRAME_BYTES, MAX_FRAMES_PER_MESSAGE

SAMPLES = {type(sample).SPEC.name: sample for sample in samples()}


def frames_of(name):
    return [bytes(frame) for frame in wire.encode(SAMPLES[name])]


def body_of(name):
    return msgpack.unpackb(frames_of(name)[1])


def rejects(frames, reason):
    with pytest.raises(wire.WireError) as caught:
        wire.decode(frames)
    assert reason in str(caught.value), str(caught.value)


def test_header_length_mismatch_names_type_and_sizes():
    frame = bytearray(frames_of("file_request")[0])
    frame[17] = 40
    rejects([bytes(frame)], "file_request: header_length 40 != 41")


def test_short_frame_zero():
    rejects([b"\x03" * 10], "shorter than the 25-byte generic header")


def test_frame_zero_longer_than_its_struct():
    rejects([frames_of("file_request")[0] + b"\0"], "file_request: frame 0 is 42 bytes, expected 41")


def test_unknown_type():
    frame = bytearray(frames_of("file_request")[0])
    frame[0] = 200
    rejects([bytes(frame)], "unknown message_type 200")


def test_frame_count():
    rejects(frames_of("file_request") + [b""], "file_request: 2 frames, expected 1")
    rejects(frames_of("error")[:1], "error: 1 frames, expected 2")
    rejects([b""] * (MAX_FRAMES_PER_MESSAGE + 1), "exceeds")
    rejects([], "no frames")


def test_not_frames_at_all():
    rejects("hello", "frames must be a list")
    rejects([12345], "frame 0 is a int, not bytes")


def test_body_not_msgpack_or_trailing_bytes():
    header = frames_of("error")[0]
    rejects([header, b"\xc1"], "error: body is not valid msgpack")
    rejects([header, frames_of("error")[1] + b"\x00"], "error: body is not valid msgpack")


def test_body_not_a_map():
    rejects([frames_of("error")[0], msgpack.packb([1, 2])], "error: body is a list, not a map")


def test_body_missing_and_extra_fields():
    header = frames_of("error")[0]
    rejects([header, msgpack.packb({})], "missing ['reason']")
    rejects([header, msgpack.packb({"reason": "x", "more": 1})], "unexpected ['more']")


def test_body_field_of_wrong_type():
    header = frames_of("error")[0]
    rejects([header, msgpack.packb({"reason": 5})], "error body.reason: expected string, got int")


def test_nested_field_path_is_named():
    body = body_of("job_submit")
    body["inputs"] = {"data.txt": [b"short", 1]}
    rejects([frames_of("job_submit")[0], msgpack.packb(body)],
            "job_submit body.inputs['data.txt'][0]: 5 bytes, expected 16")


@pytest.mark.parametrize("bad_name", ["a/b", "..", ".", "", "x\0y"])
def test_input_names_must_be_plain(bad_name):
    body = body_of("job_submit")
    body["inputs"] = {bad_name: body["inputs"]["data.txt"]}
    rejects([frames_of("job_submit")[0], msgpack.packb(body)], "is not a plain file name")


def test_extension_types_are_refused():
    header = frames_of("error")[0]
    rejects([header, msgpack.packb({"reason": msgpack.ExtType(1, b"x")})], "max_ext_len")
    rejects([header, msgpack.packb({"reason": msgpack.ExtType(1, b"")})], "extension type 1 is not allowed")


def test_bool_is_not_an_int():
    body = body_of("hello")
    body["version"] = True
    rejects([frames_of("hello")[0], msgpack.packb(body)], "expected integer, got bool")


def test_huge_array_is_refused_by_the_unpacker():
    header = frames_of("heartbeat")[0]
    # An array header claiming more items than allowed, without the items.
    body = b"\x83\xa7running\xdd" + (MAX_BODY_ITEMS + 1).to_bytes(4, "big")
    rejects([header, body], "heartbeat: body is not valid msgpack")


def test_deep_nesting_is_refused():
    header = frames_of("error")[0]
    body = b"\x81\xa6reason" + b"\x91" * 100_000 + b"\xc0"
    rejects([header, body], "error: body is not valid msgpack")


def test_enum_values_are_checked():
    frame = bytearray(frames_of("file_put_reply")[0])
    frame[-1] = 99
    rejects([bytes(frame)], "file_put_reply.status: 99 is not a known PutStatus")


def test_cross_field_rules():
    frames = frames_of("file_read_reply")
    rejects([frames[0], b"worl"], "file_read_reply: length 5 != 4 data bytes")
    body = body_of("job_submit")
    body["chunk_inputs"] = [{}]
    rejects([frames_of("job_submit")[0], msgpack.packb(body)], "1 chunk_inputs for 2 chunks")


def test_data_frame_limit():
    frames = frames_of("file_put_data")
    rejects([frames[0], bytes(MAX_DATA_FRAME_BYTES + 1)], "exceeds")


def test_encode_refuses_values_that_do_not_fit():
    with pytest.raises(wire.EncodeError, match="file_request"):
        wire.encode(wire.FileRequest(node_uuid_upper=2**64, node_uuid_lower=0,
                                     file_uuid_upper=0, file_uuid_lower=0))
    with pytest.raises(wire.EncodeError, match="job_submit.inputs"):
        wire.encode(wire.JobSubmit.make(bytes(16), request_id=1, job=bytes(16), chunk_count=1,
                                        program=[bytes(16), 1], args=[], inputs={"a/b": [bytes(16), 1]},
                                        chunk_inputs=[], timeout_s=1.0, max_retries=0, name=""))


def test_timestamps_in_structs_are_range_checked():
    frame = bytearray(frames_of("hello")[0])
    offset = 25 + 8 + 1 + 4 + 8   # request_id, role, slots, cache_bytes
    frame[offset:offset + 8] = (2**64 - 1).to_bytes(8, "little")
    rejects([bytes(frame), frames_of("hello")[1]], "hello: start_time_ms 18446744073709551615 is beyond")


def test_past_retention_is_a_flag_of_a_final_job_without_chunk_reports():
    """A job past retention is answered from its history line: the flag is 0
    or 1, and a reply with it set is of a final job and offers no reports."""
    header, body = frames_of("job_status_reply")
    flag_at = wire.JobStatusReply.SPEC.size - 1      # the struct's last byte
    assert header[flag_at] == 0
    flagged = bytearray(header)
    flagged[flag_at] = 2
    rejects([bytes(flagged), body], "job_status_reply: past_retention 2 is not 0 or 1")
    # The sample is of a running job with one report: flagging it breaks both rules.
    flagged[flag_at] = 1
    rejects([bytes(flagged), body], "a job past retention is final, not RUNNING")
    sample = SAMPLES["job_status_reply"]
    final = dict(state=int(wire.JobState.SUCCEEDED), chunks_succeeded=2, past_retention=1)
    with pytest.raises(wire.EncodeError, match="a job past retention has no chunk reports"):
        wire.encode(replace(sample, **final))
    past = replace(sample, **final, first_chunk=2, next_chunk=2, chunks=[])
    decoded = wire.decode(wire.encode(past))
    assert (decoded.past_retention, decoded.first_chunk, decoded.next_chunk, decoded.chunks) == (1, 2, 2, [])
