"""Hand-written PageSet examples: bytes worked out by hand, errors, limits."""

from __future__ import annotations

import numpy as np
import pytest

from virtio_balloon_proto.errors import DecodeError, EncodeError, UsageError
from virtio_balloon_proto.pageset import MAX_FRAME, Extent, PageSet, count_duplicates


def test_text_example_from_the_issue() -> None:
    ps = PageSet.from_text("0-1023,4096,8192-8195")
    assert ps.extents() == [[0, 1024], [4096, 1], [8192, 4]]
    assert len(ps) == 1029
    assert list(ps) == [Extent(0, 1024), Extent(4096, 1), Extent(8192, 4)]
    assert ps.to_text() == "0-1023,4096,8192-8195"
    assert ps.min() == 0 and ps.max() == 8195
    assert 4096 in ps and 4097 not in ps and -1 not in ps and "4096" not in ps


def test_text_merges_overlap_and_adjacency() -> None:
    assert PageSet.from_text("5-9,0-4,7,20").to_text() == "0-9,20"
    assert PageSet.from_text("") == PageSet()
    assert PageSet.from_text("").to_text() == ""


@pytest.mark.parametrize(
    ("text", "offset"),
    [
        ("0-x", 2),  # the brief's example: the bad character is at offset 2
        ("x", 0),
        (",1", 0),
        ("1,,2", 2),
        ("1,", 2),
        ("1-2-3", 3),
        ("1 ,2", 1),
        ("-5", 0),
    ],
)
def test_text_errors_name_offset(text: str, offset: int) -> None:
    with pytest.raises(UsageError) as ei:
        PageSet.from_text(text)
    assert ei.value.offset == offset
    assert ei.value.field == "text"
    assert f"character {offset}" in str(ei.value)


def test_text_backwards_range_and_too_big() -> None:
    with pytest.raises(UsageError, match="backwards") as ei:
        PageSet.from_text("1,9-3")
    assert ei.value.offset == 2
    with pytest.raises(UsageError, match="above"):
        PageSet.from_text(str(1 << 64))
    assert PageSet.from_text(str(MAX_FRAME)).max() == MAX_FRAME


def test_frames_with_duplicates() -> None:
    res = PageSet.from_frames_counted(np.array([7, 3, 7, 4, 7, 100], dtype=np.uint32))
    assert res.pages.extents() == [[3, 2], [7, 1], [100, 1]]
    assert res.duplicates == 2
    assert res.duplicated.to_text() == "7"
    assert count_duplicates([1, 2, 3]) == 0
    assert count_duplicates([]) == 0


@pytest.mark.parametrize(
    "bad",
    [[-1], [1.5], ["3"], [1 << 64], np.array([1.0]), np.array([True]), b"\x01", None],
)
def test_from_frames_refuses_non_frames(bad: object) -> None:
    with pytest.raises(UsageError):
        PageSet.from_frames(bad)


def test_extents_errors_name_the_entry() -> None:
    with pytest.raises(UsageError) as ei:
        PageSet.from_extents([[0, 1], [5, 0]])
    assert ei.value.field == "extents[1].count"
    with pytest.raises(UsageError) as ei:
        PageSet.from_extents([[0, 1], [MAX_FRAME, 2]])
    assert ei.value.field == "extents[1]"
    with pytest.raises(UsageError):
        PageSet.from_extents([[0, 1, 2]])
    with pytest.raises(UsageError):
        PageSet.from_extents([[0.5, 1]])
    # beyond int64: numpy would go through float64 and lose the low bits; we must not
    ps = PageSet.from_extents([[MAX_FRAME - 2, 3], [1, 1]])
    assert ps.extents() == [[1, 1], [MAX_FRAME - 2, 3]]


# Bitmaps.  Frames {0, 1, 33}, base 0: bits 0, 1 and 33.
#  32-bit words: word0 = 0x00000003, word1 = 0x00000002
#  64-bit word:  word0 = 0x0000000200000003
BITMAP_CASES = [
    (32, "little", bytes.fromhex("0300000002000000")),
    (32, "big", bytes.fromhex("0000000300000002")),
    (64, "little", bytes.fromhex("0300000002000000")),
    (64, "big", bytes.fromhex("0000000200000003")),
]


