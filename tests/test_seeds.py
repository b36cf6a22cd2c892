"""Seeds: integers, generators, the global generator and fold_in."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xdrop
from xdrop import reference


def test_a_generator_yields_fold_in_of_its_seed_and_draw_count():
    generator = xdrop.Generator(42)
    assert [generator.next_seed() for _ in range(3)] == [xdrop.fold_in(42, k) for k in range(3)]
    assert generator.draws == 3


def test_a_generator_as_seed_gives_a_new_mask_each_call(array, host):
    x = array(np.ones(128))
    generator = xdrop.Generator(5)
    first, second = (host(xdrop.dropout(x, 0.5, seed=generator)) for _ in range(2))
    assert (first != second).any()
    assert (first == host(xdrop.dropout(x, 0.5, seed=xdrop.fold_in(5, 0)))).all()


def test_manual_seed_makes_seed_none_reproducible(array, host):
    x = array(np.ones(128))
    xdrop.manual_seed(7)
    run1 = [host(xdrop.dropout(x, 0.5)) for _ in range(3)]
    xdrop.manual_seed(7)
    run2 = [host(xdrop.dropout(x, 0.5)) for _ in range(3)]
    assert all((a == b).all() for a, b in zip(run1, run2, strict=True))
    assert (run1[0] != run1[1]).any()


def test_eval_draws_no_seed(array):
    generator = xdrop.Generator(1)
    xdrop.dropout(array(np.ones(3)), 0.5, training=False, seed=generator)
    assert generator.draws == 0


def test_every_training_call_draws_one_seed_whatever_p(array):
    generator = xdrop.Generator(1)
    for p in (0.0, 0.5, 1.0):
        xdrop.dropout(array(np.ones(3)), p, seed=generator)
    assert generator.draws == 3


def test_the_global_generator_is_thread_safe():
    generator = xdrop.manual_seed(3)

    def draw() -> None:
        for _ in range(200):
            xdrop.dropout_mask((1,), 0.5)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert generator.draws == 1600


def test_fold_in_is_the_reference_fold_in():
    for seed, data in ((0, 0), (2**64 - 1, 2**32 - 1), (123, 456)):
        assert xdrop.fold_in(seed, data) == reference.fold_in(seed, data)


def test_fold_in_gives_distinct_seeds_for_distinct_steps():
    assert len({xdrop.fold_in(9, step) for step in range(1000)}) == 1000


def test_generator_rejects_bad_seeds():
    with pytest.raises(xdrop.ArgumentValueError, match="seed must be"):
        xdrop.Generator(-1)


def test_set_rng_and_the_environment_choose_the_default_generator(monkeypatch):
    monkeypatch.delenv("XDROP_RNG", raising=False)
    assert xdrop.get_rng() == "portable"
    monkeypatch.setenv("XDROP_RNG", "native")
    assert xdrop.get_rng() == "native"
    xdrop.set_rng("portable")
    try:
        assert xdrop.get_rng() == "portable"
    finally:
        xdrop.set_rng(None)
    monkeypatch.setenv("XDROP_RNG", "fast")
    with pytest.raises(xdrop.ArgumentValueError, match="XDROP_RNG must be"):
        xdrop.get_rng()


def test_numpy_seed_arrays_are_host_seeds(array, host):
    x = array(np.ones(64))
    expected = host(xdrop.dropout(x, 0.5, seed=2**64 - 1))
    assert (host(xdrop.dropout(x, 0.5, seed=np.array(-1, np.int64))) == expected).all()
    assert (
        host(xdrop.dropout(x, 0.5, seed=np.array([2**32 - 1] * 2, np.uint32))) == expected
    ).all()
    with pytest.raises(xdrop.ArgumentTypeError, match="seed must be"):
        xdrop.dropout(x, 0.5, seed=np.array([1, 2, 3]))
