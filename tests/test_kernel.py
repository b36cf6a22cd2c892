"""The fused kernels give the bits of the spec's operations (``XDROP_KERNEL=0``) and of the
reference, for every dtype, rate, offset and layout; torch's autograd function saves nothing.

Run on the backend under test where it has a fused kernel (NumPy, torch); CI runs the rest of the
suite once more with ``XDROP_KERNEL=0``, so both paths pass the same tests."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import xdrop
from xdrop import kernel, reference, spec
from xdrop.fused import FusedCall
from xdrop.protocol import Backend

DTYPES = ["float16", "bfloat16", "float32", "float64"]
RATES = [1e-12, 0.1, 0.5, 0.9, 0.999, 1.0]  # 1e-12 keeps everything: T == 2**32
BITS = {"float16": np.uint16, "bfloat16": np.uint32, "float32": np.uint32, "float64": np.uint64}
# the host copy of bfloat16 is float32 (exact), hence its 32-bit words above

needs_kernel = pytest.mark.skipif(kernel.compiled is None, reason=f"not built: {kernel.MISSING}")


@pytest.fixture
def fused(xp: Backend) -> Backend:
    """The backend under test, where it has a fused kernel."""
    if type(xp).fused_dropout is Backend.fused_dropout:
        pytest.skip(f"the {xp.name} backend has no fused kernel")
    if kernel.compiled is None:
        pytest.skip(f"the compiled kernel is not built: {kernel.MISSING}")
    return xp


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The dtypes the compiled kernel ran on, call by call."""
    seen: list[str] = []
    compiled = kernel.compiled

    class Spy:
        @staticmethod
        def dropout(*arguments: object) -> None:
            seen.append(str(arguments[3]))
            compiled.dropout(*arguments)

    monkeypatch.setattr(kernel, "compiled", Spy)
    return seen


