"""The pure parts of a storage node's duties: pacing, repair scans, the
scrub's order, collection passes and tombstones; and the store's touch,
idle deletion and quarantine, and a verified pull, on a real folder."""
import os
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from uds.storage.blobstore import BlobInfo, BlobStore, UnknownFile
from uds.storage.collection import GcPass, Tombstones, candidates
from uds.storage.pacing import Pacer
from uds.storage.placement import LOST, StorageMember, replica_set
from uds.storage.puller import PullFailed, pull_blob
from uds.storage.repair import RepairScan
from uds.storage.scrub import blob_is_sound, scrub_order
from uds.wire.ids import BLOCK_BYTES, file_id_of, manifest_of

ids = st.binary(min_size=16, max_size=16)
ADDRESSES = [f"tcp://10.0.0.{n}:7000" for n in range(1, 6)]


# -- pacing ----------------------------------------------------------------------

@given(st.lists(st.tuples(st.integers(0, 10_000_000), st.floats(0, 5)), min_size=1, max_size=30),
       st.integers(1, 100_000_000))
def test_a_pacer_never_lets_bytes_through_faster_than_its_rate(pieces, rate):
    pacer = Pacer(rate)
    now = start = 100.0
    total = 0
    for nbytes, gap in pieces:
        now += gap                       # the caller was busy elsewhere
        total += nbytes
        now += pacer.spent(nbytes, now)  # and then waits as told
    assert now - start >= total / rate - 1e-6


def test_a_pacer_asks_no_wait_of_a_slow_caller():
    pacer = Pacer(1000)
    assert pacer.spent(1000, 0.0) == pytest.approx(1.0)
    assert pacer.spent(500, 10.0) == pytest.approx(0.5)   # idle time is no credit, and no debt


# -- repair scans ----------------------------------------------------------------

def members_of(states):
    return [StorageMember(address, state=state) for address, state in zip(ADDRESSES, states)]


@given(st.lists(st.tuples(ids, st.integers(0, 10**9)), max_size=40, unique_by=lambda pair: pair[0]),
       st.lists(st.sampled_from(["alive", LOST]), min_size=1, max_size=5), st.integers(1, 3))
def test_a_scan_offers_each_blob_to_its_replica_set_but_this_node(blobs, states, replicas):
    members = members_of(states)
    own = ADDRESSES[0]
    scan = RepairScan.plan(own, blobs, members, replicas, window=10**6)
    sent = scan.sends(0.0)
    expected = sorted((file_id, home.address) for file_id, _ in blobs
                      for home in replica_set(file_id, members, replicas) if home.address != own)
    assert sorted((send.file_id, send.target) for send in sent) == expected
    assert all(send.length == dict(blobs)[send.file_id] for send in sent)


class RepairScanMachine(RuleBasedStateMachine):
    """A scan driven by sends, answers and timeouts in any order."""

    @rule(blobs=st.lists(ids, min_size=1, max_size=30, unique=True), window=st.integers(1, 4))
    @precondition(lambda self: not hasattr(self, "scan"))
    def plan(self, blobs, window):
        self.scan = RepairScan.plan(ADDRESSES[0], [(b, 10) for b in blobs], members_of(["alive"] * 4), 2,
                                    timeout_s=lambda length: 5.0, window=window)
        self.total = self.scan.pending
        self.now = 0.0
        self.sent = []
        self.members = members_of(["alive"] * 4)
        self.confirmations = set()
        self.trimmed = []

    @rule()
    @precondition(lambda self: hasattr(self, "scan"))
    def send(self):
        self.sent += self.scan.sends(self.now)

    @rule(data=st.data(), confirmed=st.booleans())
    @precondition(lambda self: hasattr(self, "scan") and self.scan.outstanding)
    def answer(self, data, confirmed):
        request_id = data.draw(st.sampled_from(sorted(self.scan.outstanding)))
        offer = self.scan.answered(request_id, confirmed)
        assert offer is not None
        assert self.scan.answered(request_id, confirmed) is None     # a second answer is ignored
        if confirmed:
            self.confirmations.add((offer.file_id, offer.target))
        self.trimmed += self.scan.take_trimmable()

    @rule(seconds=st.floats(0, 10))
    @precondition(lambda self: hasattr(self, "scan"))
    def time_passes(self, seconds):
        self.now += seconds
        self.scan.expire(self.now)

    @invariant()
    def accounts_for_every_offer(self):
        if hasattr(self, "scan"):
            scan = self.scan
            assert scan.pending + scan.confirmed + scan.failed == self.total
            assert len({(s.file_id, s.target) for s in self.sent}) == len(self.sent)   # each offered once
            busy = [offer.target for offer, _ in scan.outstanding.values()]
            assert all(busy.count(target) <= scan.window for target in busy)
            assert ADDRESSES[0] not in busy
            for file_id, _ in self.trimmed:      # only a copy outside the set, once every home has it
                homes = [home.address for home in replica_set(file_id, self.members, 2)]
                assert ADDRESSES[0] not in homes
                assert all((file_id, home) in self.confirmations for home in homes)
            assert len(self.trimmed) == len({file_id for file_id, _ in self.trimmed})


