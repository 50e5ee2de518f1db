"""The pure upload-session core: exact decisions and faults, no I/O."""
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from uds.storage.uploads import (
    UPLOAD_IDLE_TIMEOUT_S, IncompleteUpload, PieceBeyondLength, PieceDecision, PieceOutOfOrder,
    TooManyUploads, UnknownUpload, UploadAlreadyOpen, UploadFailed, UploadKey, UploadTracker,
)

KEY = UploadKey(peer=b"peer-1", request_id=7, file_id=b"\x01" * 16)
OTHER = UploadKey(peer=b"peer-2", request_id=7, file_id=b"\x01" * 16)


def test_pieces_in_order_then_end_returns_the_length():
    tracker = UploadTracker()
    tracker.begin(KEY, 10, now=0.0)
    assert tracker.data(KEY, 0, 4, now=1.0) is PieceDecision.WRITE
    assert tracker.data(KEY, 4, 6, now=2.0) is PieceDecision.WRITE
    assert tracker.end(KEY, now=3.0) == 10
    assert KEY not in tracker and len(tracker) == 0


def test_empty_upload_needs_no_pieces():
    tracker = UploadTracker()
    tracker.begin(KEY, 0, now=0.0)
    assert tracker.end(KEY, now=0.0) == 0


def test_same_request_id_from_another_peer_is_another_session():
    tracker = UploadTracker()
    tracker.begin(KEY, 3, now=0.0)
    tracker.begin(OTHER, 5, now=0.0)
    tracker.data(OTHER, 0, 5, now=0.0)
    assert tracker.received(KEY) == 0
    assert tracker.end(OTHER, now=0.0) == 5


def test_second_begin_with_the_same_key_is_refused():
    tracker = UploadTracker()
    tracker.begin(KEY, 3, now=0.0)
    with pytest.raises(UploadAlreadyOpen):
        tracker.begin(KEY, 3, now=0.0)


def test_open_sessions_are_bounded():
    tracker = UploadTracker(max_open=2)
    tracker.begin(KEY, 1, now=0.0)
    tracker.begin(OTHER, 1, now=0.0)
    with pytest.raises(TooManyUploads):
        tracker.begin(UploadKey(b"peer-3", 1, b"\x02" * 16), 1, now=0.0)


@pytest.mark.parametrize("operation", ["data", "end"])
def test_data_or_end_without_begin_is_unknown(operation):
    tracker = UploadTracker()
    with pytest.raises(UnknownUpload, match="request 7"):
        if operation == "data":
            tracker.data(KEY, 0, 1, now=0.0)
        else:
            tracker.end(KEY, now=0.0)


def test_out_of_order_piece_breaks_the_session_once():
    tracker = UploadTracker()
    tracker.begin(KEY, 10, now=0.0)
    tracker.data(KEY, 0, 4, now=0.0)
    with pytest.raises(PieceOutOfOrder, match="offset 5, expected offset 4"):
        tracker.data(KEY, 5, 1, now=0.0)
    # Pieces the sender had in flight are dropped quietly ...
    assert tracker.data(KEY, 6, 4, now=0.0) is PieceDecision.DROP
    # ... and the end repeats the fault.
    with pytest.raises(PieceOutOfOrder):
        tracker.end(KEY, now=0.0)
    assert KEY not in tracker


def test_piece_past_the_announced_length_breaks_the_session():
    tracker = UploadTracker()
    tracker.begin(KEY, 10, now=0.0)
    with pytest.raises(PieceBeyondLength, match="past the announced length 10"):
        tracker.data(KEY, 0, 11, now=0.0)
    with pytest.raises(PieceBeyondLength):
        tracker.end(KEY, now=0.0)


def test_end_before_every_byte_arrived_is_incomplete():
    tracker = UploadTracker()
    tracker.begin(KEY, 10, now=0.0)
    tracker.data(KEY, 0, 9, now=0.0)
    with pytest.raises(IncompleteUpload, match="after 9 of 10"):
        tracker.end(KEY, now=0.0)
    assert KEY not in tracker


def test_fail_breaks_a_session_for_the_shell():
    tracker = UploadTracker()
    tracker.begin(KEY, 10, now=0.0)
    tracker.fail(KEY, UploadFailed(KEY, "disk full"))
    assert tracker.data(KEY, 0, 10, now=0.0) is PieceDecision.DROP
    with pytest.raises(UploadFailed, match="disk full"):
        tracker.end(KEY, now=0.0)


def test_idle_sessions_expire_and_activity_keeps_them():
    tracker = UploadTracker()
    tracker.begin(KEY, 10, now=0.0)
    tracker.begin(OTHER, 10, now=0.0)
    tracker.data(OTHER, 0, 1, now=UPLOAD_IDLE_TIMEOUT_S - 1)
    assert tracker.expire(now=UPLOAD_IDLE_TIMEOUT_S) == []
    assert tracker.expire(now=UPLOAD_IDLE_TIMEOUT_S + 0.5) == [KEY]
    assert tracker.keys() == [OTHER]
    assert tracker.expire(now=2 * UPLOAD_IDLE_TIMEOUT_S) == [OTHER]
    with pytest.raises(UnknownUpload):
        tracker.data(KEY, 0, 1, now=2 * UPLOAD_IDLE_TIMEOUT_S)


# One upload driven by arbitrary pieces: the session accepts exactly the
# prefix of pieces that continue where the last stopped and stay inside the
# length; once one does not, it drops everything; end succeeds only if the
# accepted pieces add up to the length.
piece = st.tuples(st.integers(0, 40), st.integers(0, 15))   # (offset, length)


@settings(max_examples=300, deadline=None)
@given(length=st.integers(0, 40), pieces=st.lists(piece, max_size=12))
def test_session_accepts_exactly_the_contiguous_prefix(length, pieces):
    tracker = UploadTracker()
    tracker.begin(KEY, length, now=0.0)
    received, broken = 0, None
    for step, (offset, size) in enumerate(pieces):
        if broken is not None:
            assert tracker.data(KEY, offset, size, now=step) is PieceDecision.DROP
            continue
        if offset != received:
            broken = PieceOutOfOrder
        elif offset + size > length:
            broken = PieceBeyondLength
        if broken is not None:
            with pytest.raises(broken):
                tracker.data(KEY, offset, size, now=step)
        else:
            assert tracker.data(KEY, offset, size, now=step) is PieceDecision.WRITE
            received += size
            assert tracker.received(KEY) == received <= length
    if broken is not None:
        with pytest.raises(broken):
            tracker.end(KEY, now=len(pieces))
    elif received != length:
        with pytest.raises(IncompleteUpload):
            tracker.end(KEY, now=len(pieces))
    else:
        assert tracker.end(KEY, now=len(pieces)) == length
    assert len(tracker) == 0


@settings(max_examples=100, deadline=None)
@given(length=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 4096), max_size=10))
def test_any_split_of_the_whole_content_is_stored(length, sizes):
    tracker = UploadTracker()
    tracker.begin(KEY, length, now=0.0)
    offset = 0
    for size in sizes:
        size = min(size, length - offset)
        if size == 0:
            break
        assert tracker.data(KEY, offset, size, now=0.0) is PieceDecision.WRITE
        offset += size
    if offset < length:
        tracker.data(KEY, offset, length - offset, now=0.0)
    assert tracker.end(KEY, now=0.0) == length