def set_kernel_variable(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """``XDROP_KERNEL`` set to ``value`` (None: unset) and read again; the test's end restores
    the variable and reads it again (``tests/conftest.py``)."""
    if value is None:
        monkeypatch.delenv(kernel.ENVIRONMENT_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(kernel.ENVIRONMENT_VARIABLE, value)
    kernel.refresh()


def both_paths(monkeypatch: pytest.MonkeyPatch, call):
    """``call()`` with the kernel, then with ``XDROP_KERNEL=0``."""
    set_kernel_variable(monkeypatch, None)
    with_kernel = call()
    set_kernel_variable(monkeypatch, "0")
    without = call()
    set_kernel_variable(monkeypatch, None)
    return with_kernel, without


def assert_same_bits(a: np.ndarray, b: np.ndarray, dtype: str, flushed: bool = False) -> None:
    """Bit for bit, except that any NaN equals any NaN (payloads are the hardware's), and, where
    ``b`` comes from a backend that flushes subnormals to zero (``flushed``: XLA, the spec's one
    known exception), a subnormal of ``a`` may be ``+-0`` there."""
    assert a.shape == b.shape and a.dtype == b.dtype
    words = BITS[dtype]
    same = (a.view(words) == b.view(words)) | (np.isnan(a) & np.isnan(b))
    if flushed:
        tiny = np.finfo(np.float32 if dtype == "bfloat16" else dtype).tiny
        same |= (b == 0) & (np.abs(a) < tiny) & (np.signbit(a) == np.signbit(b))
    assert same.all(), f"{np.count_nonzero(~same)} elements differ, first at {np.argmin(same)}"


def awkward_values(count: int, dtype: str) -> np.ndarray:
    """Normal values mixed with NaN, infinities, signed zeros, subnormals and the largest
    finite values (whose products overflow)."""
    if dtype == "bfloat16":
        largest, tiny = 3.3895313892515355e38, 2.0**-133
    else:
        info = np.finfo(dtype)
        largest, tiny = float(info.max), float(info.smallest_subnormal)
    special = [np.nan, np.inf, -np.inf, 0.0, -0.0, largest, -largest, tiny, -3 * tiny, 2**-14]
    values = np.random.default_rng(count).standard_normal(count) * 3
    values[: len(special) * 7 : 7] = special[: len(values[: len(special) * 7 : 7])]
    return values


def run_both(fused, array, host, monkeypatch, calls, values, dtype, **options):
    x = array(values, dtype)

    def call():
        y, keep = xdrop.dropout(x, return_mask=True, **options)
        return host(y), host(keep)

    (y, keep), (y0, keep0) = both_paths(monkeypatch, call)
    assert calls, "the compiled kernel did not run"
    assert_same_bits(y, y0, dtype, flushed=fused.name == "tensorflow")  # its XLA step flushes
    assert (keep == keep0).all()
    return y, keep


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", RATES)
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_the_kernel_gives_the_bits_of_the_spec(fused, array, host, monkeypatch, calls, dtype, p, mode):  # fmt: skip
    values = awkward_values(2000, dtype)
    for offset in (0, 2**32 - 1000, 2**64 - 2000):  # the last counter is 2**64 - 1
        run_both(fused, array, host, monkeypatch, calls, values, dtype,
                 p=p, seed=0xDEADBEEF_12345678, mode=mode, offset=offset)  # fmt: skip


@pytest.mark.parametrize("p", [1 - 2**-23, 1 - 2**-24])
def test_tiny_keep_probabilities(fused, array, host, monkeypatch, calls, p):
    run_both(fused, array, host, monkeypatch, calls, awkward_values(5000, "float64"), "float64",
             p=p, seed=3)  # fmt: skip


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_kernel_gives_the_bits_of_the_reference(fused, array, host, calls, dtype):
    values = awkward_values(300, dtype)
    x = array(values, dtype)
    exact = host(x).astype(np.float64).tolist()  # the values as the dtype holds them
    for p, mode, offset in [(0.3, "inverted", 2**32 - 150), (0.7, "classic", 5), (1.0, "inverted", 0)]:  # fmt: skip
        y, keep = xdrop.dropout(x, p, seed=2**64 - 1, mode=mode, offset=offset, return_mask=True)
        expected, expected_keep = reference.dropout(
            exact, (300,), p, 2**64 - 1, dtype=dtype, mode=mode, offset=offset
        )
        assert host(keep).tolist() == expected_keep
        assert_same_bits(host(y).astype(np.float64), np.array(expected), "float64")
    assert calls == [dtype] * 3


@pytest.mark.parametrize("offset", [0, 2**32 - 100, 2**33 - 1])
def test_counters_crossing_a_multiple_of_two_to_the_32(fused, array, host, calls, offset):
    _, keep = xdrop.dropout(array(np.ones(200)), 0.5, seed=11, offset=offset, return_mask=True)
    assert host(keep).tolist() == reference.keep_mask(11, 0.5, 200, offset)


def test_strided_inputs_follow_the_row_major_index(fused, array, host, monkeypatch, calls):
    if fused.name == "tensorflow":
        pytest.skip("TensorFlow's tensors are dense and row-major: it has no strided views")
    base = array(awkward_values(24 * 35, "float32").reshape(24, 35))
    views = {
        "transposed": lambda: base.T,
        "every other column": lambda: base[:, ::2],
        "one column": lambda: base[:, 3],
    }
    if fused.name == "torch":
        views["broadcast"] = lambda: base[:1].expand(6, 35)
        views["reversed"] = lambda: base.flip(0)
    else:
        views["reversed"] = lambda: base[::-1]
    for name, view in views.items():

        def call(view=view):
            y, keep = xdrop.dropout(view(), 0.4, seed=8, return_mask=True)
            return host(y), host(keep)

        (y, keep), (y0, keep0) = both_paths(monkeypatch, call)
        assert_same_bits(y, y0, "float32")
        assert (keep == keep0).all(), name
        assert y.shape == host(view()).shape
    assert len(calls) == len(views)


@pytest.mark.parametrize("shape", [(), (0,), (3, 0, 2), (1,)])
def test_zero_dimensional_and_empty_inputs(fused, array, host, monkeypatch, calls, shape):
    values = np.full(shape, 1.5)

    def call():
        y, keep = xdrop.dropout(array(values), 0.5, seed=1, return_mask=True)
        return host(y), host(keep)

    (y, keep), (y0, keep0) = both_paths(monkeypatch, call)
    assert y.shape == y0.shape == keep.shape == shape
    assert_same_bits(y, y0, "float32")
    assert (keep == keep0).all()


def test_without_return_mask_only_the_output_comes_back(fused, array, host, calls):
    x = array(np.ones(1000))
    y = xdrop.dropout(x, 0.5, seed=4)
    expected = np.where(reference.keep_mask(4, 0.5, 1000), np.float32(2), np.float32(0))
    assert_same_bits(host(y), expected, "float32")
    assert calls == ["float32"]


def test_the_input_is_never_written(fused, array, host):
    values = awkward_values(500, "float32")
    x = array(values)
    before = host(x).copy()
    xdrop.dropout(x, 0.5, seed=1)
    assert_same_bits(host(x), before, "float32")


def test_concurrent_calls_give_the_same_bits(fused, array, host):
    """The kernel runs without the GIL: calls on several threads must not interfere."""
    x = array(awkward_values(200_000, "float32"))
    expected = host(xdrop.dropout(x, 0.5, seed=21))
    results: list[np.ndarray] = []

    def work() -> None:
        results.append(host(xdrop.dropout(x, 0.5, seed=21)))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 4
    for result in results:
        assert_same_bits(result, expected, "float32")


def test_masks_at_another_shape_and_evaluation_do_not_use_the_kernel(fused, array, calls):
    x = array(np.ones((4, 6)))
    xdrop.dropout(x, 0.5, seed=1, noise_shape=(4, 1))
    xdrop.dropout(x, 0.5, seed=1, training=False)
    xdrop.dropout(x, 0.0, seed=1)
    assert calls == []


def test_xdrop_kernel_0_turns_the_kernel_off(fused, array, calls, monkeypatch):
    set_kernel_variable(monkeypatch, "0")
    xdrop.dropout(array(np.ones(10)), 0.5, seed=1)
    assert calls == []
    assert "off" in kernel.status()


def test_a_bad_xdrop_kernel_value_is_an_error_naming_it(fused, array, monkeypatch):
    set_kernel_variable(monkeypatch, "yes")
    with pytest.raises(xdrop.ArgumentValueError, match=r"XDROP_KERNEL must be .*'yes'"):
        xdrop.dropout(array(np.ones(3)), 0.5, seed=1)


@needs_kernel
def test_a_bad_xdrop_kernel_value_is_reported_by_the_status_line(monkeypatch):
    set_kernel_variable(monkeypatch, "2")
    assert kernel.status() == (
        'compiled kernel: none: XDROP_KERNEL must be "0" (off) or "1" (on where available), '
        "got '2'"
    )


def test_xdrop_kernel_is_read_once_until_refreshed(fused, array, calls, monkeypatch):
    set_kernel_variable(monkeypatch, None)
    monkeypatch.setenv("XDROP_KERNEL", "0")  # not read yet: the kernel stays on
    xdrop.dropout(array(np.ones(10)), 0.5, seed=1)
    assert calls == ["float32"]
    monkeypatch.setenv("XDROP_KERNEL", "2")  # nor a bad value: calls keep working
    xdrop.dropout(array(np.ones(10)), 0.5, seed=1)
    assert calls == ["float32", "float32"]
    kernel.refresh()
    with pytest.raises(xdrop.ArgumentValueError, match="XDROP_KERNEL"):
        xdrop.dropout(array(np.ones(10)), 0.5, seed=1)
    monkeypatch.setenv("XDROP_KERNEL", "0")
    kernel.refresh()
    xdrop.dropout(array(np.ones(10)), 0.5, seed=1)
    assert calls == ["float32", "float32"]


@needs_kernel
@pytest.mark.backend_independent
@pytest.mark.parametrize(("variable", "value"), [("XDROP_KERNEL", "2"), ("XDROP_KERNEL_THREADS", "0")])  # fmt: skip
def test_a_bad_setting_raises_only_where_a_kernel_would_run(monkeypatch, variable, value):
    """JAX arrays and torch tensors on a device without a kernel (``meta``) never run one: a
    bad setting leaves their calls alone, which then give the bits they give with the kernel
    off; NumPy arrays and CPU tensors would run it, and raise."""
    jnp = pytest.importorskip("jax.numpy")
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    untouched = (lambda: jnp.linspace(-1, 1, 100), lambda: torch.ones(4, device="meta"))
    set_kernel_variable(monkeypatch, "0")
    expected = [xdrop.dropout(make(), 0.5, seed=3) for make in untouched]
    monkeypatch.delenv("XDROP_KERNEL")
    monkeypatch.setenv(variable, value)
    kernel.refresh()
    for make, before in zip(untouched, expected, strict=True):
        y = xdrop.dropout(make(), 0.5, seed=3)
        assert type(y) is type(before) and y.shape == before.shape
    assert (np.asarray(xdrop.dropout(untouched[0](), 0.5, seed=3)) == np.asarray(expected[0])).all()
    with xdrop.use_backend("numpy"), pytest.raises(xdrop.ArgumentValueError, match=variable):
        xdrop.dropout(np.ones(4, np.float32), 0.5, seed=3)  # else the default backend's array
    for ran_by_the_kernel in (torch.ones(4), tf.ones(4)):
        with pytest.raises(xdrop.ArgumentValueError, match=variable):
            xdrop.dropout(ran_by_the_kernel, 0.5, seed=3)


@needs_kernel
def test_status_says_the_kernel_is_in_use(monkeypatch):
    set_kernel_variable(monkeypatch, None)
    assert "in use" in kernel.status()


# -- threads: every split gives the bits of one pass ------------------------------------------------
SPLIT_SIZES = [1, 63, 64, 65, 127, 449, 1023, 1024, 1025, 2047, 3 * 1024 + 5, 10_001]
SPLIT_THREADS = [1, 2, 3, 7]


@pytest.fixture
def threads_restored():
    """:mod:`xdrop.kernel`, with :func:`~xdrop.kernel.set_threads`' defaults back at the end."""
    yield kernel
    kernel.set_threads()


@pytest.fixture
def thread_counts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The thread counts the compiled kernel was given, call by call."""
    seen: list[int] = []
    compiled = kernel.compiled

    class Spy:
        @staticmethod
        def dropout(*arguments: object) -> None:
            seen.append(int(arguments[9]))  # type: ignore[call-overload]
            compiled.dropout(*arguments)

    monkeypatch.setattr(kernel, "compiled", Spy)
    return seen


@pytest.fixture
def torch_threads():
    """``torch_threads(n)``: ``torch.set_num_threads(n)`` where torch is imported (it caps the
    kernel's threads on torch tensors), restored at the end."""
    torch = sys.modules.get("torch")
    if torch is None:
        yield lambda count: None
        return
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def set_threads_variable(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    """``XDROP_KERNEL_THREADS`` set to ``value`` (None: unset) and read again."""
    if value is None:
        monkeypatch.delenv(kernel.THREADS_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(kernel.THREADS_VARIABLE, value)
    kernel.refresh()


def split_pass(x, threads, grain, offset, factor, mask, dtype):
    """The compiled kernel on ``x`` (NumPy) split as asked: ``(y's words, keep or None)``."""
    y = np.empty_like(x)
    keep = np.empty(x.shape, np.bool_) if mask else None
    kernel.compiled.dropout(x, y, keep, dtype, 0xDEADBEEF, 0x01234567, offset,
                            spec.keep_threshold(0.3), factor, threads, grain)  # fmt: skip
    return y.view(f"u{x.itemsize}"), keep


@needs_kernel
@pytest.mark.parametrize("dtype", DTYPES)
def test_every_split_gives_the_bits_of_one_thread(dtype):
    """Sizes around the parts' 64-element alignment and the kernel's 1024-element blocks, counters
    crossing 2**32 at and after a part's start, the last counter 2**64 - 1; as many threads as
    elements allow (grain 1) and fewer."""
    numpy_dtype = np.dtype(
        pytest.importorskip("ml_dtypes").bfloat16 if dtype == "bfloat16" else dtype
    )
    values = awkward_values(max(SPLIT_SIZES), dtype).astype(numpy_dtype)
    factor = spec.inverted_scale(0.3, dtype)
    for size in SPLIT_SIZES:
        x = values[:size]
        for offset in (0, 2**32 - 1, 2**32 - size // 2 - 3, 2**64 - size):
            for factor_, mask in ((factor, True), (None, False)):
                y1, keep1 = split_pass(x, 1, 1, offset, factor_, mask, dtype)
                for threads in SPLIT_THREADS[1:]:
                    for grain in (1, 100):
                        y, keep = split_pass(x, threads, grain, offset, factor_, mask, dtype)
                        where = (size, offset, threads, grain)
                        assert (y == y1).all(), where
                        assert keep is None or (keep == keep1).all(), where


@needs_kernel
def test_the_compiled_kernel_refuses_a_bad_split():
    x = np.ones(10, np.float32)
    for threads, grain in ((0, 1), (kernel.MAX_THREADS + 1, 1), (2, 0)):
        with pytest.raises(ValueError, match="threads must be from 1 to 256 and grain at least 1"):
            kernel.compiled.dropout(x, np.empty_like(x), None, "float32", 0, 0, 0, 2**31, None,
                                    threads, grain)  # fmt: skip


@needs_kernel
@pytest.mark.parametrize("position", ["k0", "k1", "offset", "threshold", "threads", "grain", "openmp_grain"])  # fmt: skip
@pytest.mark.parametrize("value", [-1, 2**64, 2**64 + 2**31])
def test_the_compiled_kernel_refuses_integers_beyond_64_bits_rather_than_wrap_them(position, value):
    """Taken modulo 2**64 (or 2**32), ``2**64 + 2**31`` would be a valid threshold or key word,
    and ``2**64`` a grain of 0, which asks for no OpenMP threads."""
    x = np.ones(10, np.float32)
    arguments = {"k0": 1, "k1": 2, "offset": 0, "threshold": 2**31, "factor": None,
                 "threads": 2, "grain": 1, "openmp_grain": 0}  # fmt: skip
    arguments[position] = value
    with pytest.raises(OverflowError):
        kernel.compiled.dropout(x, np.empty_like(x), None, "float32", *arguments.values())


def test_threads_give_the_bits_of_one_thread(fused, array, host, threads_restored, thread_counts, torch_threads):  # fmt: skip
    """Through ``xdrop.dropout``: contiguous and strided inputs, every dtype, with the mask."""
    for dtype in DTYPES:
        base = array(awkward_values(48 * 70, dtype).reshape(48, 70), dtype)
        layouts = [("contiguous", base)]
        if fused.name != "tensorflow":  # TensorFlow's tensors are dense, row-major: no views
            layouts += [("transposed", base.T), ("strided", base[::3, 1::2])]
        for name, x in layouts:
            results = []
            for threads in SPLIT_THREADS:
                kernel.set_threads(threads, grain=64)
                torch_threads(threads)
                y, keep = xdrop.dropout(x, 0.5, seed=6, offset=2**32 - 1000, return_mask=True)
                results.append((host(y), host(keep)))
            for (y, keep), threads in zip(results, SPLIT_THREADS, strict=True):
                assert_same_bits(y, results[0][0], dtype)
                assert (keep == results[0][1]).all(), (dtype, name, threads)
    assert thread_counts == SPLIT_THREADS * (len(layouts) * len(DTYPES))


def test_large_arrays_use_threads_from_twice_the_grain(fused, array, host, threads_restored, thread_counts, torch_threads):  # fmt: skip
    """The default grain: a call of ``2 * GRAIN`` elements and more is split (the kernel is
    given the count), and gives the bits of one thread."""
    x = array(np.linspace(-3, 3, 2 * kernel.GRAIN + 777))
    kernel.set_threads(1)
    one = host(xdrop.dropout(x, 0.3, seed=12))
    kernel.set_threads(2)
    torch_threads(2)
    two = host(xdrop.dropout(x, 0.3, seed=12))
    assert thread_counts == [1, 2]
    assert_same_bits(two, one, "float32")


COUNT_INTEGER = "count must be an integer or None, got "


@needs_kernel
@pytest.mark.parametrize(
    ("count", "grain", "error", "message"),
    [
        (0, None, xdrop.ArgumentValueError, "count must be an integer from 1 to 256, or None, got 0"),
        (257, None, xdrop.ArgumentValueError, "count must be an integer from 1 to 256, or None, got 257"),
        (2.0, None, xdrop.ArgumentTypeError, COUNT_INTEGER + "2.0 of type float"),
        (True, None, xdrop.ArgumentTypeError, COUNT_INTEGER + "True of type bool"),
        ("2", None, xdrop.ArgumentTypeError, COUNT_INTEGER + "'2' of type str"),
        (2, 0, xdrop.ArgumentValueError, "grain must be an integer at least 1, or None, got 0"),
        (2, 1.5, xdrop.ArgumentTypeError, "grain must be an integer or None, got 1.5 of type float"),
    ],
)  # fmt: skip
def test_set_threads_refuses_bad_values(threads_restored, count, grain, error, message):
    kernel.set_threads(3)
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        kernel.set_threads(count, grain=grain)
    assert kernel.threads() == 3  # unchanged


@needs_kernel
def test_set_threads_takes_numpy_integers_as_offset_does(threads_restored):
    kernel.set_threads(np.int64(3), grain=np.uint32(1000))
    assert kernel.threads() == 3 and type(kernel.threads()) is int
    assert "up to 3 threads, from 2000 elements" in kernel.status()
    with pytest.raises(xdrop.ArgumentTypeError, match=r"^count must be an integer or None"):
        kernel.set_threads(np.True_)


@needs_kernel
def test_the_thread_count_defaults_to_the_cores_available(threads_restored, monkeypatch):
    set_threads_variable(monkeypatch, None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert kernel.threads() == min(cores, kernel.MAX_THREADS)


@needs_kernel
def test_xdrop_kernel_threads_sets_the_count_until_set_threads_does(threads_restored, monkeypatch):
    set_threads_variable(monkeypatch, " 3 ")
    assert kernel.threads() == 3
    assert "up to 3 threads, from 262144 elements" in kernel.status()
    kernel.set_threads(1)  # wins over the variable, and stays through refresh()
    kernel.refresh()
    assert kernel.threads() == 1 and kernel.status().endswith("; 1 thread)")
    kernel.set_threads(None, grain=1000)
    assert kernel.threads() == 3 and "from 2000 elements" in kernel.status()


@needs_kernel
def test_a_grain_beyond_any_array_is_taken_as_it_is(fused, array, host, threads_restored):
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    expected = host(xdrop.dropout(array(x), 0.5, seed=3))
    for grain in (2**64, 2**64 + 1, 10**30):  # beyond the kernel's 64-bit counts
        kernel.set_threads(2, grain=grain)
        assert_same_bits(host(xdrop.dropout(array(x), 0.5, seed=3)), expected, "float32")
        assert f"up to 2 threads, from {2**63} elements" in kernel.status()


@pytest.mark.parametrize("value", ["0", "-1", "257", "two", "2.5", "1_0", "\u0663"])
def test_a_bad_xdrop_kernel_threads_value_is_an_error_naming_it(fused, array, threads_restored, monkeypatch, value):  # fmt: skip
    set_threads_variable(monkeypatch, value)
    message = (
        "XDROP_KERNEL_THREADS must be a whole number from 1 to 256 (unset or empty: the cores "
        f"available), got '{value}'"
    )
    with pytest.raises(xdrop.ArgumentValueError, match=re.escape(message)):
        xdrop.dropout(array(np.ones(3)), 0.5, seed=1)
    with pytest.raises(xdrop.ArgumentValueError, match=re.escape(message)):
        kernel.threads()
    assert kernel.status() == f"compiled kernel: none: {message}"
    kernel.set_threads(2)  # a count given in the program is used instead
    xdrop.dropout(array(np.ones(3)), 0.5, seed=1)
    set_kernel_variable(monkeypatch, "0")
    kernel.set_threads()
    xdrop.dropout(array(np.ones(3)), 0.5, seed=1)  # the kernel is off: its threads do not matter


# -- NumPy specifics --------------------------------------------------------------------------------
@needs_kernel
def test_numpy_scalars_read_only_and_byte_swapped_arrays(monkeypatch, calls):
    with xdrop.use_backend("numpy"):
        scalar, scalar0 = both_paths(monkeypatch, lambda: xdrop.dropout(np.float32(3), 0.5, seed=2))
        assert_same_bits(np.asarray(scalar), np.asarray(scalar0), "float32")
        frozen = np.linspace(-1, 1, 99, dtype=np.float32)
        frozen.flags.writeable = False
        y, y0 = both_paths(monkeypatch, lambda: xdrop.dropout(frozen, 0.5, seed=2))
        assert_same_bits(y, y0, "float32")
        swapped = frozen.astype(">f4")  # left to the spec's operations, same bits
        y, y0 = both_paths(monkeypatch, lambda: xdrop.dropout(swapped, 0.5, seed=2))
        assert y.dtype == y0.dtype == np.dtype(">f4") and (y == y0).all()
    assert calls == ["float32", "float32"]


@needs_kernel
@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_sixteen_bit_products_are_the_dtypes_own_multiplication(name):
    """Every 16-bit value times a few scales: one rounding from float32, as NumPy multiplies."""
    dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16 if name == "bfloat16" else name)
    x = np.arange(2**16, dtype=np.uint16).view(dtype)
    for p in (0.1, 0.3, 0.5, 0.9):
        factor = spec.inverted_scale(p, name)
        y = np.empty_like(x)
        call = FusedCall(key=(0, 0), offset=0, threshold=2**32, factor=factor, return_mask=False)
        kernel.host_dropout(x, y, None, name, call)  # keeps everything
        with np.errstate(over="ignore", invalid="ignore"):
            expected = x * dtype.type(factor)
        same = (y.view(np.uint16) == expected.view(np.uint16)) | (np.isnan(y) & np.isnan(expected))
        assert same.all(), x[~same][:5]


@needs_kernel
def test_a_product_beyond_the_dtype_is_infinity_without_a_warning_on_both_paths(monkeypatch):
    x = np.full(64, 1000, np.float16)  # times 1 / (1 - 0.99): beyond float16's 65504
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with xdrop.use_backend("numpy"):
            y, y0 = both_paths(monkeypatch, lambda: xdrop.dropout(x, 0.99, seed=1))
    assert np.isinf(y).any() and (y.view(np.uint16) == y0.view(np.uint16)).all()


@needs_kernel
def test_float16_subnormals_do_not_depend_on_a_cpu_that_flushes_them():
    """``torch.set_flush_denormal(True)`` makes the CPU read subnormal floats as zero; float16's
    subnormals are normal float32 values, and its own multiplication keeps them."""
    torch = pytest.importorskip("torch")
    x = np.arange(2**16, dtype=np.uint16).view(np.float16)  # every half, subnormals included
    call = FusedCall(key=(0, 0), offset=0, threshold=2**32, factor=2.0, return_mask=False)
    expected, flushed = np.empty_like(x), np.empty_like(x)
    kernel.host_dropout(x, expected, None, "float16", call)
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU does not flush subnormals")
    try:
        kernel.host_dropout(x, flushed, None, "float16", call)
    finally:
        torch.set_flush_denormal(False)
    assert (flushed.view(np.uint16) == expected.view(np.uint16)).all()
    assert flushed[1] == np.float16(2.0**-23)  # the smallest subnormal, doubled


# -- torch: autograd without a saved mask -----------------------------------------------------------
@pytest.fixture
def torch():
    torch = pytest.importorskip("torch")
    if kernel.compiled is None:
        pytest.skip(f"the compiled kernel is not built: {kernel.MISSING}")
    return torch


def on_host(tensor):
    """A NumPy copy; bfloat16 as float32 (exact), which ``BITS`` expects."""
    tensor = tensor.detach()
    return (tensor.float() if str(tensor.dtype) == "torch.bfloat16" else tensor).numpy()


def saved_bytes(torch, function):
    """Bytes of the tensors autograd saves while ``function()`` runs (the input included)."""
    storages: dict[int, int] = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = function()
    return sum(storages.values()), result


@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_torch_saves_nothing_for_backward(torch, mode):
    x = torch.randn(10_000, requires_grad=True)
    saved, y = saved_bytes(torch, lambda: xdrop.dropout(x, 0.5, seed=0, mode=mode))
    assert saved == 0
    assert type(y.grad_fn).__name__ == "FusedDropoutBackward"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_torch_gradients_are_those_of_the_spec(torch, monkeypatch, dtype, p, mode):
    values = torch.tensor(awkward_values(3000, dtype), dtype=getattr(torch, dtype))
    gradient = torch.tensor(awkward_values(3001, dtype)[1:], dtype=getattr(torch, dtype))

    def call():
        x = values.clone().requires_grad_()
        y = xdrop.dropout(x, p, seed=77, mode=mode, offset=2**32 - 1500)
        (grad,) = torch.autograd.grad(y, x, gradient)
        return on_host(y), on_host(grad)

    (y, grad), (y0, grad0) = both_paths(monkeypatch, call)
    assert_same_bits(y, y0, dtype)
    assert_same_bits(grad, grad0, dtype)


def test_torch_second_derivatives_are_those_of_the_spec(torch, monkeypatch):
    """The backward is differentiable: d(grad)/d(grad_output) is dropout again."""
    values = torch.randn(500, dtype=torch.float64)

    def call():
        x = values.clone().requires_grad_()
        upstream = torch.ones(500, dtype=torch.float64, requires_grad=True)
        y = xdrop.dropout(x, 0.3, seed=5)
        (grad,) = torch.autograd.grad(y, x, upstream, create_graph=True)
        (second,) = torch.autograd.grad(grad, upstream, torch.arange(500.0, dtype=torch.float64))
        return grad.detach().numpy(), second.numpy()

    (grad, second), (grad0, second0) = both_paths(monkeypatch, call)
    assert_same_bits(grad, grad0, "float64")
    assert_same_bits(second, second0, "float64")


def test_torch_forward_mode_gradients(torch, monkeypatch):
    forward_ad = torch.autograd.forward_ad
    values, tangent = torch.randn(300), torch.randn(300)

    def call():
        with forward_ad.dual_level():
            y = xdrop.dropout(forward_ad.make_dual(values, tangent), 0.4, seed=9)
            primal, derivative = forward_ad.unpack_dual(y)
        return primal.numpy(), derivative.numpy()

    (y, dy), (y0, dy0) = both_paths(monkeypatch, call)
    assert_same_bits(y, y0, "float32")
    assert_same_bits(dy, dy0, "float32")


def test_torch_negative_views_drop_the_values_they_stand_for(torch, monkeypatch):
    """A lazily negated view (``_neg_view``, which ``torch.conj`` and ``torch.neg`` of views make)
    shares ``x``'s buffer and carries a bit that says "negate": the kernel reads the values, in the
    forward pass and for a gradient that is such a view."""
    values = torch.randn(64)
    upstream = torch.randn(64)

    def call():
        x = values.clone()._neg_view().requires_grad_()
        y = xdrop.dropout(x, 0.5, seed=1)
        (grad,) = torch.autograd.grad(y, x, upstream._neg_view())
        plain = xdrop.dropout(values._neg_view(), 0.5, seed=1)
        return y.detach().numpy(), grad.resolve_neg().numpy(), plain.numpy()

    with_kernel, without = both_paths(monkeypatch, call)
    for a, b in zip(with_kernel, without, strict=True):
        assert_same_bits(a, b, "float32")
    expected = xdrop.dropout(-values, 0.5, seed=1).numpy()
    assert_same_bits(with_kernel[0], expected, "float32")
    assert_same_bits(with_kernel[2], expected, "float32")


def test_torch_func_transforms_and_no_grad_keep_working(torch, monkeypatch):
    x = torch.randn(4, 50)

    def call():
        grad = torch.func.grad(lambda v: xdrop.dropout(v, 0.5, seed=3).sum())(x)
        with torch.no_grad():
            plain = xdrop.dropout(x.clone().requires_grad_(), 0.5, seed=3)
        with torch.inference_mode():
            inference = xdrop.dropout(x, 0.5, seed=3)
        parameter = xdrop.dropout(torch.nn.Parameter(x.clone()), 0.5, seed=3)
        return grad.numpy(), plain.numpy(), inference.numpy(), parameter.detach().numpy()

    with_kernel, without = both_paths(monkeypatch, call)
    for a, b in zip(with_kernel, without, strict=True):
        assert_same_bits(a, b, "float32")


def test_torch_func_vmap_over_seed_tensors_gives_each_seed_its_mask(torch):
    x, seeds = torch.randn(50), torch.tensor([0, 1, 2**40])
    # x closed over and unbatched: the eager call's kernel cannot read a batched seed
    masks = torch.func.vmap(lambda s: xdrop.dropout(x, 0.5, seed=s, return_mask=True)[1])(seeds)
    outputs = torch.func.vmap(lambda v, s: xdrop.dropout(v, 0.5, seed=s))(x.expand(3, 50), seeds)
    for row, seed in enumerate((0, 1, 2**40)):
        expected, keep = xdrop.dropout(x, 0.5, seed=seed, return_mask=True)
        assert torch.equal(masks[row], keep) and torch.equal(outputs[row], expected)


def test_torch_func_vmap_over_rates_and_block_starts_reads_none_of_them(torch):
    """A batched tensor has no one value to read: rates and Block starts mapped over are used as
    traced ones are. Each sample given its rows' counters draws its rows of the batch's mask."""
    rows, features = 4, 6
    x = torch.randn(rows, features)

    def sample(row, index):
        return xdrop.dropout(
            row, 0.5, seed=3, offset=xdrop.Block((rows * features,), (index * features,))
        )

    per_sample = torch.func.vmap(sample)(x, torch.arange(rows))
    assert torch.equal(per_sample, xdrop.dropout(x, 0.5, seed=3))
    # transforms run eagerly: a seed is drawn from the global generator, ints fold to ints
    xdrop.manual_seed(5)
    drawn = torch.func.grad(lambda v: xdrop.dropout(v, 0.5).sum())(x)
    xdrop.manual_seed(5)
    assert torch.equal(drawn, xdrop.dropout(torch.ones(rows, features), 0.5))
    folded = []
    torch.func.vmap(lambda row: folded.append(xdrop.fold_in(1, 2)) or row)(x)
    assert folded == [xdrop.fold_in(1, 2)]
    rates = torch.tensor([0.0, 0.25, 0.5, 1.0])
    mapped = torch.func.vmap(lambda row, p: xdrop.dropout(row, p, seed=3))(x, rates)
    for row, p in enumerate(rates.tolist()):
        assert torch.equal(mapped[row], xdrop.dropout(x[row], p, seed=3))


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_threads_give_the_bits_of_one_thread_forward_and_backward(torch, threads_restored, thread_counts, dtype):  # fmt: skip
    torch_dtype = getattr(torch, dtype)
    values = torch.tensor(awkward_values(40 * 75, dtype), dtype=torch_dtype).reshape(40, 75)
    gradient = torch.tensor(awkward_values(40 * 75 + 1, dtype)[1:], dtype=torch_dtype)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in SPLIT_THREADS:
            kernel.set_threads(threads, grain=64)
            torch.set_num_threads(threads)
            x = values.clone().t().requires_grad_()  # strided
            y, keep = xdrop.dropout(x, 0.4, seed=31, offset=2**32 - 999, return_mask=True)
            (grad,) = torch.autograd.grad(y, x, gradient.reshape(75, 40))
            results.append((on_host(y), on_host(keep), on_host(grad)))
    finally:
        torch.set_num_threads(before)
    for (y, keep, grad), threads in zip(results, SPLIT_THREADS, strict=True):
        assert_same_bits(y, results[0][0], dtype)
        assert (keep == results[0][1]).all(), threads
        assert_same_bits(grad, results[0][2], dtype)
    assert thread_counts == [count for count in SPLIT_THREADS for _ in ("forward", "backward")]


def test_torch_calls_use_at_most_torch_get_num_threads(torch, threads_restored, thread_counts):
    before = torch.get_num_threads()
    x = torch.ones(10, requires_grad=True)
    try:
        kernel.set_threads(4, grain=1)
        torch.set_num_threads(2)
        xdrop.dropout(x, 0.5, seed=1).sum().backward()
        torch.set_num_threads(7)
        xdrop.dropout(x, 0.5, seed=1)
        with xdrop.use_backend("numpy"):  # NumPy arrays: xdrop's count alone
            xdrop.dropout(np.ones(10), 0.5, seed=1)
    finally:
        torch.set_num_threads(before)
    assert thread_counts == [2, 2, 4, 4]


OPENMP_SCRIPT = """
import json, os, sys, time
import numpy as np
from xdrop import kernel, spec

if kernel.compiled.THREADING != "pthreads":
    sys.exit(f"SKIP: the kernel's threads are {kernel.compiled.THREADING!r}")


def split(threads, grain=64, openmp_grain=0):
    x = np.linspace(-3, 3, 10_001, dtype=np.float32)
    y, keep = np.empty_like(x), np.empty(x.shape, np.bool_)
    split_over = kernel.compiled.dropout(
        x, y, keep, "float32", 7, 11, 2**32 - 5000, spec.keep_threshold(0.3),
        spec.inverted_scale(0.3, "float32"), threads, grain, openmp_grain,
    )
    return (y.view(np.uint32).tolist(), keep.tolist()), split_over


def tasks():  # the process's threads, once a thread that has just ended has left /proc
    counts = [len(os.listdir("/proc/self/task"))]
    while len(counts) < 100 and counts[-1:] != counts[-2:-1]:
        time.sleep(0.01)
        counts.append(len(os.listdir("/proc/self/task")))
    return counts[-1]


def run(threads=4, **grains):
    before = tasks()
    bits, split_over = split(threads, **grains)
    return {
        "threads": kernel.compiled.torch_threading(),
        "same bits": bits == one,
        "split over": split_over,
        "tasks": tasks() - before,
    }


one, _ = split(1)
report = {"without torch": run(openmp_grain=64)}
import torch

torch.set_num_threads(2)
torch.ones(10**6) + 1  # torch's OpenMP runtime starts its team: this thread and one more
if kernel.compiled.torch_threading() != "openmp":
    sys.exit("SKIP: no GNU OpenMP entry point in the runtime torch links")
report["not asked"] = run()
report["up to a grain"] = run(openmp_grain=10_001)
report["torch's rule"] = run(grain=10_001, openmp_grain=5_001)  # ceil(10,001 / 5,001) parts
report["more than the team"] = run(openmp_grain=64)
torch.set_num_threads(4)
torch.ones(10**6) + 1  # a team of 4
report["fewer than the team"] = run(threads=2, openmp_grain=64)
report["status"] = kernel.status()
reading, writing = os.pipe()
if os.fork() == 0:
    os.write(writing, json.dumps(run(grain=10_001, openmp_grain=64)).encode())
    os._exit(0)
os.close(writing)
report["fork's child"] = json.loads(os.read(reading, 1 << 16) or b"null")
print(json.dumps(report))
"""


def run_script(script: str) -> subprocess.CompletedProcess[str]:
    """``script`` in a fresh interpreter, OpenMP's settings at their defaults (skipped where it
    exits with ``SKIP: why``)."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith(("OMP_", "GOMP_"))
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment, timeout=300
    )
    if result.stderr.startswith("SKIP: "):
        pytest.skip(result.stderr.strip().removeprefix("SKIP: "))
    assert result.returncode == 0, result.stderr
    return result


@needs_kernel
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="torch's OpenMP is used on Linux")
def test_torch_tensors_parts_run_on_torchs_openmp_threads_and_a_forks_child_on_its_own():
    """After a torch operation its OpenMP threads keep their cores busy, so a torch tensor's call
    runs its parts on them rather than start threads beside them, split as torch splits its
    operations: above one grain, into ceil(n / grain) parts, at most the team torch's operations
    get. The team stays as it is (a smaller one would end the threads left out, which torch's
    next operation starts again). A fork's child, where the team is gone, runs on threads of its
    own, within their grain. Every split gives one thread's bits."""
    pytest.importorskip("torch")
    report = json.loads(run_script(OPENMP_SCRIPT).stdout)

    def ran(threads: str, split_over: int) -> dict[str, object]:
        return {"threads": threads, "same bits": True, "split over": split_over, "tasks": 0}

    assert report["without torch"] == ran("pthreads", 4)
    assert report["not asked"] == ran("openmp", 4)  # the kernel's own threads
    assert report["up to a grain"] == ran("openmp", 1)
    assert report["torch's rule"] == ran("openmp", 2)
    assert report["more than the team"] == ran("openmp", 2)
    assert report["fewer than the team"] == ran("openmp", 2)
    split = (
        f"from {2 * kernel.GRAIN} elements; "
        f"torch tensors on torch's OpenMP threads, above {kernel.OPENMP_GRAIN} elements)"
    )
    assert report["status"].endswith(split)
    assert report["fork's child"] == ran("pthreads", 1)


FIRST_IMPORT_IN_A_FORKS_CHILD = """
import faulthandler, os, numpy as np, torch
torch.ones(10**6) + 1  # the parent's OpenMP team starts; xdrop is not imported yet
x = np.linspace(-1, 1, 10**6, dtype=np.float32)
pid = os.fork()
if pid == 0:
    faulthandler.dump_traceback_later(60, exit=True)  # a call waiting forever: status 1
    torch.set_num_threads(1)  # as a DataLoader worker does: torch's operations work again
    import xdrop
    xdrop.kernel.set_threads(2)
    y = xdrop.dropout(x, 0.5, seed=1)
    z = xdrop.dropout(torch.from_numpy(x), 0.5, seed=1)
    os._exit(0 if np.array_equal(y, z.numpy()) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@needs_kernel
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forks_child_that_imports_xdrop_first_runs_its_calls():
    """A child forked from a process that used torch's OpenMP threads, importing xdrop itself,
    cannot know those threads are gone: NumPy arrays run on threads of the kernel's own, torch
    tensors on torch's count, as torch's own operations do there (one thread in a worker)."""
    pytest.importorskip("torch")
    assert run_script(FIRST_IMPORT_IN_A_FORKS_CHILD).stdout.split() == ["0"]


@needs_kernel
def test_torch_tensors_ask_for_openmp_at_its_grain_and_numpy_arrays_do_not(monkeypatch, threads_restored):  # fmt: skip
    """The compiled kernel's last two arguments: its own threads' grain, and OpenMP's (0: not
    asked). A grain given to ``set_threads`` is both."""
    torch = pytest.importorskip("torch")
    grains: list[tuple[int, int]] = []
    compiled = kernel.compiled

    class Spy:
        @staticmethod
        def dropout(*arguments: object) -> None:
            *_, grain, openmp_grain = arguments
            grains.append((grain, openmp_grain))  # type: ignore[arg-type]
            compiled.dropout(*arguments)

    monkeypatch.setattr(kernel, "compiled", Spy)
    x = torch.ones(10, requires_grad=True)
    xdrop.dropout(x, 0.5, seed=1).sum().backward()
    with xdrop.use_backend("numpy"):
        xdrop.dropout(np.ones(10), 0.5, seed=1)
    kernel.set_threads(grain=1000)
    xdrop.dropout(x, 0.5, seed=1)
    defaults = (kernel.GRAIN, kernel.OPENMP_GRAIN)
    assert grains == [defaults, defaults, (kernel.GRAIN, 0), (1000, 1000)]


# -- Triton, under its interpreter ------------------------------------------------------------------
def test_the_triton_kernel_gives_the_bits_of_the_spec(monkeypatch):
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # read when the kernel is defined: CPU tensors
    import importlib
    import sys

    sys.modules.pop("xdrop.triton_kernel", None)
    triton_kernel = importlib.import_module("xdrop.triton_kernel")
    from xdrop import torch_kernel

    try:
        key = (0xDEADBEEF, 0x12345678)
        for dtype in DTYPES:
            values = awkward_values(2500, dtype)
            x = torch.tensor(values, dtype=getattr(torch, dtype))
            for p, mode, offset in [(0.1, "inverted", 2**32 - 1200), (0.5, "classic", 0),
                                    (0.999, "inverted", 2**64 - 2500), (1.0, "inverted", 7)]:  # fmt: skip
                factor = None if mode == "classic" or p == 1 else spec.inverted_scale(p, dtype)
                threshold = spec.keep_threshold(p)
                call = FusedCall(key, offset, threshold, factor, return_mask=True)
                y, keep = torch_kernel.one_pass(x, triton_kernel.write, call)
                set_kernel_variable(monkeypatch, "0")
                seed = key[0] << 32 | key[1]
                y0, keep0 = xdrop.dropout(x, p, seed=seed, mode=mode, offset=offset,
                                          return_mask=True)  # fmt: skip
                set_kernel_variable(monkeypatch, None)
                assert torch.equal(keep, keep0), (dtype, p)
                assert_same_bits(on_host(y), on_host(y0), dtype)
                y_alone, no_keep = torch_kernel.one_pass(
                    x, triton_kernel.write, call.without_mask()
                )
                assert no_keep is None
                assert_same_bits(on_host(y_alone), on_host(y0), dtype)
    finally:
        sys.modules.pop("xdrop.triton_kernel", None)  # defined for the interpreter: not for a GPU
