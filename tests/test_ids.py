"""wire/ids.py: the file id as a tree hash over 1 MiB blocks, and its manifest."""
from __future__ import annotations

import os

import blake3
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from golden import file_id_contents, file_id_vectors, load_file_id_vectors
from uds.wire.ids import (
    BLOCK_BYTES, FILE_ID_CONTEXT, BlockManifest, FileHasher, ManifestMismatch, block_count,
    block_hash, block_length, file_id_of, file_id_of_blocks, manifest_of,
)

# Small contents that still span several blocks cost too much for hypothesis;
# these are cut from one random buffer and cover every block position.
SPAN = os.urandom(3 * BLOCK_BYTES + 4321)


def test_golden_file_ids_and_block_hashes():
    assert file_id_vectors() == load_file_id_vectors()


def test_the_definition_spelled_out():
    content = file_id_contents()["three blocks and 1000 bytes, bytes i % 253"]
    hashes = b"".join(blake3.blake3(content[i:i + BLOCK_BYTES]).digest()
                      for i in range(0, len(content), BLOCK_BYTES))
    expected = blake3.blake3(len(content).to_bytes(8, "big") + hashes,
                             derive_key_context=FILE_ID_CONTEXT).digest(length=16)
    assert file_id_of(content) == expected
    assert file_id_of(b"hello") == bytes.fromhex("b7b821184816c39ff146dd8f01e4deed")
    assert block_hash(b"hello").hex().startswith("ea8f163db38682925e4491c5e58d4bb3")  # BLAKE3's own vector


@pytest.mark.parametrize("size,blocks,last", [(0, 0, None), (1, 1, 1), (BLOCK_BYTES, 1, BLOCK_BYTES),
                                              (BLOCK_BYTES + 1, 2, 1), (8 * BLOCK_BYTES + 5, 9, 5)])
def test_block_geometry(size, blocks, last):
    assert block_count(size) == blocks
    if blocks:
        assert block_length(size, blocks - 1) == last
    with pytest.raises(IndexError):
        block_length(size, blocks)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, len(SPAN)), st.lists(st.integers(1, 3 * BLOCK_BYTES), max_size=6))
def test_streaming_in_any_pieces_gives_the_same_id_and_manifest(size, cuts):
    content = memoryview(SPAN)[:size]
    hasher = FileHasher()
    offset = 0
    for cut in cuts:
        hasher.update(content[offset:offset + cut])
        offset = min(size, offset + cut)
    hasher.update(content[offset:])
    manifest = hasher.manifest()
    assert manifest == manifest_of(bytes(content))
    assert hasher.digest() == file_id_of(content) == manifest.file_id()
    manifest.check(file_id_of(content), size)
    for index in range(manifest.block_count):
        start = index * BLOCK_BYTES
        assert manifest.block_matches(index, content[start:start + block_length(size, index)])


@settings(max_examples=60, deadline=None)
@given(st.integers(1, len(SPAN)), st.data())
def test_any_flipped_byte_changes_the_id_and_fails_its_block(size, data):
    content = bytearray(SPAN[:size])
    original_id, manifest = file_id_of(content), manifest_of(content)
    position = data.draw(st.integers(0, size - 1))
    content[position] ^= data.draw(st.integers(1, 255))
    assert file_id_of(content) != original_id
    index = position // BLOCK_BYTES
    start = index * BLOCK_BYTES
    assert not manifest.block_matches(index, content[start:start + block_length(size, index)])
    for other in range(manifest.block_count):  # the other blocks still check out
        if other != index:
            assert manifest.block_matches(other, content[other * BLOCK_BYTES:(other + 1) * BLOCK_BYTES])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 3 * BLOCK_BYTES), st.integers(0, 3 * BLOCK_BYTES))
def test_the_size_is_bound_into_the_id(size, other_size):
    hashes = manifest_of(memoryview(SPAN)[:size]).hashes
    if other_size != size and block_count(other_size) == block_count(size):
        assert file_id_of_blocks(other_size, hashes) != file_id_of_blocks(size, hashes)


def test_a_manifest_checks_its_id_size_and_shape():
    content = SPAN[:2 * BLOCK_BYTES + 9]
    manifest = manifest_of(content)
    manifest.check(file_id_of(content), len(content))
    with pytest.raises(ManifestMismatch, match="hashes to"):
        manifest.check(file_id_of(content[:-1] + b"!"), len(content))
    with pytest.raises(ManifestMismatch, match="manifest of"):
        manifest.check(file_id_of(content), len(content) - 1)
    swapped = BlockManifest(len(content), manifest.hashes[32:64] + manifest.hashes[:32] + manifest.hashes[64:])
    with pytest.raises(ManifestMismatch):
        swapped.check(file_id_of(content), len(content))
    with pytest.raises(ManifestMismatch, match="3 blocks"):
        BlockManifest(len(content), manifest.hashes[:64])
    assert not manifest.block_matches(2, content[2 * BLOCK_BYTES:] + b"x")  # a longer last block


def test_a_single_block_is_checked_by_the_id_alone():
    content = SPAN[:BLOCK_BYTES]
    assert file_id_of_blocks(len(content), block_hash(content)) == file_id_of(content)
    assert file_id_of_blocks(len(content), block_hash(content[:-1] + b"\0")) != file_id_of(content)
