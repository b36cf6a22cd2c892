"""A converted model's dropout sites: each site's seed is derived from the model's seed and the
site's name, by a rule any framework can compute (xdrop.layers.common.site_seed)."""

from __future__ import annotations

import hashlib

import pytest

import xdrop
from xdrop.layers.common import site_seed

pytestmark = pytest.mark.backend_independent

SEEDS = (15639810121967974017, 3938892101481635354, 8030329205123590493)


@pytest.mark.parametrize("name", ["", "dropout", "bert.encoder.layer.0.attention.self#0", "é"])
def test_a_site_folds_the_two_words_of_its_names_hash_into_the_seed(name):
    digest = hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest()
    high, low = int.from_bytes(digest[:4], "big"), int.from_bytes(digest[4:], "big")
    assert site_seed(7, name) == xdrop.fold_in(xdrop.fold_in(7, high), low)


def test_site_seeds_are_pinned_so_that_checkpoints_stay_valid():
    assert site_seed(0, "encoder.dropout") == SEEDS[0]
    assert site_seed(42, "") == SEEDS[1]
    assert site_seed(2**64 - 1, "bert.encoder.layer.0.attention.self") == SEEDS[2]


def test_sites_and_seeds_give_distinct_streams():
    names = [f"layer.{i}.dropout" for i in range(100)]
    assert len({site_seed(0, name) for name in names}) == 100
    assert len({site_seed(seed, "dropout") for seed in range(100)}) == 100
