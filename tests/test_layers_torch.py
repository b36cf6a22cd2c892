"""xdrop.layers.torch: the step contract, state_dict, devices, deepcopy, torch.compile, autocast."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest

import xdrop

torch = pytest.importorskip("torch")
from layers.shared import assert_refused, check_seed_none_draws_once, digits  # noqa: E402

from xdrop.layers.torch import (  # noqa: E402
    AlphaDropout,
    DropBlock2D,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    DropPath,
    FeatureAlphaDropout,
    GaussianDropout,
)

pytestmark = pytest.mark.backend_independent  # each framework's own arrays


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: a second thread only waits for a busy machine's other core."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def contract(x, p, seed, step, **options):
    return xdrop.dropout(x, p, seed=xdrop.fold_in(seed, step), **options)


@pytest.mark.parametrize("seed", [0, 7, 2**63, 2**64 - 1])
def test_the_t_th_training_call_draws_fold_in_seed_t(seed):
    layer = Dropout(0.3, seed=seed)
    x = torch.randn(4, 33)
    for step in range(4):
        torch.testing.assert_close(layer(x), contract(x, 0.3, seed, step), rtol=0, atol=0)
    assert layer.step.item() == 4


def test_eval_calls_draw_nothing_and_do_not_advance_the_step():
    layer, x = Dropout(0.5, seed=1), torch.randn(10)
    layer(x)
    layer.eval()
    assert layer(x) is x
    assert layer.step.item() == 1
    layer.train()
    torch.testing.assert_close(layer(x), contract(x, 0.5, 1, 1), rtol=0, atol=0)


def test_classic_mode_scales_at_evaluation():
    layer, x = Dropout(0.25, seed=1, mode="classic").eval(), torch.ones(4)
    torch.testing.assert_close(layer(x), torch.full((4,), 0.75))


def test_seed_none_draws_once_from_the_global_generator():
    check_seed_none_draws_once(lambda: Dropout(0.5), lambda layer: layer.seed.item() % 2**64)


def test_state_dict_carries_the_seed_and_the_step():
    layer, x = Dropout(0.5, seed=2**64 - 3), torch.randn(16)
    for _ in range(3):
        layer(x)
    assert set(layer.state_dict()) == {"seed", "step"}
    restored = Dropout(0.5, seed=0)
    restored.load_state_dict(layer.state_dict())
    torch.testing.assert_close(restored(x), layer(x), rtol=0, atol=0)
    assert restored.step.item() == layer.step.item() == 4


def test_a_model_made_on_the_meta_device_gets_its_streams_from_reset_parameters():
    """What FSDP does when it materializes a model made on the meta device: ``to_empty``, then
    ``reset_parameters`` on every module that has one. The streams start where the layers did."""
    with torch.device("meta"):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), Dropout(0.5, seed=2**64 - 3))
    model.to_empty(device="cpu")
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    assert model[1].seed.item() % 2**64 == 2**64 - 3 and model[1].step.item() == 0
    x = torch.randn(16)
    torch.testing.assert_close(model[1](x), Dropout(0.5, seed=2**64 - 3)(x), rtol=0, atol=0)


def test_deepcopy_and_to_copy_the_stream():
    layer, x = Dropout(0.5, seed=3), torch.randn(8)
    layer(x)
    copied = copy.deepcopy(layer)
    moved = copy.deepcopy(layer).to("cpu", torch.float64)  # buffers keep their integer dtype
    assert moved.seed.dtype == moved.step.dtype == torch.int64
    expected = layer(x)
    torch.testing.assert_close(copied(x), expected, rtol=0, atol=0)
    torch.testing.assert_close(moved(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast(dtype):
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), Dropout(0.5, seed=2))
    x = torch.randn(4, 8)
    with torch.autocast("cpu", dtype=dtype):
        y = model(x)
        hidden = model[0](x)
    assert y.dtype == hidden.dtype
    torch.testing.assert_close(y, contract(hidden, 0.5, 2, 0), rtol=0, atol=0)


def test_torch_compile_fullgraph_compiles_once_and_advances_the_step_in_the_graph():
    import torch._dynamo.testing

    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), Dropout(0.5, seed=4))
    reference = copy.deepcopy(model)
    counter = torch._dynamo.testing.CompileCounterWithBackend("inductor")
    compiled = torch.compile(model, fullgraph=True, backend=counter)
    x = torch.randn(3, 8)
    for _ in range(5):
        torch.testing.assert_close(compiled(x), reference(x), rtol=0, atol=0)
    assert counter.frame_count == 1
    assert model[1].step.item() == 5


@pytest.mark.parametrize("layer", [Dropout, Dropout2d, AlphaDropout, GaussianDropout, DropPath])
def test_jit_trace_records_the_stream_so_traced_calls_continue_it(layer):
    module, x = layer(0.5, seed=3), torch.randn(4, 3, 5, 5)
    eager = copy.deepcopy(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's TracerWarnings
        traced = torch.jit.trace(module, (x,), check_trace=False)  # runs step 0 once
    eager(x)
    for _ in range(3):
        assert torch.equal(traced(x), eager(x))
    assert int(module.step) == int(eager.step) == 4


@pytest.mark.parametrize("layer", [Dropout, Dropout1d, FeatureAlphaDropout, DropPath, DropBlock2D])
def test_torch_jit_script_is_refused_naming_the_recorders_that_work(layer):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), layer(0.5, seed=0))
    with pytest.raises(xdrop.TracingError, match=r"torch\.jit\.script cannot compile .*jit\.trace"):
        torch.jit.script(model)


def test_a_compiled_training_loop_trains():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), Dropout(0.2, seed=0),
                                torch.nn.Linear(32, 1))  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def loss_of(x, y):
        return torch.nn.functional.mse_loss(model(x), y)

    x = torch.randn(64, 8)
    y = x.sum(dim=1, keepdim=True)
    losses = []
    for _ in range(30):
        loss = loss_of(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 2
    assert model[2].step.item() == 30


@pytest.mark.parametrize(
    ("layer", "shape", "shared"),
    [(Dropout1d, (2, 3, 5), (2,)), (Dropout1d, (3, 5), (1,)),
     (Dropout2d, (2, 3, 4, 4), (2, 3)), (Dropout2d, (2, 3, 4, 4, 2), (2, 3, 4)),
     (Dropout2d, (3, 4, 4), (2,)), (Dropout2d, (3, 4), ()),
     (Dropout3d, (2, 3, 2, 2, 2), (2, 3, 4)), (Dropout3d, (3, 2, 2, 2), (1, 2, 3)),
     (Dropout3d, (4, 3, 2, 2, 2, 2), (1, 2, 3, 4, 5)), (Dropout3d, (3, 4), (1,)),
     (Dropout3d, (6,), ()), (FeatureAlphaDropout, (2, 3, 4), (2,))],
)  # fmt: skip
def test_channel_forms_drop_whole_channels_reading_each_rank_as_torch_does(layer, shape, shared):
    # Dropout2d reads axis 0 as the batch at every rank (a 3-d input is (N, C, L));
    # Dropout3d reads every rank but 5 as unbatched, channels on axis 0
    x = torch.ones(shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", xdrop.InputRankWarning)
        y = layer(0.5, seed=9)(x)
    if layer is FeatureAlphaDropout:
        noise = tuple(1 if axis in shared else size for axis, size in enumerate(shape))
        expected = xdrop.alpha_dropout(x, 0.5, seed=xdrop.fold_in(9, 0), noise_shape=noise)
        torch.testing.assert_close(y, expected, rtol=0, atol=0)
        return
    noise = tuple(1 if axis in shared else size for axis, size in enumerate(shape))
    torch.testing.assert_close(y, contract(x, 0.5, 9, 0, noise_shape=noise), rtol=0, atol=0)
    if shared:  # () is element-wise: nothing shared
        assert bool((y.amax(dim=shared) == y.amin(dim=shared)).all())


def test_noise_shape():
    x = torch.ones(4, 6)
    y = Dropout(0.5, seed=1, noise_shape=(None, 1))(x)
    torch.testing.assert_close(y, contract(x, 0.5, 1, 0, noise_shape=(4, 1)), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [({"p": 1.5}, xdrop.ArgumentValueError, "p must be a real number in [0, 1], got 1.5"),
     ({"p": "0.5"}, xdrop.ArgumentTypeError, "p must be a real number in [0, 1]"),
     ({"seed": -1}, xdrop.ArgumentValueError, "seed must be an integer in [0, 2**64), got -1"),
     ({"seed": 0.5}, xdrop.ArgumentTypeError, "seed must be an integer in [0, 2**64)"),
     ({"mode": "scaled"}, xdrop.ArgumentValueError, 'mode must be one of "inverted", "classic"'),
     ({"noise_shape": (0, 1)}, xdrop.ArgumentValueError, "noise_shape must be None or a sequence")],
)  # fmt: skip
def test_bad_arguments_name_the_argument_the_value_and_what_is_allowed(arguments, error, message):
    assert_refused(lambda: Dropout(**arguments), error, message)


def test_a_gaussian_layers_rate_is_refused_with_its_own_interval():
    assert_refused(
        lambda: xdrop.layers.torch.GaussianDropout(1.5),
        xdrop.ArgumentValueError,
        "p must be a real number in [0, 1), got 1.5",
    )


@pytest.mark.parametrize(
    ("layer", "shape", "messages"),
    [(Dropout2d, (1, 2, 2, 2, 2), ["Received a 5-D input to dropout2d"]),
     (Dropout2d, (1, 2), ["Received a 2-D input to dropout2d"]),
     (Dropout2d, (1, 2, 2), ["assuming that channel-wise 1D dropout behavior is desired"]),
     (Dropout3d, (1, 2, 2, 2, 2, 2), ["Received a 6-D input to dropout3d"]),
     (Dropout3d, (1, 2, 2), ["Received a 3-D input to dropout3d"]),
     (Dropout2d, (1, 2, 2, 2), []), (Dropout3d, (1, 2, 2, 2), []), (Dropout1d, (1, 2), [])],
)  # fmt: skip
@pytest.mark.parametrize("training", [True, False])
def test_channel_forms_warn_on_the_ranks_torch_warns_on(layer, shape, messages, training):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(0.5, seed=0).train(training)(torch.ones(shape))
    shown = [str(w.message) for w in caught if issubclass(w.category, xdrop.InputRankWarning)]
    assert len(shown) == len(messages)
    assert all(message in text for message, text in zip(messages, shown, strict=True))
    assert all(w.filename == __file__ or "xdrop" in w.filename for w in caught)


@pytest.mark.parametrize(
    ("make", "shape", "allowed"),
    [(lambda: Dropout1d(0.5, seed=0), (3,),
      "a tensor of 2 (C, L) or 3 (N, C, L) dimensions for Dropout1d (as torch says: "
      "Expected 2D or 3D input, but received a 1D input)"),
     (lambda: Dropout1d(0.5, seed=0), (1, 2, 3, 4),
      "a tensor of 2 (C, L) or 3 (N, C, L) dimensions for Dropout1d (as torch says: "
      "Expected 2D or 3D input, but received a 4D input)"),
     (lambda: Dropout2d(0.5, seed=0), (3,),
      "a tensor of at least 2 dimensions (N, C, *spatial) for Dropout2d"),
     (lambda: Dropout3d(0.5, seed=0), (),
      "a tensor of at least 1 dimension (C, *spatial) for Dropout3d"),
     (lambda: FeatureAlphaDropout(0.5, seed=0), (3,),
      "a tensor of at least 2 dimensions (N, C, *spatial) for FeatureAlphaDropout"),
     (lambda: DropBlock2D(0.1, 3, seed=0), (2, 3, 4), "a 4-d tensor (N, C, H, W)"),
     (lambda: DropPath(0.1, seed=0), (), 'a tensor with a batch axis for mode="row"')],
)  # fmt: skip
@pytest.mark.parametrize("training", [True, False])
def test_a_wrong_rank_is_refused_in_training_and_evaluation_alike(make, shape, allowed, training):
    # before: evaluation returned the input, so the wrong rank surfaced only in training
    # an InputRankError: an ArgumentValueError, and the RuntimeError torch's layers raise
    layer = make().train(training)
    assert issubclass(xdrop.InputRankError, RuntimeError)
    assert_refused(
        lambda: layer(torch.ones(shape)),
        xdrop.InputRankError,
        f"x must be {allowed}, got <tensor of shape {shape}>",
    )
    assert layer.step.item() == 0


@pytest.mark.parametrize("training", [True, False])
def test_an_integer_input_is_refused_in_training_and_evaluation_alike(training):
    # torch.nn.Dropout passes integers through in evaluation and refuses them in training; a
    # model feeding integers to a dropout would evaluate, then fail at its first training step
    layer = Dropout(0.5, seed=0).train(training)
    assert_refused(
        lambda: layer(torch.arange(4)),
        xdrop.ArgumentTypeError,
        "x must be an array of float16, bfloat16, float32 or float64 (cast integers to one), "
        "got <int64 array of shape (4,)> of type Tensor",
    )
    assert layer.step.item() == 0


def test_repr_names_the_seed():
    assert repr(Dropout(0.5, seed=2**64 - 1)) == (
        "Dropout(p=0.5, inplace=False, mode='inverted', seed=18446744073709551615)"
    )


def test_a_model_trains_on_digits_as_well_as_with_torch_nn_dropout():
    pixels, labels = digits()
    x, y = torch.from_numpy(pixels), torch.from_numpy(labels)
    train, test = slice(0, 1200), slice(1200, None)

    def accuracy(drop: torch.nn.Module) -> float:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), drop,
                                    torch.nn.Linear(128, 10))  # fmt: skip
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        batches = np.random.default_rng(0)
        for _ in range(120):
            index = torch.from_numpy(batches.integers(0, 1200, 64))
            loss = torch.nn.functional.cross_entropy(model(x[train][index]), y[train][index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            return (model(x[test]).argmax(-1) == y[test]).float().mean().item()

    own, ours = accuracy(torch.nn.Dropout(0.5)), accuracy(Dropout(0.5, seed=0))
    assert ours > 0.9
    assert abs(ours - own) < 0.03, (ours, own)


ALL_LAYERS = [
    lambda: Dropout(0.5, seed=3),
    lambda: Dropout(0.5, seed=3, mode="classic"),
    lambda: Dropout2d(0.5, seed=3),
    lambda: Dropout3d(0.5, seed=3),
    lambda: AlphaDropout(0.5, seed=3),
    lambda: FeatureAlphaDropout(0.5, seed=3),
    lambda: GaussianDropout(0.5, seed=3),
    lambda: DropPath(0.5, seed=3),
    lambda: DropBlock2D(0.2, 3, seed=3),
]
"""One of each torch layer, for inputs of shape (2, 3, 6, 6) (Dropout1d, which takes no 4-d
input, runs the forward of Dropout2d and Dropout3d)."""


@pytest.mark.parametrize("make", ALL_LAYERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_module_type_keeps_the_stream_in_int64(make, dtype):
    # Module.type casts every buffer, integers too: the seed and the step stay exact
    layer, twin, x = make(), make(), torch.randn(2, 3, 6, 6)
    layer.seed.fill_(2**40 + 3)
    twin.seed.fill_(2**40 + 3)
    layer.type(dtype)
    assert layer.seed.dtype == layer.step.dtype == torch.int64 and int(layer.seed) == 2**40 + 3
    torch.testing.assert_close(layer(x.to(dtype)), twin(x.to(dtype)), rtol=0, atol=0)


def test_arguments_are_torchs_positionally_and_by_keyword():
    for cls in (Dropout, Dropout1d, Dropout2d, Dropout3d, AlphaDropout, FeatureAlphaDropout):
        by_position, by_keyword = cls(0.25, True, seed=0), cls(p=0.25, inplace=True, seed=0)
        assert (by_position.p, by_position.inplace) == (by_keyword.p, by_keyword.inplace)
        assert (cls().p, cls().inplace) == (0.5, False)
    assert_refused(lambda: Dropout(0.5, 1), xdrop.ArgumentTypeError, "inplace must be")
    with pytest.raises(TypeError):
        Dropout(0.5, False, 7)  # seed, mode and noise_shape stay keyword-only


@pytest.mark.parametrize("make", ALL_LAYERS)
@pytest.mark.parametrize(
    "layout",
    ["channels_last", "permuted", "strided"],
)
def test_the_output_keeps_the_input_layout_and_the_logical_masks(make, layout):
    # the mask stream is defined over elements in row-major (logical) order, whatever the
    # strides: an input and its contiguous copy get the same values
    x = torch.randn(2, 3, 6, 6)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "permuted":
        x = x.permute(3, 1, 0, 2).contiguous().permute(2, 1, 3, 0)
    else:
        x = torch.randn(2, 3, 6, 12)[..., ::2]
    strided, contiguous = make(), make()
    y, expected = strided(x), contiguous(x.contiguous())
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    order = sorted(range(4), key=lambda dim: -x.stride(dim))
    assert y.permute(order).is_contiguous()
    assert strided.step.item() == contiguous.step.item() == 1


@pytest.mark.parametrize("make", ALL_LAYERS)
def test_inplace_writes_the_output_into_the_input_and_keeps_gradients(make):
    reference, layer = make(), make()
    layer.inplace = True
    leaf = torch.randn(2, 3, 6, 6, requires_grad=True)
    expected = reference(leaf)
    expected.sum().backward()
    expected_grad, leaf.grad = leaf.grad, None
    x = leaf * 1  # not a leaf: autograd lets it be overwritten
    y = layer(x)
    assert y is x
    torch.testing.assert_close(y, expected, rtol=0, atol=0)
    y.sum().backward()
    torch.testing.assert_close(leaf.grad, expected_grad, rtol=0, atol=0)


@pytest.mark.parametrize("view", [False, True])
def test_inplace_refuses_a_leaf_that_requires_grad_as_torch_does(view):
    leaf = torch.ones(4, 4, requires_grad=True)
    x = leaf[1:] if view else leaf
    torch_message = "a view of a leaf Variable" if view else "a leaf Variable that requires grad"
    with pytest.raises(RuntimeError, match=torch_message):
        torch.nn.Dropout(0.5, inplace=True)(x)
    layer = Dropout(0.5, inplace=True, seed=0)
    with pytest.raises(xdrop.InPlaceError, match=torch_message):
        layer(x)
    assert layer.step.item() == 0
    assert bool((leaf == 1).all())
    assert layer.eval()(x) is x  # evaluation writes nothing, as torch's
    with torch.no_grad():
        y = layer.train()(leaf)
    assert y is leaf and bool((leaf != 1).any())


def test_inplace_keeps_strides_and_unbatched_channels():
    x = torch.ones(3, 4, 5).permute(2, 0, 1)
    strides = x.stride()
    with pytest.warns(xdrop.InputRankWarning, match="read as \\(N, C, L\\)"):
        y = Dropout2d(0.5, True, seed=1)(x)
    assert y is x and x.stride() == strides
    with pytest.warns(xdrop.InputRankWarning):
        expected = Dropout2d(0.5, seed=1)(torch.ones(5, 3, 4))
    torch.testing.assert_close(y, expected, rtol=0, atol=0)


@pytest.mark.parametrize("make", ALL_LAYERS)
@pytest.mark.parametrize("training", [True, False])
def test_fx_symbolic_trace_keeps_the_layer_as_a_leaf_that_draws_its_stream(make, training):
    model = torch.nn.Sequential(torch.nn.Identity(), make(), torch.nn.ReLU()).train(training)
    twin = copy.deepcopy(model)
    traced = torch.fx.symbolic_trace(model)
    calls = [node for node in traced.graph.nodes if node.op == "call_module"]
    assert [node.target for node in calls] == ["0", "1", "2"]
    x = torch.randn(2, 3, 6, 6)
    for step in range(2):
        torch.testing.assert_close(traced(x), twin(x), rtol=0, atol=0)
        assert model[1].step.item() == twin[1].step.item() == (step + 1 if training else 0)
    # the graph calls the layer: it follows the module's mode after tracing, as nn.Dropout
    traced.train(not training)
    twin.train(not training)
    torch.testing.assert_close(traced(x), twin(x), rtol=0, atol=0)


def test_fx_traces_a_layer_used_inside_a_custom_forward():
    class Block(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)
            self.drop = Dropout(0.5, seed=5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.drop(self.linear(x))

    block = Block()
    twin = copy.deepcopy(block)
    traced = torch.fx.symbolic_trace(block)
    assert "drop" in [node.target for node in traced.graph.nodes if node.op == "call_module"]
    x = torch.randn(3, 4)
    torch.testing.assert_close(traced(x), twin(x), rtol=0, atol=0)


def test_a_layer_cannot_be_the_root_of_an_fx_trace():
    with pytest.raises(xdrop.TracingError, match="cannot be the root of an FX trace"):
        torch.fx.symbolic_trace(Dropout(0.5, seed=0))
    traced = torch.fx.symbolic_trace(torch.nn.Sequential(Dropout(0.5, seed=0)))
    torch.testing.assert_close(traced(torch.ones(8)), contract(torch.ones(8), 0.5, 0, 0))


def test_a_tracer_with_leaf_modules_of_its_own_sees_the_layer_by_its_path():
    # torchvision's create_feature_extractor traces with a Tracer subclass that names nodes
    # after the module being called; the layer's node must carry the layer's path
    class PathTracer(torch.fx.Tracer):
        def __init__(self) -> None:
            super().__init__()
            self.current, self.paths = "", {}

        def call_module(self, m, forward, args, kwargs):  # type: ignore[no-untyped-def]
            outer, self.current = self.current, self.path_of_module(m)
            try:
                return super().call_module(m, forward, args, kwargs)
            finally:
                self.current = outer

        def create_proxy(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            proxy = super().create_proxy(*args, **kwargs)
            self.paths[proxy.node.name] = self.current
            return proxy

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Sequential(Dropout(0.5)))
    tracer = PathTracer()
    graph = tracer.trace(model)
    node = next(node for node in graph.nodes if node.op == "call_module" and node.target == "1.0")
    assert tracer.paths[node.name] == "1.0"


def test_the_step_carries_past_32_bits_instead_of_repeating_the_stream():
    layer = Dropout(0.5, seed=11)
    x = torch.ones(64)
    steps = [0, 1, 2**32 - 1, 2**32, 2**32 + 1, 2**63 - 1, -(2**63), -1]
    outputs = {}
    for step in steps:
        layer.step.fill_(step)
        outputs[step] = layer(x)
    for step in (0, 1, 2**32 - 1):  # below 2**32: exactly the contract
        torch.testing.assert_close(outputs[step], contract(x, 0.5, 11, step), rtol=0, atol=0)
    # 2**32 and 2**32 + 1 would repeat steps 0 and 1 if the high word were dropped; the
    # int64 wraps from 2**63 - 1 to -2**63, read as 2**63: still a fresh counter
    masks = {tuple(output.tolist()) for output in outputs.values()}
    assert len(masks) == len(steps)
    assert layer.step.item() == 0  # the last, -1 (2**64 - 1), advanced to 0 after 2**64 calls


@pytest.mark.parametrize(
    ("name", "value"),
    [("seed", torch.tensor(1.5)), ("seed", torch.tensor(True)), ("step", torch.tensor(2.0)),
     ("seed", torch.tensor([1, 2]))],
)  # fmt: skip
def test_load_state_dict_refuses_a_seed_or_step_that_is_not_an_integer(name, value):
    layer = Dropout(0.5, seed=4)
    state = layer.state_dict()
    state[name] = value
    assert_refused(
        lambda: layer.load_state_dict(state),
        xdrop.ArgumentTypeError,
        f"state_dict['{name}'] must be a 0-d integer tensor",
    )
    assert int(layer.seed) == 4 and layer.step.item() == 0


@pytest.mark.parametrize(
    ("model", "shown"),
    [(5, "5 of type int"), (None, "None of type NoneType"), ([Dropout(0.5, seed=0)], "[Dropout(")],
)
def test_set_mc_sampling_refuses_what_is_not_a_module(model, shown):
    # before: AttributeError: 'int' object has no attribute 'modules'
    from xdrop.layers.torch import set_mc_sampling

    assert_refused(
        lambda: set_mc_sampling(model),
        xdrop.ArgumentTypeError,
        f"model must be a torch.nn.Module, got {shown}",
    )


@pytest.mark.parametrize("make", [lambda: Dropout3d(0.5, seed=2), lambda: Dropout(0.5, seed=2)])
def test_channels_last_3d_stays_so(make):
    x = torch.randn(2, 3, 2, 4, 4).contiguous(memory_format=torch.channels_last_3d)
    y = make()(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y, make()(x.contiguous()), rtol=0, atol=0)


# -- activation checkpointing -----------------------------------------------------------------------
@pytest.mark.parametrize("reentrant", [False, True])
@pytest.mark.parametrize("make", [lambda: Dropout(0.5, seed=1), lambda: DropPath(0.5, seed=1)])
def test_a_layer_recomputed_by_activation_checkpointing_is_refused_not_silently_wrong(
    make, reentrant
):
    # the recomputation would draw step 1's mask where the forward drew step 0's: the gradient
    # would mix two masks and the stream would advance twice
    from torch.utils.checkpoint import checkpoint

    layer = make()
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), layer, torch.nn.Linear(8, 8))
    x = torch.randn(4, 8, requires_grad=True)
    loss = checkpoint(block, x, use_reentrant=reentrant).square().sum()
    assert int(layer.step) == 1
    with pytest.raises(xdrop.RecomputationError, match="activation checkpointing"):
        loss.backward()
    assert int(layer.step) == 1


def test_an_evaluating_layer_is_recomputed_by_activation_checkpointing_as_torch_does():
    from torch.utils.checkpoint import checkpoint

    block = torch.nn.Sequential(torch.nn.Linear(8, 8), Dropout(0.5, seed=1)).eval()
    x = torch.randn(4, 8, requires_grad=True)
    checkpoint(block, x, use_reentrant=False).sum().backward()
    expected = torch.autograd.grad(block(x).sum(), x)[0]
    assert torch.equal(x.grad, expected)
