"""xdrop on torch tensors: what a PyTorch user expects."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import pytest
from native_masks import COUNT, assert_native_dropout_of_ones

import xdrop
from xdrop import reference

torch = pytest.importorskip("torch")
from xdrop.layers.torch import Dropout  # noqa: E402 (needs torch)


def test_result_keeps_type_dtype_shape_and_device():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        x = torch.ones(3, 4, dtype=dtype)
        y = xdrop.dropout(x, 0.5, seed=0)
        assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == x.shape
        assert y.device == x.device


@pytest.mark.parametrize(("mode", "kept_gradient"), [("inverted", 1 / 0.75), ("classic", 1.0)])
def test_gradient_is_the_scaled_mask(mode, kept_gradient):
    x = torch.tensor([1.0, -2.0, math.inf, 4.0] * 25, requires_grad=True)
    y, keep = xdrop.dropout(x, 0.25, seed=3, mode=mode, return_mask=True)
    y.sum().backward()
    expected = torch.where(keep, torch.tensor(kept_gradient, dtype=torch.float32), 0.0)
    assert torch.equal(x.grad, expected)


def test_p_one_has_zero_gradient_even_for_infinite_inputs():
    x = torch.tensor([math.inf, -math.inf, 1.0], requires_grad=True)
    xdrop.dropout(x, 1.0, seed=0).sum().backward()
    assert torch.equal(x.grad, torch.zeros(3))


def _general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Send every call down the general path (the common call may take a shorter one)."""
    monkeypatch.setattr(xdrop.api, "_fused_common_call", lambda *arguments: None)


def test_the_common_call_differentiates_as_the_general_path_does(monkeypatch):
    values = torch.randn(2, 500, generator=torch.Generator().manual_seed(0))
    results = []
    for general in (False, True):
        if general:
            _general_path(monkeypatch)
        x = torch.nn.Parameter(values.clone())
        y = xdrop.dropout(x, 0.3, seed=5)
        assert y.requires_grad
        (gradient,) = torch.autograd.grad((y * values).sum(), x)
        results.append((y.detach(), gradient))
    (y, gradient), (y_general, gradient_general) = results
    assert torch.equal(y, y_general) and torch.equal(gradient, gradient_general)


def test_the_common_call_refuses_sparse_and_nested_tensors_as_the_general_path_does(monkeypatch):
    with warnings.catch_warnings():  # the strided layout is a prototype: a plain torch.Tensor
        warnings.simplefilter("ignore", UserWarning)
        nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    assert type(nested) is torch.Tensor
    for x in (torch.ones(4).to_sparse(), nested):
        with pytest.raises(xdrop.ArgumentTypeError) as common:
            xdrop.dropout(x, 0.5, seed=1)
        with monkeypatch.context() as patch:
            _general_path(patch)
            with pytest.raises(xdrop.ArgumentTypeError) as general:
                xdrop.dropout(x, 0.5, seed=1)
        assert str(common.value) == str(general.value)


def test_seed_tensors_give_the_masks_of_their_values():
    x = torch.ones(64)
    expected = xdrop.dropout(x, 0.5, seed=2**64 - 1)
    assert torch.equal(xdrop.dropout(x, 0.5, seed=torch.tensor(-1)), expected)  # two's complement
    high_low = torch.tensor([2**32 - 1, 2**32 - 1], dtype=torch.uint32)
    assert torch.equal(xdrop.dropout(x, 0.5, seed=high_low), expected)
    assert torch.equal(xdrop.dropout(x, 0.5, seed=torch.tensor(-1, dtype=torch.int8)),
                       xdrop.dropout(x, 0.5, seed=255))  # fmt: skip


def test_fold_in_on_tensors_matches_the_host_fold_in():
    folded = xdrop.fold_in(torch.tensor(7), torch.tensor(11))
    assert folded.dtype == torch.int64
    assert int(folded) % 2**64 == reference.fold_in(7, 11)
    assert int(xdrop.fold_in(7, torch.tensor(11))) % 2**64 == reference.fold_in(7, 11)


