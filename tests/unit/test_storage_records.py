"""storage.records: the form a data value takes in LevelDB under storage_compression lz4."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from storage import records


@given(st.binary(max_size=2000))
def test_every_value_comes_back(value: bytes) -> None:
    assert records.unpack(records.pack(value)) == value


@given(st.binary(max_size=300))
def test_an_escaped_value_comes_back(value: bytes) -> None:
    # What a store marked for packed values gets from a node running another setting.
    assert records.unpack(records.escape(value)) == value


@given(st.binary(min_size=1, max_size=300).map(lambda b: b * 8))
def test_a_value_that_compresses_is_stored_smaller(value: bytes) -> None:
    assert len(records.pack(value)) < len(value) or len(value) < records.MIN_COMPRESSED_BYTES


@given(st.binary(min_size=1).filter(lambda b: b[0] > 1))
def test_a_value_stored_as_it_is_reads_back_as_it_is(value: bytes) -> None:
    # What a store written under none or snappy holds: records as they are.
    assert records.unpack(value) == value


def test_a_broken_compressed_value_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="stored value does not decompress"):
        records.unpack(b"\x00\xff\xff\xff\x7f garbage")
