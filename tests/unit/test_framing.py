"""The frame scanner against msgpack itself: random streams of random frames, cut into
random chunks, under random limits. The oracle is the decoded frames: their packed size,
their depth (nested non-empty arrays and maps) and their element count (a map entry
counting two)."""

from __future__ import annotations

from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.runtime.framing import FrameLimits, FrameScanner

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**64 - 1), st.floats(allow_nan=False),
    st.binary(max_size=300), st.text(max_size=40),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=300)),
)
_values = st.recursive(
    _scalars,
    lambda kids: st.one_of(
        st.lists(kids, max_size=6),
        st.dictionaries(st.one_of(st.integers(0, 1000), st.text(max_size=5)), kids, max_size=4),
    ),
    max_leaves=30,
)


def _depth_and_elements(v: Any) -> tuple[int, int]:
    if isinstance(v, list | dict) and v:
        items = list(v) + list(v.values()) if isinstance(v, dict) else v
        inner = [_depth_and_elements(x) for x in items]
        return 1 + max(d for d, _ in inner), len(items) + sum(e for _, e in inner)
    return 0, 0


@settings(max_examples=400, deadline=None)
@given(
    st.lists(_values, min_size=1, max_size=8),
    st.lists(st.integers(1, 200), min_size=1, max_size=30),
    st.integers(1, 600),
    st.integers(1, 6),
    st.integers(1, 40),
)
def test_scanner_refuses_exactly_the_first_frame_past_a_limit(
    frames: list[Any], cuts: list[int], max_bytes: int, max_depth: int, max_elements: int
) -> None:
    packed = [msgpack.packb(f, use_bin_type=True) for f in frames]
    stream = b"".join(packed)
    bad = None  # index of the first frame past a limit
    for i, (f, raw) in enumerate(zip(frames, packed, strict=True)):
        depth, elements = _depth_and_elements(f)
        if len(raw) > max_bytes or depth > max_depth or elements > max_elements:
            bad = i
            break
    good_end = sum(len(r) for r in packed[: len(packed) if bad is None else bad])
    sc = FrameScanner(FrameLimits(max_bytes, max_depth, max_elements))
    pos, k = 0, 0
    while pos < len(stream):
        size = cuts[k % len(cuts)]
        k += 1
        why = sc.feed(stream[pos : pos + size])
        if why is not None:
            assert bad is not None, why
            assert sc.good_bytes == max(0, good_end - pos)
            return
        pos += size
    assert bad is None
    assert sc.frames == len(frames) and not sc.in_frame