class CountingBackend:
    """A torch.compile backend that counts the graphs it is given and runs them as they are."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def test_compile_with_a_traced_seed_compiles_once_and_matches_eager():
    backend = CountingBackend()

    @torch.compile(fullgraph=True, backend=backend)
    def step(x, seed):
        return xdrop.dropout(x, 0.3, seed=seed)

    x = torch.randn(500)
    for seed in (1, 2, 3, 2**40):
        assert torch.equal(step(x, torch.tensor(seed)), xdrop.dropout(x, 0.3, seed=seed))
    assert backend.graphs == 1


def test_compile_with_fold_in_per_step():
    backend = CountingBackend()

    @torch.compile(fullgraph=True, backend=backend)
    def step(x, step_number):
        return xdrop.dropout(x, 0.5, seed=xdrop.fold_in(1234, step_number))

    x = torch.ones(100)
    for number in range(3):
        expected = xdrop.dropout(x, 0.5, seed=xdrop.fold_in(1234, number))
        assert torch.equal(step(x, torch.tensor(number)), expected)
    assert backend.graphs == 1


@pytest.mark.backend_independent  # torch tensors whatever the default backend; compiles 6 graphs
@pytest.mark.parametrize("dynamic", [None, True])
def test_compile_takes_python_int_seeds_of_the_whole_range(dynamic):
    # inductor takes no int graph input beyond int64: a seed of 2**63 or more is a constant
    step = torch.compile(lambda x, s: xdrop.dropout(x, 0.5, seed=s), dynamic=dynamic)
    x = torch.randn(300)
    for seed in (5, 2**63 + 5, 6, 2**64 - 1):
        assert torch.equal(step(x, seed), xdrop.dropout(x, 0.5, seed=seed))


def test_a_python_float_rate_that_changes_is_a_constant_of_each_graph():
    # Dynamo traces a float argument that changed as a symbol; the rate is read and guarded on,
    # as a changed nn.Dropout.p is: each rate is a graph of its own, and a rate seen before
    # compiles nothing
    backend = CountingBackend()
    step = torch.compile(lambda x, p: xdrop.dropout(x, p, seed=5), fullgraph=True, backend=backend)
    layer, eager_layer = Dropout(0.5, seed=5), Dropout(0.5, seed=5)
    compiled_layer = torch.compile(layer, fullgraph=True, backend="eager")
    x = torch.randn(300)
    for p in (0.5, 0.3, 0.2, 0.3):
        assert torch.equal(step(x, p), xdrop.dropout(x, p, seed=5))
        layer.p = eager_layer.p = p
        assert torch.equal(compiled_layer(x), eager_layer(x))
    assert backend.graphs == 3


def test_inductor_output_is_bit_identical():
    step = torch.compile(lambda x, seed: xdrop.dropout(x, 0.5, seed=seed), fullgraph=True)
    x = torch.randn(2, 300)
    assert torch.equal(step(x, torch.tensor(9)), xdrop.dropout(x, 0.5, seed=9))


def test_compiling_dropout_warns_nothing():
    step = torch.compile(lambda x: xdrop.dropout(x, 0.5, seed=3))
    traced = torch.compile(lambda x, seed: xdrop.dropout(x, 0.5, seed=xdrop.fold_in(seed, 1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dynamo warns where it traces through a cache, say
        y = step(torch.ones(2, 8))
        z = traced(torch.ones(2, 8), torch.tensor(3))
    assert torch.equal(y, xdrop.dropout(torch.ones(2, 8), 0.5, seed=3))
    assert torch.equal(z, xdrop.dropout(torch.ones(2, 8), 0.5, seed=xdrop.fold_in(3, 1)))


def test_seed_none_inside_compile_is_refused():
    step = torch.compile(lambda x: xdrop.dropout(x, 0.5), fullgraph=True, backend="eager")
    with pytest.raises(
        Exception, match=r"seed=None and xdrop\.Generator seeds are drawn on the host"
    ):
        step(torch.ones(4))


def _jit_trace(function, *inputs):
    """``torch.jit.trace`` of ``function``, without TorchScript's warnings and its check by a
    second run (which a fresh mask per call would fail)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(function, inputs, check_trace=False)


