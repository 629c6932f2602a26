"""kvstore.core.crdt: operations, plain values, the checks on operations and on states read
from peers, deferred removes, the bounds."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from kvstore.core import crdt
from kvstore.errors import InvalidRequest, TooLarge


def op(t: str, raw: object) -> crdt.Op:
    return crdt.parse_op(t, raw)


def test_counter_increments_and_decrements_per_actor() -> None:
    s = crdt.apply(None, op("counter", {"incr": 5}), actor="a~1")
    s = crdt.apply(s, op("counter", {"incr": -2}), actor="a~1")
    t = crdt.apply(None, op("counter", {"incr": 10}), actor="b~1")
    m = crdt.merge(s, t)
    assert crdt.value(m) == 13
    assert len(m.store) == 2  # one entry per actor, however many updates


def test_dots_are_drawn_above_the_floor() -> None:
    s = crdt.apply(None, op("set", {"add": ["x", "y"]}), actor="a~1", floor=41)
    assert sorted(c for d in s.store.values() for (_, c) in d) == [42, 43]
    assert s.clock == {"a~1": 43}


def test_register_last_write_wins_and_a_set_beats_what_it_saw() -> None:
    s = crdt.apply(None, op("register", {"set": "old"}), actor="a~1", ts=1000)
    # a coordinator whose clock is behind still wins over what it read
    s2 = crdt.apply(s, op("register", {"set": "new"}), actor="b~1", ts=10)
    assert crdt.value(s2) == b"new"
    late = crdt.apply(None, op("register", {"set": "concurrent"}), actor="c~1", ts=5000)
    assert crdt.value(crdt.merge(s2, late)) == b"concurrent"


def test_set_remove_with_a_context_waits_for_adds_not_seen_yet() -> None:
    at_a = crdt.apply(None, op("set", {"add": ["x"]}), actor="a~1")
    read = crdt.context(at_a)
    # the remove is coordinated by b, which has not seen a's add
    at_b = crdt.apply(None, op("set", {"remove": ["x"]}), actor="b~1", ctx=read)
    assert at_b.deferred == {(b"x",): read}
    merged = crdt.merge(at_b, at_a)
    assert crdt.value(merged) == []
    assert merged.deferred == {}  # applied, and forgotten once its dots were seen
    # an add a did after that read survives the remove
    again = crdt.apply(at_a, op("set", {"add": ["x"]}), actor="a~1")
    assert crdt.value(crdt.merge(at_b, again)) == [b"x"]


def _assert_lattice(states: list[crdt.State]) -> None:
    for a, b, c in itertools.product(states, repeat=3):
        assert crdt.merge(a, b) == crdt.merge(b, a)
        assert crdt.merge(crdt.merge(a, b), c) == crdt.merge(a, crdt.merge(b, c))
        assert crdt.merge(a, a) == a


def test_merge_is_associative_with_deferred_removes_partly_covered() -> None:
    # Found by test_set_lattice_add_wins_observed_remove. A deferred remove's entry for an
    # actor the clock already covers must be dropped on its own: dropped on one merge path
    # (the whole remove covered) but joined into a remove still pending on another, it came
    # out as {a~1: 1, b~1: 1} one way and {b~1: 1} the other.
    a1 = crdt.apply(None, op("set", {"add": ["x"]}), actor="a~1")
    b1 = crdt.apply(None, op("set", {"add": ["z"]}), actor="b~1")
    c1 = crdt.apply(None, op("set", {"remove": ["z"]}), actor="c~1", ctx=crdt.context(a1))
    a2 = crdt.apply(a1, op("set", {"remove": ["z"]}), actor="a~1", ctx=crdt.context(b1))
    assert c1.deferred == {(b"z",): {"a~1": 1}}
    assert a2.deferred == {(b"z",): {"b~1": 1}}
    left = crdt.merge(crdt.merge(a1, c1), a2)
    right = crdt.merge(a1, crdt.merge(c1, a2))
    assert left == right
    assert left.deferred == {(b"z",): {"b~1": 1}}  # only what the clock does not cover yet
    _assert_lattice([a1, b1, c1, a2])
    # what is left still removes b's add of z when it arrives, and not b's later add
    assert crdt.value(crdt.merge(left, b1)) == crdt.value(crdt.merge(b1, left)) == [b"x"]
    assert crdt.merge(left, b1).deferred == {}
    b2 = crdt.apply(b1, op("set", {"add": ["z"]}), actor="b~1")
    assert crdt.value(crdt.merge(left, b2)) == [b"x", b"z"]


def test_map_merge_is_associative_with_deferred_field_removes_partly_covered() -> None:
    # The same in a map, the deferred removes on a field and on a nested set's member.
    s_field = ["s", "set", {"add": ["m"]}]
    a1 = crdt.apply(None, op("map", {"update": [s_field]}), actor="a~1")
    b1 = crdt.apply(None, op("map", {"update": [["n", "counter", {"incr": 1}]]}), actor="b~1")
    c1 = crdt.apply(None, op("map", {"remove": [["s", "set"]]}), actor="c~1", ctx=crdt.context(a1))
    a2 = crdt.apply(a1, op("map", {"remove": [["s", "set"]]}), actor="a~1", ctx=crdt.context(b1))
    c2 = crdt.apply(c1, op("map", {"update": [["s", "set", {"remove": ["m"]}]]}), actor="c~1",
                    ctx=crdt.context(crdt.merge(a1, b1)))
    _assert_lattice([a1, b1, c1, a2, c2])
    assert crdt.merge(crdt.merge(a1, c1), a2).deferred == {(("s", "set"),): {"b~1": 1}}


def test_map_plain_value_and_nested_maps() -> None:
    s = crdt.apply(None, op("map", {"update": [
        ["n", "counter", {"incr": 2}],
        ["s", "set", {"add": ["b", "a"]}],
        ["r", "register", {"set": "v"}],
        ["f", "flag", {"enable": True}],
        ["inner", "map", {"update": [["deep", "counter", {"incr": 1}]]}],
    ]}), actor="a~1")
    assert crdt.value(s) == {
        "f_flag": True, "inner_map": {"deep_counter": 1}, "n_counter": 2, "r_register": b"v", "s_set": [b"a", b"b"],
    }
    s = crdt.apply(s, op("map", {"remove": [["s", "set"]], "update": [["f", "flag", {"enable": False}]]}), actor="a~1")
    assert set(crdt.value(s)) == {"inner_map", "n_counter", "r_register"}


def test_empty_values_of_each_type() -> None:
    assert crdt.value(None, "counter") == 0
    assert crdt.value(None, "set") == []
    assert crdt.value(None, "register") is None
    assert crdt.value(None, "map") == {}


@pytest.mark.parametrize(
    ("t", "raw", "why"),
    [
        ("counter", {"incr": "1"}, "integer"),
        ("counter", {"incr": True}, "integer"),
        ("counter", {"incr": 2**60}, "integer"),
        ("counter", {"add": ["x"]}, "takes"),
        ("counter", {}, "takes"),
        ("set", {"add": ["x"], "remove": ["x"]}, "same member"),
        ("set", {"add": [1]}, "bytes or str"),
        ("set", {"add": ["m"] * (crdt.MAX_OPS + 1)}, "limit"),
        ("register", {"set": 5}, "bytes or str"),
        ("flag", {"enable": True}, "unknown data type"),  # flags live in maps only
        ("map", {"update": [["f", "counter"]]}, "name, type, operation"),
        ("map", {"update": [["", "counter", {"incr": 1}]]}, "field name"),
        ("map", {"update": [["f", "counter", {"incr": 1}]], "remove": [["f", "counter"]]}, "once"),
        ("map", {"remove": [["f", "nope"]]}, "name, type"),
        ("nope", {"incr": 1}, "unknown data type"),
        ("counter", [1], "must be a map"),
    ],
)
def test_bad_operations_are_refused(t: str, raw: object, why: str) -> None:
    with pytest.raises(InvalidRequest, match=why):
        crdt.parse_op(t, raw)


def test_maps_nest_only_so_deep() -> None:
    raw: dict[str, object] = {"update": [["c", "counter", {"incr": 1}]]}
    for _ in range(crdt.MAX_DEPTH):
        raw = {"update": [["m", "map", raw]]}
    with pytest.raises(InvalidRequest, match="nest"):
        crdt.parse_op("map", raw)
    # The counter's own fast path honours the bound too.
    with pytest.raises(InvalidRequest, match="nest"):
        crdt.parse_op("counter", {"incr": 1}, depth=crdt.MAX_DEPTH)


@pytest.mark.parametrize("raw", [{"incr": True}, {"incr": 2**53 + 1}, {"incr": 1.0}, {"incr": 1, "x": 2}, {"add": [b"x"]}])
def test_the_counter_fast_path_refuses_what_the_general_one_does(raw: dict[object, object]) -> None:
    with pytest.raises(InvalidRequest):
        crdt.parse_op("counter", raw)


def test_an_increment_parses_to_the_same_op_on_either_path() -> None:
    assert crdt.parse_op("counter", {"incr": -7}) == crdt.Op("counter", incr=-7)
    assert crdt.parse_op("counter", {"incr": 5}, depth=1) == crdt.Op("counter", incr=5)
    assert crdt.parse_op("counter", {b"incr": 3}) == crdt.Op("counter", incr=3)  # the general path


def test_a_counter_op_on_a_set_is_refused() -> None:
    s = crdt.apply(None, op("set", {"add": ["x"]}), actor="a~1")
    with pytest.raises(InvalidRequest, match="holds a set"):
        crdt.apply(s, op("counter", {"incr": 1}), actor="a~1")
    with pytest.raises(InvalidRequest):
        crdt.merge(s, crdt.apply(None, op("counter", {"incr": 1}), actor="a~1"))


def test_too_many_deferred_removes_are_refused() -> None:
    s = None
    for i in range(crdt.MAX_DEFERRED):
        s = crdt.apply(s, op("set", {"remove": [f"m{i}"]}), actor="b~1", ctx={"a~1": 5})
    with pytest.raises(TooLarge):
        crdt.apply(s, op("set", {"remove": ["one-more"]}), actor="b~1", ctx={"a~1": 5})


def _body(s: crdt.State) -> list[object]:
    return msgpack.unpackb(crdt.encode(s)[len(crdt.MAGIC):], raw=False)  # type: ignore[no-any-return]


def _enc(body: list[object]) -> bytes:
    return crdt.MAGIC + msgpack.packb(body, use_bin_type=True)


def test_decode_refuses_what_encode_never_makes() -> None:
    good = crdt.apply(None, op("set", {"add": ["x"]}), actor="a~1")
    body = _body(good)
    assert crdt.decode(_enc(body)) == good
    bad = [
        b"plain value",
        crdt.MAGIC + b"\xc1",
        _enc([2, *body[1:]]),                       # unknown version
        _enc([body[0], 4, *body[2:]]),              # a bare flag
        _enc([*body[:3], [0], *body[4:]]),          # context below the dot it holds
        _enc([*body[:4], [b"x", [5, 1, None]], body[5]]),  # actor index out of range
        _enc([*body[:4], [b"x", []], body[5]]),     # an empty member
        _enc([*body[:2], ["b~1", "a~1"], [1, 1], *body[4:]]),  # unsorted actor table
        _enc([*body[:2], ["a~1", "a~1"], [1, 1], *body[4:]]),  # an actor named twice
        _enc([*body[:2], ["a~1"], [1, 1], *body[4:]]),          # more counters than actors
        _enc([1, 0, ["a~1"], [1], [0, 1, [1, -1]], []]),         # a negative counter total
        _enc([1, 0, ["a~1"], [1], [0, 1, [1]], []]),             # a counter entry of one number
        _enc([1, 0, ["a~1"], [1], [0, 1, [1, 2**63]], []]),      # past the counter bound
        _enc([*body[:5], [[[], []]]]),              # a deferred remove without a path
    ]
    for b in bad:
        with pytest.raises(InvalidRequest, match="malformed data type state"):
            crdt.decode(b)
    assert not crdt.is_state(b"\x00kvd")


def test_an_update_past_the_actor_bound_is_refused() -> None:
    s = crdt.State("counter", {(f"n{i}~1", 1): (1, 0) for i in range(crdt.MAX_ACTORS)},
                   {f"n{i}~1": 1 for i in range(crdt.MAX_ACTORS)}, {})
    assert crdt.value(crdt.apply(s, op("counter", {"incr": 1}), actor="n0~1")) == crdt.MAX_ACTORS + 1
    with pytest.raises(TooLarge, match="actors"):
        crdt.apply(s, op("counter", {"incr": 1}), actor="new~1")


_NAMES = st.text(alphabet="abcdé~", min_size=1, max_size=40)  # past 31 bytes: str8, not fixstr
_MEMBERS = st.one_of(_NAMES, st.binary(min_size=0, max_size=300))


@st.composite
def _states(draw: st.DrawFn) -> crdt.State:
    """A map state built by a few updates of several actors: every kind of field, nested
    maps, counters past 16 and 32 bits, members and registers of str and bytes, removes
    that wait for adds not seen yet (deferred)."""
    s = None
    for _ in range(draw(st.integers(1, 4))):
        actor = draw(st.sampled_from(["a~1", "b~2", "c" * 60 + "~3"]))
        update = [
            ["n", "counter", {"incr": draw(st.integers(-(2**40), 2**40))}],
            ["s", "set", {"add": draw(st.lists(_MEMBERS, max_size=3, unique=True))}],
            ["r", "register", {"set": draw(_MEMBERS)}],
            ["f", "flag", {"enable": draw(st.booleans())}],
            ["inner", "map", {"update": [[draw(_NAMES), "counter", {"incr": 1}]]}],
        ]
        s = crdt.apply(s, op("map", {"update": update}), actor=actor, ts=draw(st.integers(0, 2**45)))
        if draw(st.booleans()):
            ctx = {"z~9": draw(st.integers(1, 2**33))}
            s = crdt.apply(s, op("map", {"remove": [["gone", "set"]]}), actor=actor, ctx=ctx)
    assert s is not None
    return s


@given(_states())
def test_states_pack_to_the_bytes_msgpack_writes(s: crdt.State) -> None:
    # Packed bytes order deferred removes and break ties between payloads of one dot: the
    # encoder in use must write exactly what msgpack.packb(use_bin_type=True) would.
    assert crdt.encode(s) == _enc(_body(s))
    assert crdt.decode(crdt.encode(s)) == s
