"""Hint keys are unambiguous whatever the target's name: they parse back to what made them,
and one target's keys never fall under another target's prefix."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvstore.runtime.hints import hint_key, parse_hint_key, target_prefix

names = st.text(min_size=1, max_size=255)
partitions = st.integers(min_value=0, max_value=2**32 - 1)
keys = st.binary(max_size=300)


@given(names, partitions, keys)
def test_hint_key_round_trips(target: str, p: int, key: bytes) -> None:
    hk = hint_key(target, p, key)
    assert parse_hint_key(hk) == (target, p, key)
    assert hk.startswith(target_prefix(target))


@given(names, names, partitions, keys)
def test_no_target_sees_another_targets_hints(a: str, b: str, p: int, key: bytes) -> None:
    if a != b:
        assert not hint_key(b, p, key).startswith(target_prefix(a))


def test_a_slash_in_a_name_no_longer_moves_the_key() -> None:
    # With "hint/<target>/<partition><key>", target "a/b" and target "a" collided.
    assert parse_hint_key(hint_key("a/b", 7, b"k")) == ("a/b", 7, b"k")
    assert not hint_key("a/b", 7, b"k").startswith(target_prefix("a"))