def test_jit_trace_records_the_masks_of_the_eager_calls():
    # the compiled kernel writes into a buffer that the trace does not record: traced, the
    # seeded call runs the spec's operations instead (it gave uninitialized memory)
    seeded = _jit_trace(lambda x: xdrop.dropout(x, 0.5, seed=7), torch.ones(4, 6))
    by_tensor = _jit_trace(
        lambda x, seed: xdrop.dropout(x, 0.5, seed=seed), torch.ones(4, 6), torch.tensor(7)
    )
    x = torch.randn(4, 6)
    assert torch.equal(seeded(x), xdrop.dropout(x, 0.5, seed=7))
    for seed in (7, 8):
        assert torch.equal(by_tensor(x, torch.tensor(seed)), xdrop.dropout(x, 0.5, seed=seed))
    evaluation = _jit_trace(lambda x: xdrop.dropout(x, 0.5, training=False), torch.ones(2, 3))
    x = torch.randn(2, 3)
    assert torch.equal(evaluation(x), x)


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_jit_trace_keeps_or_drops_everything_at_the_edge_rates(p):
    # masks of one value, filled without a Python bool, which the trace cannot record
    x = torch.randn(8, 8)
    traced = _jit_trace(lambda x: xdrop.dropout(x, p, seed=7, return_mask=True), x)
    y, keep = traced(x)
    expected_y, expected_keep = xdrop.dropout(x, p, seed=7, return_mask=True)
    assert torch.equal(y, expected_y) and torch.equal(keep, expected_keep)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_jit_trace_takes_a_rate_tensor_as_an_input(dtype):
    x = torch.randn(8, 8).to(dtype)
    traced = _jit_trace(lambda x, p: xdrop.dropout(x, p, seed=7), x, torch.tensor(0.3))
    for p in (0.3, 0.6, 1.0):
        rate = torch.tensor(p)
        assert torch.equal(traced(x, rate), xdrop.dropout(x, rate, seed=7))


def test_jit_trace_passes_its_own_check_in_a_fresh_process():
    # torch.jit.trace traces twice by default and compares the graphs: a cache filled by the
    # first trace (the rotation's constants) made the second one differ
    script = (
        "import torch, xdrop\n"
        "x = torch.randn(4, 6)\n"
        "traced = torch.jit.trace(lambda x: xdrop.dropout(x, 0.5, seed=3), (x,))\n"
        "assert torch.equal(traced(x), xdrop.dropout(x, 0.5, seed=3))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda x: xdrop.dropout(x, 0.5), r"seed=None and xdrop\.Generator seeds are drawn"),
        (
            lambda x: xdrop.dropout(x, 0.5, seed=1, rng="native"),
            r'torch\.jit\.trace records no torch\.Generator.*rng="portable"',
        ),
    ],
    ids=["seed None", "native generator"],
)
def test_jit_trace_refuses_seeds_it_would_bake_or_drop(call, message):
    with pytest.raises(xdrop.TracingError, match=message):
        _jit_trace(call, torch.ones(4))


@pytest.mark.parametrize(
    ("call", "inputs"),
    [
        (lambda x: xdrop.drop_block(x, 0.1, 3, seed=0), (torch.ones(2, 2, 8, 8),)),
        (
            lambda z, y: xdrop.rdrop_loss(z, z, y),
            (torch.ones(4, 3), torch.zeros(4, dtype=torch.long)),
        ),
    ],
    ids=["drop_block", "rdrop_loss"],
)
def test_jit_trace_refuses_what_needs_sizes_naming_the_tracers_that_know_them(call, inputs):
    with pytest.raises(xdrop.ArgumentValueError, match=r"torch\.compile and torch\.export do"):
        _jit_trace(call, *inputs)


def test_native_mode_honours_torch_manual_seed():
    x = torch.ones(1000)
    torch.manual_seed(0)
    first = xdrop.dropout(x, 0.5, rng="native")
    torch.manual_seed(0)
    assert torch.equal(xdrop.dropout(x, 0.5, rng="native"), first)
    assert torch.equal(xdrop.dropout(x, 0.5, rng="native", seed=5),
                       xdrop.dropout(x, 0.5, rng="native", seed=5))  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_native_mode_gives_the_select_of_its_own_mask_for_every_value(dtype, mode):
    """Without a mask asked for or a gradient to keep, native mode applies its draws in place on
    their bits: the same values as selecting with the mask it returns, +0.0 where dropped."""
    x = torch.tensor([1.0, -2.0, math.inf, -math.inf, math.nan, -0.0, 3.5] * 300, dtype=dtype)
    for p in (0.1, 0.5, 1.0):
        torch.manual_seed(3)
        y = xdrop.dropout(x, p, rng="native", mode=mode)
        torch.manual_seed(3)
        expected, keep = xdrop.dropout(x, p, rng="native", mode=mode, return_mask=True)
        assert torch.equal(y.view(torch.uint8), expected.view(torch.uint8)), (p, mode)
        assert not torch.signbit(y[~keep]).any()
        assert keep.float().mean() > 0.1 if p < 1 else not keep.any()
    graded = x.detach()[:7].abs().nan_to_num(1.0, 1.0).requires_grad_()
    torch.manual_seed(3)
    xdrop.dropout(graded, 0.5, rng="native", mode=mode).sum().backward()
    scale = 2.0 if mode == "inverted" else 1.0
    assert set(graded.grad.tolist()) <= {0.0, scale}


