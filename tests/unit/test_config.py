"""Settings that are refused at load because they would lose or resurrect data."""

from __future__ import annotations

import pytest

from kvstore.config import NODE_NAME_MAX_CHARS, Settings, load_settings
from kvstore.core import vclock
from kvstore.errors import ConfigError

MIB = 1024 * 1024


def test_defaults_are_consistent() -> None:
    s = Settings()
    assert s.tombstone_grace_s > s.hint_max_age_s + s.max_clock_skew_s
    assert s.max_record_bytes + s.max_key_bytes < s.max_frame_bytes
    assert s.hint_batch_bytes + s.max_key_bytes < s.max_frame_bytes
    assert s.warn_siblings <= s.max_siblings
    limits = s.limits
    assert (limits.max_record_bytes, limits.max_siblings, limits.warn_siblings) == (4 * MIB, 100, 25)


@pytest.mark.parametrize(
    ("grace", "age"),
    [(3600.0, 7 * 24 * 3600.0), (3600.0, 3600.0), (3600.0, 3600.0 - 60.0)],
    ids=["old-defaults", "equal", "within-skew"],
)
def test_tombstone_grace_must_outlive_hints(grace: float, age: float) -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings(env={}, overrides={"tombstone_grace_s": grace, "hint_max_age_s": age})
    msg = str(ei.value)
    assert "tombstone_grace_s" in msg and "hint_max_age_s" in msg and "max_clock_skew_s" in msg
    assert "brings the deleted value back" in msg


def test_tombstone_grace_past_hint_age_and_skew_is_accepted() -> None:
    s = load_settings(env={}, overrides={"tombstone_grace_s": 4, "hint_max_age_s": 2, "max_clock_skew_s": 1.5})
    assert (s.tombstone_grace_s, s.hint_max_age_s) == (4.0, 2.0)


@pytest.mark.parametrize("name", ["max_record_bytes", "hint_batch_bytes"])
def test_bounds_must_leave_room_within_a_frame(name: str) -> None:
    with pytest.raises(ConfigError) as ei:
        load_settings(env={}, overrides={name: 8 * MIB})
    msg = str(ei.value)
    assert name in msg and "max_frame_bytes (8388608)" in msg and "one RPC frame" in msg
    # A larger frame makes the same bound acceptable.
    assert getattr(load_settings(env={}, overrides={name: 8 * MIB, "max_frame_bytes": 16 * MIB}), name) == 8 * MIB


def test_values_must_fit_a_record_and_warning_must_come_before_refusal() -> None:
    with pytest.raises(ConfigError, match=r"max_value_bytes .* must not exceed max_record_bytes"):
        Settings(max_value_bytes=2 * MIB, max_record_bytes=MIB)
    with pytest.raises(ConfigError, match="warn_siblings"):
        Settings(warn_siblings=101)


GOOD_NAMES = ["n1", "kv1", "kvstore-0", "127.0.0.1:7000", "[::1]:7000", "node_a.rack-2:x", "N" * NODE_NAME_MAX_CHARS]
BAD_NAMES = ["a/b", "n 1", "n1\n", "nœud", "a~b", "", "N" * (NODE_NAME_MAX_CHARS + 1)]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_node_names_are_accepted(name: str) -> None:
    assert load_settings(env={}, overrides={"node_id": name}).name == name
    # The actor id a name becomes stays within what vector clocks accept.
    assert len(name + "~12345678") <= vclock.MAX_NODE_NAME_CHARS


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n])
def test_bad_node_names_are_refused_with_what_is_allowed(name: str) -> None:
    for where in ({"overrides": {"node_id": name}}, {"env": {"KV_NODE_ID": name}}):
        with pytest.raises(ConfigError) as ei:
            load_settings(**({"env": {}} | where))  # type: ignore[arg-type]
        msg = str(ei.value)
        assert f"node name {name!r}" in msg
        assert f"1 to {NODE_NAME_MAX_CHARS} characters" in msg and "letter or digit" in msg


def test_an_empty_node_id_falls_back_to_the_advertised_address() -> None:
    s = load_settings(env={}, overrides={"node_id": "", "listen": "127.0.0.1:7100"})
    assert s.name == "127.0.0.1:7100"
    with pytest.raises(ConfigError, match="node name"):
        load_settings(env={}, overrides={"advertise": "bad/host:7100"})


def test_storage_compression_is_lz4_none_or_snappy() -> None:
    assert Settings().storage_compression == "lz4"
    assert load_settings(env={"KV_STORAGE_COMPRESSION": "snappy"}).storage_compression == "snappy"
    with pytest.raises(ConfigError, match=r"storage_compression must be one of lz4, none, snappy, got 'zstd'"):
        Settings(storage_compression="zstd")