TestRepairScan = RepairScanMachine.TestCase
TestRepairScan.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


# -- the scrub ------------------------------------------------------------------

@given(st.lists(ids, unique=True, max_size=30), st.one_of(st.none(), ids))
def test_the_scrub_resumes_after_its_position_in_id_order(file_ids, position):
    order = scrub_order(file_ids, position)
    assert order == sorted(order)
    assert set(order) == {f for f in file_ids if position is None or f > position}


def test_blob_is_sound_tells_a_good_blob_a_damaged_one_and_a_missing_one(tmp_path):
    content = os.urandom(BLOCK_BYTES + 10)
    path = tmp_path / "blob"
    path.write_bytes(content)
    paused = []
    assert blob_is_sound(path, file_id_of(content), paused.append) is True
    assert sum(paused) == len(content)
    path.write_bytes(content[:-1] + b"?")
    assert blob_is_sound(path, file_id_of(content), paused.append) is False
    assert blob_is_sound(tmp_path / "gone", file_id_of(content), paused.append) is None


# -- collection -----------------------------------------------------------------

def test_candidates_are_the_blobs_unused_past_the_grace_oldest_first():
    blobs = [BlobInfo(b"a" * 16, 1, 50.0), BlobInfo(b"b" * 16, 1, 10.0), BlobInfo(b"c" * 16, 1, 95.0)]
    assert [blob.file_id for blob in candidates(blobs, now_unix=100.0, grace_s=10.0)] == [b"b" * 16, b"a" * 16]


@given(st.lists(ids, unique=True, max_size=50), st.integers(1, 7), st.data())
def test_a_pass_asks_in_pages_and_counts_only_what_it_asked(file_ids, page_size, data):
    work = GcPass(False, [BlobInfo(f, 3, 0.0) for f in file_ids], page_size=page_size)
    asked = []
    while (page := work.next_page()) is not None:
        assert 0 < len(page) <= page_size
        asked += page
        stranger = data.draw(ids)
        cleared = data.draw(st.lists(st.sampled_from(page))) + ([stranger] if stranger not in file_ids else [])
        for blob in work.answered(cleared):
            assert blob.file_id in page
            work.deleted(blob, blob.size)
    assert asked == file_ids and work.complete
    assert work.bytes == 3 * len(work.collected)


def test_tombstones_last_the_grace_period_and_end_at_a_put():
    tombstones = Tombstones(keep_s=10.0)
    tombstones.collected(b"x" * 16, now=0.0)
    tombstones.collected(b"y" * 16, now=5.0)
    assert tombstones.refuses(b"x" * 16, 9.0) and not tombstones.refuses(b"z" * 16, 9.0)
    assert not tombstones.refuses(b"x" * 16, 10.0) and tombstones.refuses(b"y" * 16, 10.0)
    tombstones.put_again(b"y" * 16)
    assert not tombstones.refuses(b"y" * 16, 11.0) and len(tombstones) == 0