@pytest.mark.parametrize(("ws", "order", "data"), BITMAP_CASES)
def test_bitmap_bytes_by_hand(ws: int, order: str, data: bytes) -> None:
    ps = PageSet.from_text("0-1,33")
    assert ps.to_bitmap(0, 64, ws, order) == data  # type: ignore[arg-type]
    assert PageSet.from_bitmap(data, 0, ws, order) == ps  # type: ignore[arg-type]
    # base shifts every frame; unit 16 is a 64 KiB guest page per bit (16 4-KiB frames)
    assert PageSet.from_bitmap(data, 1000, ws, order).to_text() == "1000-1001,1033"  # type: ignore[arg-type]
    assert (
        PageSet.from_bitmap(data, 0, ws, order, unit=16).to_text() == "0-31,528-543"  # type: ignore[arg-type]
    )


def test_bitmap_rounds_to_whole_words() -> None:
    ps = PageSet.from_text("3")
    assert ps.to_bitmap(0, 5, 32, "big") == bytes.fromhex("00000008")
    assert ps.to_bitmap(0, 33, 32, "little") == bytes.fromhex("0800000000000000")
    assert ps.to_bitmap(0, 0, 64, "little", clip=True) == b""


def test_bitmap_partial_trailing_word() -> None:
    # 5 bytes of 32-bit big-endian words: the 5th byte is the high byte of word 1
    data = bytes.fromhex("0000000180")
    assert PageSet.from_bitmap(data, 0, 32, "big").to_text() == "0,63"
    assert PageSet.from_bitmap(data, 0, 32, "little").to_text() == "24,39"


def test_bitmap_errors() -> None:
    ps = PageSet.from_text("10-20")
    with pytest.raises(EncodeError, match="outside the bitmap window"):
        ps.to_bitmap(0, 15)
    with pytest.raises(EncodeError, match="whole"):
        ps.to_bitmap(0, 64, unit=4)
    with pytest.raises(UsageError) as ei:
        ps.to_bitmap(0, 64, word_size=48)
    assert ei.value.field == "word_size"
    with pytest.raises(UsageError) as ei:
        PageSet.from_bitmap(b"\x00" * 8, 0, 64, "middle")  # type: ignore[arg-type]
    assert ei.value.field == "word_order"
    with pytest.raises(DecodeError, match="beyond"):
        PageSet.from_bitmap(b"\x00" * 7 + b"\x80", MAX_FRAME - 10)
    with pytest.raises(DecodeError):
        PageSet.from_bitmap(b"\xff", 0, nbits=9)
    with pytest.raises(UsageError):
        PageSet.from_bitmap("ff", 0)  # type: ignore[arg-type]


def test_top_frame_algebra() -> None:
    top = PageSet.from_text(f"{MAX_FRAME - 1}-{MAX_FRAME}")
    low = PageSet.from_text("0-1")
    both = top | low
    assert both.extents() == [[0, 2], [MAX_FRAME - 1, 2]]
    assert both - low == top
    assert both - top == low
    assert (both & top) == top
    assert len(both) == 4


def test_to_frames_limit() -> None:
    big = PageSet.from_extents([[0, 1 << 40]])
    assert len(big) == 1 << 40
    with pytest.raises(UsageError, match="limit"):
        big.to_frames()
    assert PageSet.from_text("5-7,9").to_frames().tolist() == [5, 6, 7, 9]


def test_immutable() -> None:
    ps = PageSet.from_text("1-3")
    with pytest.raises(ValueError):
        ps.starts[0] = 9
    assert ps.to_text() == "1-3"


def test_aligned_blocks_by_hand() -> None:
    # 3..12: 3 (order 0), 4-7 (order 2), 8-11 (order 2), 12 (order 0)
    s, o = PageSet.from_text("3-12").aligned_blocks(9)
    assert s.tolist() == [3, 4, 8, 12] and o.tolist() == [0, 2, 2, 0]
    # a 2 MiB huge page (512 frames at 512) is one order-9 block; capped at order 8 it is two
    s, o = PageSet.from_extents([[512, 512]]).aligned_blocks(9)
    assert s.tolist() == [512] and o.tolist() == [9]
    s, o = PageSet.from_extents([[512, 512]]).aligned_blocks(8)
    assert s.tolist() == [512, 768] and o.tolist() == [8, 8]
    with pytest.raises(UsageError):
        PageSet.from_text(str(1 << 63)).aligned_blocks(3)
    with pytest.raises(UsageError, match="limit"):
        PageSet.from_extents([[0, 1 << 40]]).aligned_blocks(0)


def test_large_inflate_shape() -> None:
    # 7 GiB of an 8 GiB guest in random order: one extent
    rng = np.random.default_rng(1)
    frames = rng.permutation(np.arange(262144, 262144 + 1835008, dtype=np.uint32))
    ps = PageSet.from_frames(frames)
    assert ps.extents() == [[262144, 1835008]]
    assert ps == PageSet.from_bitmap(ps.to_bitmap(0, 2097152), 0)
