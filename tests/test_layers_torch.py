"""xdrop.layers.torch: the step contract, state_dict, devices, deepcopy, torch.compile, autocast."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import xdrop

torch = pytest.importorskip("torch")
from layers.shared import assert_refused, check_seed_none_draws_once, digits  # noqa: E402

from xdrop.layers.torch import Dropout, Dropout1d, Dropout2d, Dropout3d  # noqa: E402

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
     (Dropout2d, (2, 3, 4, 4), (2, 3)), (Dropout2d, (3, 4, 4), (1, 2)),
     (Dropout3d, (2, 3, 2, 2, 2), (2, 3, 4))],
)  # fmt: skip
def test_channel_forms_drop_whole_channels(layer, shape, shared):
    x = torch.ones(shape)
    y = layer(0.5, seed=9)(x)
    noise = tuple(1 if axis in shared else size for axis, size in enumerate(shape))
    torch.testing.assert_close(y, contract(x, 0.5, 9, 0, noise_shape=noise), rtol=0, atol=0)
    values = y.amax(dim=shared) == y.amin(dim=shared)
    assert bool(values.all())


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


def test_a_channel_form_refuses_inputs_of_the_wrong_rank():
    with pytest.raises(xdrop.ArgumentValueError, match=r"x must be a tensor of 3 .* or 4 "):
        Dropout2d(0.5, seed=0)(torch.ones(2, 3))


@pytest.mark.parametrize("layer", [Dropout1d, Dropout2d, Dropout3d])
def test_a_wrong_rank_shows_the_tensor_without_quotes(layer):
    # before: "got '<tensor of shape (3,)>'", the description quoted as a string
    with pytest.raises(xdrop.ArgumentValueError) as info:
        layer(0.5, seed=0)(torch.ones(3))
    assert str(info.value).endswith("got <tensor of shape (3,)>")


def test_repr_names_the_seed():
    assert repr(Dropout(0.5, seed=2**64 - 1)) == (
        "Dropout(p=0.5, mode='inverted', seed=18446744073709551615)"
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