# -- the store ------------------------------------------------------------------

def store_with(tmp_path, *contents):
    store = BlobStore(tmp_path / "data")
    for content in contents:
        writer = store.begin_put(file_id_of(content), len(content))
        writer.write(content)
        writer.finish()
    return store


def test_an_idle_blob_is_deleted_and_a_touched_one_kept(tmp_path):
    old, used = b"old" * 100, b"used" * 100
    store = store_with(tmp_path, old, used)
    past = time.time() - 1000
    for content in (old, used):
        os.utime(store.path_of(file_id_of(content)), (past, past))
    assert store.read(file_id_of(old), 0, 3) == b"old"          # a read is no use: it caches a descriptor
    store.touch(file_id_of(used))
    cutoff = time.time() - 500
    assert store.delete_if_idle(file_id_of(old), cutoff) == len(old)
    assert store.delete_if_idle(file_id_of(used), cutoff) is None
    assert store.delete_if_idle(file_id_of(old), cutoff) is None    # gone already
    with pytest.raises(UnknownFile):
        store.read(file_id_of(old), 0, 3)
    assert [blob.file_id for blob in store.list_blobs()] == [file_id_of(used)]
    store.close()


def test_a_quarantined_blob_is_never_read_again(tmp_path):
    content = b"rotten" * 1000
    store = store_with(tmp_path, content)
    file_id = file_id_of(content)
    assert store.read(file_id, 0, 6) == b"rotten"
    assert store.quarantine(file_id)
    assert not store.has(file_id)
    with pytest.raises(UnknownFile):
        store.read(file_id, 0, 6)
    assert (store.root / "corrupt" / file_id.hex()).read_bytes() == content
    assert not store.quarantine(file_id)
    store.close()


class FakeSource:
    """A source node that may lie about one byte of what it serves."""

    address = "tcp://source"

    def __init__(self, content, flip_at=None):
        self.content = bytearray(content)
        self.manifest_ = manifest_of(content)
        if flip_at is not None:
            self.content[flip_at] ^= 1

    def manifest(self, file_id):
        return self.manifest_

    def read(self, file_id, offset, length):
        return bytes(self.content[offset:offset + length])


@pytest.mark.parametrize("flip_at", [None, 10, 3 * BLOCK_BYTES + 1])
def test_a_pull_stores_only_a_copy_whose_every_block_checks(tmp_path, flip_at):
    content = os.urandom(5 * BLOCK_BYTES + 3)
    file_id = file_id_of(content)
    store = BlobStore(tmp_path / "data")
    slept = []
    if flip_at is None:
        pull_blob(FakeSource(content), store, file_id, len(content), Pacer(len(content)), slept.append,
                  lambda: sum(slept))
        assert store.read(file_id, 0, len(content)) == content
        assert sum(slept) == pytest.approx(1.0)    # the whole file took a second at its rate
    else:
        with pytest.raises(PullFailed, match=f"block {flip_at // BLOCK_BYTES}"):
            pull_blob(FakeSource(content, flip_at), store, file_id, len(content), Pacer(1 << 40),
                      slept.append, lambda: 0.0)
        assert not store.has(file_id)
    assert list((store.root / "tmp").iterdir()) == []
    store.close()


def test_a_node_not_listed_alive_trims_nothing():
    blobs = [(bytes([n]) * 16, 10) for n in range(40)]
    for own_state, trims in (("alive", True), (LOST, False)):
        members = members_of([own_state, "alive", "alive", "alive"])
        scan = RepairScan.plan(ADDRESSES[0], blobs, members, 2, window=10**6)
        for send in scan.sends(0.0):
            scan.answered(send.request_id, True)
        trimmed = {file_id for file_id, _ in scan.take_trimmable()}
        outside = {file_id for file_id, _ in blobs
                   if ADDRESSES[0] not in {home.address for home in replica_set(file_id, members, 2)}}
        assert outside and trimmed == (outside if trims else set())