def test_native_mode_carries_a_forward_mode_tangent():
    """Under forward-mode AD, native mode's tangent is its mask times the scale, as its
    gradient is: bits anded in place would carry none."""
    forward_ad = torch.autograd.forward_ad
    x, tangent = torch.randn(300), torch.randn(300)
    torch.manual_seed(4)
    expected, keep = xdrop.dropout(x, 0.5, rng="native", return_mask=True)
    with forward_ad.dual_level():
        torch.manual_seed(4)
        y = xdrop.dropout(forward_ad.make_dual(x, tangent), 0.5, rng="native")
        primal, derivative = forward_ad.unpack_dual(y)
    assert torch.equal(primal, expected)
    assert torch.equal(derivative, torch.where(keep, tangent * 2, 0.0))


def test_native_mode_drops_the_values_a_lazily_negated_view_stands_for():
    """A lazily negated view (``torch.conj(z).imag``, ``_neg_view``) has no view of its bits
    before its negation is resolved."""
    x = torch.randn(64)
    for negated in (x._neg_view(), torch.complex(torch.zeros(1), x[:1]).conj().imag):
        assert negated.is_neg()
        torch.manual_seed(4)
        y = xdrop.dropout(negated, 0.5, rng="native")
        torch.manual_seed(4)
        assert torch.equal(y, xdrop.dropout(-x[: negated.numel()], 0.5, rng="native"))


def test_native_mode_compiles_for_sizes_torch_compile_made_symbolic():
    # before: torch.rand(..., generator=None) failed to compile once the batch size changed
    # ("SymIntArrayRef expected to contain only concrete integers")
    for function in (xdrop.dropout, xdrop.alpha_dropout, xdrop.gaussian_dropout):
        step = torch.compile(lambda x, f=function: f(x, 0.5, rng="native"), fullgraph=True)
        for rows in (16, 17, 18):
            y = step(torch.ones(rows, 8))
            assert y.shape == (rows, 8)
        assert not torch.equal(y, torch.ones(rows, 8))  # it drew


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_native_mode_draws_bernoulli_masks_of_the_right_rate(p):
    ours = xdrop.dropout(torch.ones(COUNT), p, rng="native").numpy()
    portable = xdrop.dropout_mask(COUNT, p, seed=3, like=torch.ones(1)).numpy()
    assert_native_dropout_of_ones(ours, p, portable)


def test_native_mode_takes_seed_tensors_as_the_integers_they_hold():
    x = torch.ones(256)
    for value in (5, 2**64 - 1):
        expected = xdrop.dropout(x, 0.5, rng="native", seed=value)
        tensor = torch.tensor(value if value < 2**63 else value - 2**64)
        assert torch.equal(xdrop.dropout(x, 0.5, rng="native", seed=tensor), expected)
        assert torch.equal(xdrop.dropout_mask(256, 0.5, rng="native", seed=tensor, like=x),
                           xdrop.dropout_mask(256, 0.5, rng="native", seed=value, like=x))  # fmt: skip


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_a_rate_on_the_meta_device_is_refused_with_what_to_do(device):
    """A meta tensor has no value to read: refused with xdrop's error, not torch's."""
    rate = torch.tensor(0.5, device="meta")
    message = "p must be a Python float or a 0-d float array whose value can be read"
    for call in (
        lambda: xdrop.dropout(torch.ones(4, device=device), rate, seed=1),
        lambda: xdrop.alpha_dropout(torch.ones(4, device=device), rate, seed=1),
        lambda: xdrop.dropout_mask(4, rate, seed=1, like=torch.ones(4, device=device)),
    ):
        with pytest.raises(xdrop.ArgumentValueError, match=message):
            call()


def test_a_rate_on_the_meta_device_is_refused_under_compile_as_eagerly():
    """Traced, a meta rate cannot be read: xdrop's error all the same, not a device mismatch."""
    rate = torch.tensor(0.5, device="meta")
    message = "p must be a Python float or a 0-d float array whose value can be read"
    for function in (
        lambda x, p: xdrop.dropout(x, p, seed=1),
        lambda x, p: xdrop.alpha_dropout(x, p, seed=1),
        lambda x, p: xdrop.dropout_mask(4, p, seed=1, like=x),
    ):
        step = torch.compile(function, backend="eager")
        with pytest.raises(xdrop.ArgumentValueError, match=message):
            step(torch.ones(4), rate)
        whole = torch.compile(function, fullgraph=True, backend="eager")  # dynamo wraps it
        with pytest.raises(Exception, match=message):
            whole(torch.ones(4), rate)
