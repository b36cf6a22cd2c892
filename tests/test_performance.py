"""The properties the fast paths promise, checked without timing anything: memory bounds, one
compilation per shape when eager calls are staged, in-place words that never touch the caller's
arrays, and chunked application that gives the bits of the whole-mask path."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

import xdrop
from xdrop import api, kernel, reference, spec
from xdrop.benchmarks.suites import peak_bytes


def test_chunked_application_gives_the_bits_of_one_select(xp, array, host):
    """select_chunks, the backend's or the protocol's default, against a whole-mask select."""
    x = array(np.linspace(-3, 3, 70_003))
    key = spec.key_words(xp, 99)
    for factor in (None, spec.inverted_scale(0.3, "float32")):
        chunks = spec.keep_chunks(xp, key, 70_003, spec.keep_count(0.3), offset=5, like=x)
        y, keep = xp.select_chunks(chunks, x, factor, True)
        whole = spec.keep_mask(xp, key, (70_003,), spec.keep_count(0.3), offset=5, like=x)
        expected = xp.select(whole, x if factor is None else xp.scale(x, factor))
        assert (host(keep) == host(whole)).all()
        assert (host(y).view(np.uint32) == host(expected).view(np.uint32)).all()


def test_masks_longer_than_a_chunk_match_the_reference(xp, array, host):
    count = 3 * (xp.chunk_size or 1000) + 17
    y, keep = xdrop.dropout(array(np.ones(count)), 0.4, seed=7, offset=2**32 - 50_000,
                            return_mask=True)  # fmt: skip
    expected = reference.keep_mask(7, 0.4, count, 2**32 - 50_000)
    assert host(keep).tolist() == expected
    assert (host(y) == np.where(expected, np.float32(1) / np.float32(0.6), 0)).all()


def test_word_operations_in_place_never_touch_the_callers_arrays(xp, host):
    seed, data = xp.asarray(np.array(7, np.int64)), xp.asarray(np.array(11, np.uint32))
    seed_copy, data_copy = host(seed).copy(), host(data).copy()
    for _ in range(2):  # the same answer twice: nothing was overwritten
        folded = xdrop.fold_in(seed, data)
        words = [int(word) % 2**32 for word in map(host, xp.seed_words(folded))]
        assert (words[0] << 32 | words[1]) == reference.fold_in(7, 11)
    assert host(seed) == seed_copy and host(data) == data_copy
    key = spec.key_words(xp, 5)
    before = [host(word).copy() for word in key]
    spec.keep_mask(xp, key, (100,), spec.keep_count(0.5))
    assert [host(word) for word in key] == before


def test_numpy_peak_memory_is_the_output_plus_a_chunk():
    count = 1_000_000
    x = np.ones(count, np.float32)
    chunk_bytes = 16 * 4 * xdrop.registry.load("numpy").chunk_size  # a few words per element
    with xdrop.use_backend("numpy"):
        assert peak_bytes(lambda: xdrop.dropout(x, 0.5, seed=1)) <= 4 * count + chunk_bytes
        with_mask = peak_bytes(lambda: xdrop.dropout(x, 0.5, seed=1, return_mask=True))
    assert with_mask <= 5 * count + chunk_bytes


def test_torch_saves_one_byte_per_element_for_backward():
    torch = pytest.importorskip("torch")
    x = torch.ones(10_000, requires_grad=True)
    saved = []

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() != x.untyped_storage().data_ptr():
            saved.append(tensor.untyped_storage().nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        xdrop.dropout(x, 0.5, seed=0)
    assert sum(saved) <= x.numel()


def test_staged_steps_compile_per_program_not_per_seed_offset_or_rate(xp, array, host, monkeypatch):
    if xp.stage(lambda v: v) is None:
        pytest.skip(f"the {xp.name} backend runs eager calls op by op")
    traces: list[str] = []

    def counting(stage: Any) -> Any:
        def counted_stage(function: Any, *options: Any) -> Any:
            def traced(*arguments: Any) -> Any:
                traces.append(xp.name)
                return function(*arguments)

            return stage(traced, *options)

        return counted_stage

    monkeypatch.setattr(xp, "stage", counting(xp.stage))
    monkeypatch.setattr(xp, "stage_any_shape", counting(xp.stage_any_shape))
    api._staged.cache_clear()
    x = array(np.ones((4, 33)))
    monkeypatch.setattr(kernel, "compiled", None)  # eager TensorFlow calls would run the kernel
    calls_of_one_program(x, host, traces)


def calls_of_one_program(x: Any, host: Any, traces: list[str]) -> None:
    for call in range(4):
        y = xdrop.dropout(x, 0.1 + call / 10, seed=call, offset=call * 2**31)
        want = xdrop.dropout(np.ones((4, 33), np.float32), 0.1 + call / 10, seed=call,
                             offset=call * 2**31)  # fmt: skip
        np.testing.assert_array_equal(host(y), want)
    first = len(traces)
    assert 1 <= first <= 3  # a step for any shape of the rank (TensorFlow), then this shape's
    for call in range(6):
        xdrop.dropout(x, 0.05 + call / 10, seed=call + 9, offset=call, mode="inverted")
    assert len(traces) == first
    xdrop.dropout(x, 0.3, seed=1, mode="classic")  # another program
    assert len(traces) > first


def test_staging_keeps_p_zero_as_x_itself(xp, array):
    x = array(np.ones(5))
    assert xdrop.dropout(x, 0.0, seed=3) is x


@pytest.mark.parametrize("size", [0, 1, 2**15 + 1])
def test_sizes_around_the_chunk_boundaries(xp, array, host, size):
    y, keep = xdrop.dropout(array(np.ones(size)), 0.5, seed=4, return_mask=True)
    assert host(keep).tolist() == reference.keep_mask(4, 0.5, size)
    assert host(y).shape == (size,) and math.prod(host(keep).shape) == size
