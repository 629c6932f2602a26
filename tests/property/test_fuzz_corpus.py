"""Replay the fuzzers' seed corpus (tests/fuzz_corpus/TARGET/*) through the fuzz targets, plus
a short seeded run of random mutations of it: a target raising is a finding.

The long, coverage-guided runs are benchmarks/fuzz.py (atheris); an input they find is
added to the corpus, and so stays a regression test here.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from kvstore.testing.fuzz_targets import TARGETS

CORPUS = Path(__file__).resolve().parents[1] / "fuzz_corpus"


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op == 2 and b:
            del b[rng.randrange(len(b))]
        else:
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.choice([b"\xdd\xff\xff\xff\xff", b"\xc6\x7f\xff\xff\xff", b"\x91" * 40, b"\xc1"])
    return bytes(b)


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_corpus_replays_cleanly(target: str) -> None:
    files = sorted((CORPUS / target).iterdir())
    assert files, f"no seed corpus for {target}"
    fn = TARGETS[target]
    seeds = [f.read_bytes() for f in files]
    for data in seeds:
        fn(data)
    rng = random.Random(f"corpus-{target}")
    for _ in range(2000):
        fn(_mutate(rng, rng.choice(seeds)))
