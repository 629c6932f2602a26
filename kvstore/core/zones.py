"""Zones: failure domains (a rack, a room, a cloud availability zone) that nodes live in.

A node's zone is a setting (``zone``, default :data:`DEFAULT_ZONE`). The ring records the zone
of each member, so that every node derives the same preference lists from the same ring;
this module holds what zones are and the one rule that orders nodes by them:
:func:`spread` puts a clockwise walk of the ring into "distinct zones first" order, so the
first N nodes of it (a preference list) span min(N, zones) zones, and the rest (the
fallbacks of a sloppy quorum) keep spreading over zones in the same way.

Pure: no I/O, usable by the ring, the config loader and the CLI alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

__all__ = ["DEFAULT_ZONE", "ZONE_MAX_CHARS", "parse_zones", "spread", "zone_problem"]

# The zone of a node that was given none. A cluster whose nodes all have it places keys
# exactly as it would without zones.
DEFAULT_ZONE = "default"
# Zones appear in ring documents (gossiped with every change), status tables and metrics
# labels: short names keep all of those small.
ZONE_MAX_CHARS = 64
_ZONE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")


def zone_problem(zone: object) -> str | None:
    """Why ``zone`` is not a usable zone name, or None if it is.

    A zone name is 1 to 64 ASCII letters, digits and ``. - _`` (no comma, so that a list of
    zones can be written ``a,b,c``; no space or colon, so it reads unambiguously in logs).
    """
    if not isinstance(zone, str):
        return f"zone {zone!r} is not a string"
    bad = sorted(set(zone) - _ZONE_CHARS)
    if not zone:
        return "zone name is empty"
    if len(zone) > ZONE_MAX_CHARS:
        return f"zone name {zone[:16]!r}... is {len(zone)} characters long (at most {ZONE_MAX_CHARS})"
    if bad:
        return (
            f"zone name {zone!r} contains " + ", ".join(repr(c) for c in bad)
            + ": a zone name is ASCII letters, digits and . - _"
        )
    return None


def parse_zones(text: str) -> tuple[str, ...]:
    """``"a,b,c"`` -> ``("a", "b", "c")``; ValueError naming the first bad or repeated zone."""
    zones = tuple(z.strip() for z in text.split(","))
    for z in zones:
        why = zone_problem(z)
        if why is not None:
            raise ValueError(why)
    if len(set(zones)) != len(zones):
        raise ValueError(f"zone list {text!r} names a zone twice")
    return zones


def spread(walk: Sequence[str], zone_of: Callable[[str], str]) -> tuple[str, ...]:
    """Reorder ``walk`` (distinct nodes, clockwise) so that zones come round-robin.

    Round 1 takes the first node of each zone, in walk order; round 2 the second node of
    each zone that has one; and so on. Within a round the walk order is kept, so with a
    single zone the result is ``walk`` itself (placement without zones is unchanged), and
    when the ring's owners already alternate over zones nothing moves either.
    """
    rounds: list[list[str]] = []
    seen: dict[str, int] = {}
    for node in walk:
        z = zone_of(node)
        k = seen.get(z, 0)
        seen[z] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(node)
    return tuple(_chain(rounds))


def _chain(rounds: Iterable[list[str]]) -> Iterable[str]:
    for r in rounds:
        yield from r
