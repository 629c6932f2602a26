"""kvstore.core.zones: zone names, zone lists and the distinct-zones-first order."""

from __future__ import annotations

import pytest

from kvstore.config import load_settings
from kvstore.core.zones import DEFAULT_ZONE, ZONE_MAX_CHARS, parse_zones, spread, zone_problem
from kvstore.errors import ConfigError


@pytest.mark.parametrize("zone", ["a", "us-east-1a", "rack_7", "r.1", "x" * ZONE_MAX_CHARS, DEFAULT_ZONE])
def test_good_zone_names(zone: str) -> None:
    assert zone_problem(zone) is None


@pytest.mark.parametrize(
    ("zone", "why"),
    [("", "empty"), ("a,b", "','"), ("a b", "' '"), ("a:b", "':'"), ("x" * (ZONE_MAX_CHARS + 1), "characters long"), (7, "not a string")],
)
def test_bad_zone_names(zone: object, why: str) -> None:
    problem = zone_problem(zone)
    assert problem is not None and why in problem


def test_parse_zones() -> None:
    assert parse_zones("a,b,c") == ("a", "b", "c")
    assert parse_zones(" a , b ") == ("a", "b")
    with pytest.raises(ValueError, match="twice"):
        parse_zones("a,b,a")
    with pytest.raises(ValueError, match="empty"):
        parse_zones("a,,b")


def test_spread_is_round_robin_over_zones_in_walk_order() -> None:
    zone = {"a1": "a", "a2": "a", "a3": "a", "b1": "b", "b2": "b", "c1": "c"}.__getitem__
    assert spread(("a1", "a2", "b1", "a3", "b2", "c1"), zone) == ("a1", "b1", "c1", "a2", "b2", "a3")
    assert spread(("b2", "a1", "a2"), zone) == ("b2", "a1", "a2")
    assert spread((), zone) == ()


def test_spread_with_one_zone_keeps_the_walk() -> None:
    walk = ("n3", "n1", "n2", "n5")
    assert spread(walk, lambda _n: DEFAULT_ZONE) == walk


def test_zone_setting_default_env_and_validation() -> None:
    assert load_settings(env={}).zone == DEFAULT_ZONE
    assert load_settings(env={"KV_ZONE": "rack-2"}).zone == "rack-2"
    assert load_settings(env={}, overrides={"zone": "b"}).zone == "b"
    with pytest.raises(ConfigError, match="zone name"):
        load_settings(env={}, overrides={"zone": "a,b"})
