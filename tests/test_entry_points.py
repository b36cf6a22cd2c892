"""xdrop through the frameworks' own entry points, where sizes are known only at run time: Keras
``fit`` on its three backends, ``tf.saved_model`` and ``jax.export`` loaded in fresh processes,
``torch.export`` and ``torch.compile(dynamic=True)``. Every result equals eager NumPy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import xdrop

pytestmark = pytest.mark.backend_independent  # each test names its framework

SCRIPTS = Path(__file__).resolve().parent / "entry_points"


def run(script: str, *arguments: str, **environment: str) -> None:
    """Run a script of tests/entry_points in a fresh interpreter (no state shared with this one)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **environment}
    env.pop("XDROP_BACKEND", None)
    completed = subprocess.run(
        [sys.executable, str(SCRIPTS / script), *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]


def saved_then_loaded(script: str, folder: Path) -> dict[str, np.ndarray]:
    """``script save`` in one fresh interpreter, ``script load`` in another that never imports
    xdrop: the outputs the loaded program wrote, by name and batch size (``"y_3"``)."""
    saved, outputs = folder / "saved", folder / "outputs.npz"
    run(script, "save", str(saved))
    run(script, "load", str(saved), str(outputs))
    with np.load(outputs) as arrays:
        return dict(arrays)


def batch_input(batch: int, scale: float = 1.0) -> np.ndarray:
    return np.arange(batch * 8, dtype=np.float32).reshape(batch, 8) * np.float32(scale)


# -- Keras 3 ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keras_outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    pytest.importorskip("keras")
    outputs = {}
    for backend in ("jax", "tensorflow", "torch"):
        pytest.importorskip(backend)
        path = tmp_path_factory.mktemp("keras") / f"{backend}.npz"
        run("keras_model.py", str(path), KERAS_BACKEND=backend)
        outputs[backend] = dict(np.load(path))
    return outputs


def test_keras_models_with_xdrop_build_and_fit_on_every_backend(keras_outputs):
    for backend, outputs in keras_outputs.items():
        for model in ("sequential", "functional"):
            assert outputs[f"{model}_losses"].shape == (2,), backend
            assert np.isfinite(outputs[f"{model}_losses"]).all(), backend


def test_keras_gives_identical_training_outputs_on_its_three_backends(keras_outputs):
    hidden = batch_input(5, 1 / 8) @ np.full((8, 16), 0.125, np.float32)
    dropped = xdrop.dropout(hidden, 0.5, seed=3)
    expected = dropped @ np.full((16, 2), 0.125, np.float32)
    for backend, outputs in keras_outputs.items():
        for model in ("sequential", "functional"):
            np.testing.assert_array_equal(outputs[model], expected, err_msg=backend)


# -- TensorFlow serving -----------------------------------------------------------------------------
def test_a_saved_model_with_a_batch_of_unknown_size_reloads_in_a_fresh_process(tmp_path):
    pytest.importorskip("tensorflow")
    results = saved_then_loaded("saved_model.py", tmp_path)
    for batch in (3, 5):
        x = batch_input(batch) + 1
        want = xdrop.dropout(x, 0.3, seed=7, offset=2**32 - 20)  # counters cross 2**32
        np.testing.assert_array_equal(results[f"y_{batch}"], want)
        channels = xdrop.dropout(x, 0.5, seed=8, noise_shape=(batch, 1))
        np.testing.assert_array_equal(results[f"channels_{batch}"], channels)


def test_tf_function_relaxing_the_batch_gives_the_eager_masks():
    tf = pytest.importorskip("tensorflow")
    traces = []

    @tf.function(reduce_retracing=True)
    def step(x):
        traces.append(x.shape)
        return xdrop.dropout(x, 0.3, seed=5)

    for batch in (2, 3, 4, 5):
        np.testing.assert_array_equal(
            step(tf.constant(batch_input(batch))).numpy(),
            xdrop.dropout(batch_input(batch), 0.3, seed=5),
        )
    assert any(shape[0] is None for shape in traces)


# -- JAX --------------------------------------------------------------------------------------------
def test_jax_export_with_a_symbolic_batch_reloads_in_a_fresh_process(tmp_path):
    pytest.importorskip("jax")
    results = saved_then_loaded("jax_export.py", tmp_path)
    for batch in (3, 5):
        x = batch_input(batch, 1 / 8)
        y = xdrop.dropout(x, 0.3, seed=7, offset=2**32 - 20)
        np.testing.assert_array_equal(results[f"y_{batch}"], y)
        labels = np.arange(batch) % 8
        loss = xdrop.rdrop_loss(y, xdrop.dropout(x, 0.5, seed=8), labels, alpha=0.5)
        np.testing.assert_allclose(results[f"loss_{batch}"], loss, rtol=1e-6)


def test_dropout_mask_follows_a_symbolic_batch():
    jax = pytest.importorskip("jax")
    from jax import export

    (batch,) = export.symbolic_shape("batch")
    exported = export.export(jax.jit(lambda x: xdrop.dropout_mask(x.shape, 0.4, seed=2, like=x)))(
        jax.ShapeDtypeStruct((batch, 8), jax.numpy.float32)
    )
    mask = exported.call(jax.numpy.ones((3, 8)))
    np.testing.assert_array_equal(np.asarray(mask), xdrop.dropout_mask((3, 8), 0.4, seed=2))


def test_a_noise_shape_holding_a_symbolic_size_stands_for_that_size():
    # (x.shape[0], 1, x.shape[2]) as flax and keras write it; a symbolic size where x's own size
    # is known cannot be checked, and is refused
    jax = pytest.importorskip("jax")
    from jax import export

    (batch,) = export.symbolic_shape("batch")
    spec = jax.ShapeDtypeStruct((batch, 4, 6), jax.numpy.float32)

    def spatial(x):
        return xdrop.dropout(x, 0.5, seed=3, noise_shape=(x.shape[0], 1, x.shape[2]))

    exported = export.export(jax.jit(spatial))(spec)
    x = np.ones((3, 4, 6), np.float32)
    expected = xdrop.dropout(x, 0.5, seed=3, noise_shape=(3, 1, 6))
    np.testing.assert_array_equal(np.asarray(exported.call(jax.numpy.asarray(x))), expected)
    wide = jax.ShapeDtypeStruct((8, 4, batch), jax.numpy.float32)
    with pytest.raises(xdrop.ArgumentValueError, match="a traced or symbolic size"):
        export.export(jax.jit(lambda x: xdrop.dropout(x, 0.5, seed=3, noise_shape=(batch, 1, 1))))(
            wide
        )


# -- PyTorch ----------------------------------------------------------------------------------------
def test_torch_export_with_a_dynamic_batch_runs_at_two_sizes():
    torch = pytest.importorskip("torch")

    class Model(torch.nn.Module):
        def forward(self, x, seed):
            return xdrop.dropout(x, 0.3, seed=seed, offset=2**32 - 20)

    batch = torch.export.Dim("batch", min=2, max=64)
    inputs = (torch.ones(4, 8), torch.tensor(7))
    program = torch.export.export(Model(), inputs, dynamic_shapes=({0: batch}, None))
    for size in (3, 5):
        y = program.module()(torch.from_numpy(batch_input(size)), torch.tensor(7))
        want = xdrop.dropout(batch_input(size), 0.3, seed=7, offset=2**32 - 20)
        np.testing.assert_array_equal(y.numpy(), want)


def counting_backend(graphs: list[Any]) -> Any:
    from torch._dynamo.backends.registry import lookup_backend

    def backend(graph: Any, inputs: Any) -> Any:
        graphs.append(graph)
        return lookup_backend("aot_eager")(graph, inputs)

    return backend


def test_torch_compile_dynamic_compiles_once_for_three_batch_sizes():
    torch = pytest.importorskip("torch")
    graphs: list[Any] = []
    step = torch.compile(
        lambda x, seed: xdrop.dropout(x, 0.3, seed=seed, noise_shape=(None, 1)),
        dynamic=True,
        fullgraph=True,
        backend=counting_backend(graphs),
    )
    for size in (3, 5, 9):
        y = step(torch.from_numpy(batch_input(size)), torch.tensor(4))
        want = xdrop.dropout(batch_input(size), 0.3, seed=4, noise_shape=(size, 1))
        np.testing.assert_array_equal(y.numpy(), want)
    assert len(graphs) == 1


def test_torch_compile_with_an_int_seed_compiles_and_gives_the_eager_masks():
    """The step as a plain int: specialised first, then a graph input; inductor lowers it (it
    used to recurse without end on a graph of constants)."""
    torch = pytest.importorskip("torch")
    step = torch.compile(lambda x, seed: xdrop.dropout(x, 0.5, seed=seed))
    x = torch.ones(4)
    for seed in (3, 4, 5):
        np.testing.assert_array_equal(
            step(x, seed).numpy(), xdrop.dropout(np.ones(4, np.float32), 0.5, seed=seed)
        )


def test_torch_compile_folds_an_int_step_in_without_a_recompile_per_step():
    torch = pytest.importorskip("torch")
    graphs: list[Any] = []
    step = torch.compile(
        lambda x, step: xdrop.dropout(x, 0.5, seed=xdrop.fold_in(42, step)),
        fullgraph=True,
        backend=counting_backend(graphs),
    )
    x = torch.ones(16)
    for index in range(5):
        want = xdrop.dropout(np.ones(16, np.float32), 0.5, seed=xdrop.fold_in(42, index))
        np.testing.assert_array_equal(step(x, index).numpy(), want)
    assert len(graphs) <= 2  # one specialised on the first step, one with the step as an input


# -- seeds that would be drawn inside a trace ---------------------------------------------------------
def test_seeds_are_never_drawn_inside_jax_jit_even_without_an_array():
    jax = pytest.importorskip("jax")
    with pytest.raises(xdrop.TracingError, match="while jax traces"):
        jax.jit(lambda: xdrop.dropout_mask((3,), 0.5))()
    with pytest.raises(xdrop.TracingError):
        jax.jit(lambda: xdrop.dropout_mask((3,), 0.5, seed=xdrop.Generator(1)))()


def test_seeds_are_never_drawn_inside_tf_function():
    tf = pytest.importorskip("tensorflow")
    with pytest.raises(xdrop.TracingError, match="while tensorflow traces"):
        tf.function(lambda: xdrop.dropout_mask((3,), 0.5))()


def test_torch_compile_fullgraph_shows_xdrops_message():
    torch = pytest.importorskip("torch")
    generator = xdrop.Generator(0)
    for function in (
        lambda x: xdrop.dropout(x, 0.5),
        lambda x: xdrop.dropout(x, 0.5, seed=generator),
        lambda x: x + xdrop.dropout_mask((3,), 0.5),
    ):
        with pytest.raises(
            Exception, match=r"seed=None and xdrop\.Generator seeds are drawn"
        ) as error:
            torch.compile(function, fullgraph=True, backend="eager")(torch.ones(3))
        assert "Observed exception" not in str(error.value)
