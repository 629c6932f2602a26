"""The error hierarchy and its wire form (kvstore/errors.py)."""

from __future__ import annotations

import pytest

import kvstore
from kvstore import errors
from kvstore.client import Conflict as ClientConflict
from storage.errors import StorageError as RawStorageError


@pytest.mark.parametrize("cls", sorted(set(errors._BY_CODE.values()), key=lambda c: c.code))
def test_every_class_comes_back_from_the_wire_as_itself(cls: type[errors.KVError]) -> None:
    back = errors.from_wire(errors.to_wire(cls("boom")))
    assert type(back) is cls and back.message == "boom"


def test_codes_are_unique() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.KVError)]
    named = [c for c in classes if c is not errors.KVError]
    assert len({c.code for c in named}) == len(named)


def test_conflict_is_one_error_with_its_own_code() -> None:
    assert ClientConflict is errors.Conflict is kvstore.Conflict
    assert errors.Conflict.code == "conflict"
    # Still an InvalidRequest: code written against the old class keeps catching it.
    assert issubclass(errors.Conflict, errors.InvalidRequest)


def test_a_raw_storage_error_goes_on_the_wire_as_storage() -> None:
    wire = errors.to_wire(RawStorageError("disk full", path="/x"))
    assert wire == {"code": "storage", "message": "disk full"}
    assert isinstance(errors.from_wire(wire), errors.StorageError)


def test_sent_is_not_put_on_the_wire() -> None:
    e = errors.Unreachable("refused", sent=False)
    assert not errors.was_sent(e)
    back = errors.from_wire(errors.to_wire(e))
    assert isinstance(back, errors.Unreachable) and errors.was_sent(back)
    assert errors.was_sent(errors.Timeout("late"))
