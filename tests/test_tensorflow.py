"""xdrop on TensorFlow tensors and variables: what a TensorFlow user expects."""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from native_masks import COUNT, assert_native_dropout_of_ones

import xdrop
from xdrop import reference

tf = pytest.importorskip("tensorflow")


def test_result_keeps_type_dtype_and_shape():
    for dtype in (tf.float16, tf.bfloat16, tf.float32, tf.float64):
        x = tf.ones((3, 4), dtype)
        y = xdrop.dropout(x, 0.5, seed=0)
        assert isinstance(y, tf.Tensor) and y.dtype == dtype and y.shape == (3, 4)


def test_variables_are_accepted_and_differentiated():
    v = tf.Variable([1.0, -2.0, math.inf, 4.0] * 25)
    with tf.GradientTape() as tape:
        y, keep = xdrop.dropout(v, 0.25, seed=3, return_mask=True)
        total = tf.reduce_sum(y)
    grad = tape.gradient(total, v).numpy()
    assert (grad == np.where(keep.numpy(), np.float32(1) / np.float32(0.75), 0.0)).all()


def test_variables_of_many_shapes_of_one_rank_are_read_as_their_values():
    """DropConnect on the kernels of a stack of layers: one variable per shape, eagerly (the
    first calls of a program run a graph whose sizes relax to None)."""
    for width in (3, 5, 7, 9):
        v = tf.Variable(tf.ones((2, width)))
        with tf.GradientTape() as tape:
            y, keep = xdrop.dropout(v, 0.5, seed=0, return_mask=True)
        expected = xdrop.dropout(np.ones((2, width), np.float32), 0.5, seed=0)
        np.testing.assert_array_equal(y.numpy(), expected)
        np.testing.assert_array_equal(tape.gradient(y, v).numpy(), keep.numpy() * 2.0)
        shared = xdrop.dropout(v, tf.Variable(0.5), seed=0, noise_shape=(1, None))
        np.testing.assert_array_equal(shared.numpy(), shared.numpy()[:1].repeat(2, axis=0))


@pytest.mark.parametrize(
    ("make", "remedy"),
    [(lambda: tf.ragged.constant([[1.0, 2.0], [3.0]]), "x.to_tensor()"),
     (lambda: tf.sparse.from_dense(tf.ones((2, 2))), "tf.sparse.to_dense(x)"),
     (lambda: tf.IndexedSlices(tf.ones((1, 2)), tf.constant([0])), "tf.convert_to_tensor(x)")],
    ids=["ragged", "sparse", "indexed slices"],
)  # fmt: skip
def test_composite_tensors_are_refused_by_name_saying_how_to_make_them_dense(make, remedy):
    x = make()
    message = f"x must be a dense array (xdrop draws a mask for every element: {remedy} first), "
    with pytest.raises(
        xdrop.ArgumentTypeError, match=re.escape(message + f"got <{type(x).__name__}>")
    ):
        xdrop.dropout(x, 0.5, seed=1)


def test_p_one_has_zero_gradient_even_for_infinite_inputs():
    v = tf.Variable([math.inf, 1.0])
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(xdrop.dropout(v, 1.0, seed=0))
    assert (tape.gradient(total, v).numpy() == 0).all()


@pytest.mark.parametrize("jit_compile", [False, True])
def test_tf_function_with_a_traced_seed_traces_once_and_matches_eager(jit_compile):
    traces = []

    @tf.function(jit_compile=jit_compile)
    def step(x, seed):
        traces.append(1)
        return xdrop.dropout(x, 0.3, seed=seed)

    x = tf.random.normal((500,))
    for seed in (1, 2, 3, 2**40):
        expected = xdrop.dropout(x, 0.3, seed=seed).numpy()
        assert (step(x, tf.constant(seed, tf.int64)).numpy() == expected).all()
    assert len(traces) == 1


def test_fold_in_per_step_inside_tf_function():
    step = tf.function(lambda x, n: xdrop.dropout(x, 0.5, seed=xdrop.fold_in(42, n)))
    x = tf.ones(64)
    for number in range(3):
        expected = xdrop.dropout(x, 0.5, seed=xdrop.fold_in(42, number)).numpy()
        assert (step(x, tf.constant(number)).numpy() == expected).all()


def test_fold_in_on_tensors_matches_the_host_fold_in():
    folded = xdrop.fold_in(tf.constant(7, tf.int64), tf.constant(11))
    assert folded.dtype == tf.int64
    assert int(folded.numpy()) % 2**64 == reference.fold_in(7, 11)


def test_seed_none_inside_tf_function_is_refused_with_xdrops_error_type():
    with pytest.raises(xdrop.TracingError, match="seed=None"):
        tf.function(lambda x: xdrop.dropout(x, 0.5))(tf.ones(3))


def test_bad_arguments_keep_their_type_through_tf_function():
    with pytest.raises(xdrop.ArgumentValueError, match="p must be"):
        tf.function(lambda x: xdrop.dropout(x, 2.0, seed=0))(tf.ones(3))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_native_mode_draws_bernoulli_masks_of_the_right_rate(p):
    ours = xdrop.dropout(tf.ones(COUNT), p, rng="native", seed=3).numpy()
    portable = xdrop.dropout_mask(COUNT, p, seed=3, like=tf.ones(1)).numpy()
    assert_native_dropout_of_ones(ours, p, portable)


def test_native_masks_are_the_same_eagerly_in_tf_function_and_from_dropout_mask():
    x = tf.ones(1000)
    eager = xdrop.dropout(x, 0.5, rng="native", seed=9).numpy()
    step = tf.function(lambda v, s: xdrop.dropout(v, 0.5, rng="native", seed=s))
    assert (step(x, tf.constant(9, tf.int64)).numpy() == eager).all()
    mask = xdrop.dropout_mask((1000,), 0.5, seed=9, rng="native", like=x).numpy()
    assert (mask == (eager != 0)).all()


@pytest.mark.parametrize("seed", [0, 9, 2**40 + 3])
def test_native_masks_are_tensorflows_stateless_philox_eagerly_in_graphs_and_under_xla(seed):
    """Eagerly and in graphs the seed reaches Philox through auto_select's one scrambling kernel
    (the wrapper's "philox" runs some thirty operations per call), under XLA as "philox": one
    mask, the documented one."""
    x = tf.ones(1000)
    pair = tf.constant([seed >> 32, seed & 0xFFFF_FFFF], tf.int64)
    expected = (tf.random.stateless_uniform((1000,), seed=pair, alg="philox") < 0.7).numpy()
    for jit_compile in (None, False, True):
        call = lambda v: xdrop.dropout(v, 0.3, rng="native", seed=seed)  # noqa: E731
        if jit_compile is not None:
            call = tf.function(call, jit_compile=jit_compile, autograph=False)
        assert ((call(x).numpy() != 0) == expected).all()


def test_graphs_without_xla_run_xdrop_as_one_compiled_step():
    graph = (
        tf.function(lambda v, s: xdrop.dropout(v, 0.5, seed=s))
        .get_concrete_function(tf.TensorSpec((300,), tf.float32), tf.TensorSpec((), tf.int64))
        .graph
    )
    calls = [
        op
        for op in graph.get_operations()
        if op.type in ("PartitionedCall", "StatefulPartitionedCall")
    ]
    assert len(calls) == 1 and len(graph.get_operations()) < 40  # not ~130 word operations


def test_eager_calls_give_the_same_bits_whether_a_tape_records_them_or_not():
    """Eagerly, a call runs the compiled kernel on x's buffer whether or not a tape records it
    (with XDROP_KERNEL=0, the staged step): one set of bits, and the gradient and the
    forward-mode tangent are the mask times the scale."""
    x = tf.random.stateless_normal((3, 100), seed=(0, 1))
    scale = tf.constant(1 / 0.6)
    for seed in range(4):
        y, keep = xdrop.dropout(x, 0.4, seed=seed, return_mask=True)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y_taped, keep_taped = xdrop.dropout(x, 0.4, seed=seed, return_mask=True)
        gradient = tape.gradient(y_taped, x)
        tangent = tf.ones_like(x)
        with tf.autodiff.ForwardAccumulator(x, tangent) as accumulator:
            y_forward = xdrop.dropout(x, 0.4, seed=seed)
        for result in (y_taped, y_forward):
            assert (result.numpy().view(np.uint32) == y.numpy().view(np.uint32)).all()
        assert (keep_taped.numpy() == keep.numpy()).all()
        expected = tf.where(keep, scale, 0.0).numpy()
        assert (gradient.numpy() == expected).all()
        assert (accumulator.jvp(y_forward).numpy() == expected).all()


def _taped_dropout(x, dy, seed):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = xdrop.dropout(x, 0.4, seed=seed)
    return y, tape.gradient(y, x, output_gradients=dy)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_recorded_eager_calls_have_the_gradients_of_the_staged_step(dtype):
    """A recorded eager call runs the kernel forward and again on the gradient, keeping no mask:
    the bits of the output and of the gradient are those of the step TensorFlow stages in a
    tf.function, for any incoming gradient (NaN and -0.0 included)."""
    x = tf.cast(tf.random.stateless_normal((7, 300), seed=(1, 2)), dtype)
    dy = tf.cast(tf.random.stateless_normal((7, 300), seed=(3, 4)), dtype)
    dy = tf.tensor_scatter_nd_update(dy, [[0, 0], [0, 1]], tf.constant([math.nan, -0.0], dtype))
    staged = tf.function(_taped_dropout, autograph=False)
    for seed in range(3):
        y, gradient = _taped_dropout(x, dy, seed)
        y_staged, gradient_staged = staged(x, dy, tf.constant(seed, tf.int64))
        for eager, graph in ((y, y_staged), (gradient, gradient_staged)):
            assert eager.dtype == x.dtype
            assert eager.numpy().tobytes() == graph.numpy().tobytes()


@pytest.mark.parametrize("rows", [7, None])  # None: traced from an input_signature
def test_graph_steps_that_return_their_mask_give_the_eager_bits(rows):
    """In a graph a step that returns its mask (a tape records it, or return_mask) draws the mask
    alone and selects in a second step: y, the mask and the gradient are the eager call's."""
    x = tf.random.stateless_normal((7, 300), seed=(1, 2))
    dy = tf.random.stateless_normal((7, 300), seed=(3, 4))
    spec = tf.TensorSpec((rows, 300), tf.float32)

    @tf.function(input_signature=[spec, spec, tf.TensorSpec((), tf.int64)], autograph=False)
    def staged(x, dy, seed):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y, keep = xdrop.dropout(x, 0.4, seed=seed, return_mask=True)
        return y, keep, tape.gradient(y, x, output_gradients=dy)

    for seed in range(3):
        y, keep = xdrop.dropout(x, 0.4, seed=seed, return_mask=True)
        y_staged, keep_staged, gradient = staged(x, dy, tf.constant(seed, tf.int64))
        assert y_staged.numpy().tobytes() == y.numpy().tobytes()
        assert (keep_staged.numpy() == keep.numpy()).all()
        expected = xdrop.dropout(dy, 0.4, seed=seed)
        assert gradient.numpy().tobytes() == expected.numpy().tobytes()


def test_noise_shapes_as_tensorflow_writes_them():
    """A TensorShape, a tensor of sizes, and in a graph sizes traced from x where x's own size is
    known only at run time (there a traced size stands for it, as None does); a traced size
    where x's is known, or a traced tensor of sizes, cannot be checked, and is refused."""
    x = tf.ones((4, 5, 3))
    expected = xdrop.dropout(x, 0.5, seed=1, noise_shape=(4, 1, 3)).numpy()
    for noise_shape in (
        tf.TensorShape([4, 1, 3]),
        x.shape[:1].concatenate([1, 3]),
        tf.constant([4, 1, 3]),
    ):
        assert (xdrop.dropout(x, 0.5, seed=1, noise_shape=noise_shape).numpy() == expected).all()
    signature = [tf.TensorSpec((None, 5, 3))]

    @tf.function(input_signature=signature, autograph=False)
    def traced_batch(x):
        return xdrop.dropout(x, 0.5, seed=1, noise_shape=(tf.shape(x)[0], 1, 3))

    assert (traced_batch(x).numpy() == expected).all()
    refused = {
        "a traced or symbolic size .* only where x's size is known only at run time": lambda x: (
            tf.shape(x)[0],
            1,
            tf.shape(x)[2],
        ),
        "integers that can be read now, not traced ones": lambda x: (
            tf.shape(x) * [1, 0, 1] + [0, 1, 0]
        ),
    }
    for message, noise_shape_of in refused.items():

        @tf.function(input_signature=signature, autograph=False)
        def traced(x, noise_shape_of=noise_shape_of):
            return xdrop.dropout(x, 0.5, seed=1, noise_shape=noise_shape_of(x))

        with pytest.raises(xdrop.XdropError, match=message):
            traced(x)


def test_recorded_eager_calls_run_the_kernel_forward_and_backward(monkeypatch):
    from xdrop import kernel

    passes = []
    host_dropout = kernel.host_dropout
    monkeypatch.setattr(
        kernel, "host_dropout", lambda *a, **k: passes.append(a[3]) or host_dropout(*a, **k)
    )
    x = tf.random.stateless_normal((4, 50), seed=(0, 1))
    _taped_dropout(x, tf.ones_like(x), 0)
    assert passes == ["float32", "float32"]  # one pass on x, one on the gradient


def test_second_derivatives_and_gradients_taken_in_a_graph_of_recorded_eager_calls():
    """The gradient of a recorded call is itself recorded (dropout is linear: its gradient's
    gradient is the same mask); a gradient taken inside a tf.function of an eagerly recorded
    tape draws the mask again from x."""
    x = tf.random.stateless_normal((5, 40), seed=(5, 6))
    dy = tf.random.stateless_normal((5, 40), seed=(7, 8))
    mask_times_scale = xdrop.dropout(tf.ones_like(x), 0.4, seed=2).numpy()
    with tf.GradientTape() as outer:
        outer.watch(dy)
        with tf.GradientTape(persistent=True) as inner:
            inner.watch(x)
            y = xdrop.dropout(x, 0.4, seed=2)
        gradient = inner.gradient(y, x, output_gradients=dy)
    assert (outer.gradient(gradient, dy).numpy() == mask_times_scale).all()
    in_graph = tf.function(lambda g: inner.gradient(y, x, output_gradients=g), autograph=False)
    assert in_graph(dy).numpy().tobytes() == gradient.numpy().tobytes()


def test_large_eager_results_come_from_tensorflows_allocator_with_the_same_bits():
    """From 1 MiB the kernel writes into tensors TensorFlow allocates (NumPy's buffers of that
    size become fresh pages again once glibc trims its heap): the same bits as NumPy's, usable
    by TensorFlow."""
    from xdrop.backends.tensorflow import POOLED_FROM_BYTES

    x = tf.random.stateless_normal((POOLED_FROM_BYTES // 4 // 1000 + 1, 1000), seed=(0, 9))
    y, keep = xdrop.dropout(x, 0.3, seed=4, return_mask=True)
    with xdrop.use_backend("numpy"):
        y_host, keep_host = xdrop.dropout(x.numpy(), 0.3, seed=4, return_mask=True)
    assert y.numpy().tobytes() == y_host.tobytes()
    assert (keep.numpy() == keep_host).all() and keep.dtype == tf.bool
    dropped = tf.where(keep, 0.0, y)  # TensorFlow's kernels read both
    assert int(tf.math.count_nonzero(dropped)) == 0
    assert int(tf.reduce_sum(tf.cast(keep, tf.int64))) == int(keep_host.sum())


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_eager_results_work_in_tensorflows_own_kernels(dtype):
    """Results made on the host are handed to TensorFlow as tensors its kernels can read."""
    for size in (None, 0, 1, 7, 1000, 4099):  # None: a 0-d tensor
        x = tf.cast(tf.range(size) if size is not None else tf.constant(3), dtype)
        y, keep = xdrop.dropout(x, 0.5, seed=size, return_mask=True)
        assert y.dtype == x.dtype and keep.dtype == tf.bool and y.device == x.device
        again = tf.where(keep, y * tf.constant(0.5, dtype), tf.zeros((), dtype))
        assert (again.numpy() == tf.where(keep, x, tf.zeros((), dtype)).numpy()).all()
        assert float(tf.reduce_sum(tf.cast(y + y, tf.float32))) >= 0


def test_a_variable_and_its_value_give_the_same_bits():
    v = tf.Variable(tf.random.stateless_normal((50,), seed=(2, 3)))
    for seed in range(3):
        expected = xdrop.dropout(v.read_value(), 0.3, seed=seed).numpy()
        assert (xdrop.dropout(v, 0.3, seed=seed).numpy() == expected).all()


XLA_STEPS_OF_A_FIRST_TRACE = """
import sys, tensorflow as tf, xdrop
x, seed = tf.ones((1000,)), tf.constant(0)
for step in range(int(sys.argv[1])):  # the program's eager calls before the trace
    xdrop.dropout(x, 0.5, seed=tf.constant(step))
graph = tf.function(lambda v, s: xdrop.dropout(v, 0.5, seed=s)).get_concrete_function(x, seed).graph
calls = [op for op in graph.get_operations() if op.type.endswith("PartitionedCall")]
print([bool(op.get_attr("_XlaMustCompile")) if "_XlaMustCompile" in op.node_def.attr else False
       for op in calls])
"""


@pytest.mark.backend_independent  # a fresh process, whatever XDROP_BACKEND says
@pytest.mark.parametrize("eager_calls_before", [0, 3])
def test_a_tf_function_embeds_the_fused_step_whatever_ran_before(eager_calls_before):
    """A training script traces its step first: the graph must not embed the op-by-op step that
    serves one-off eager shapes (4 to 8 times slower), nor depend on the process's history."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-c", XLA_STEPS_OF_A_FIRST_TRACE, str(eager_calls_before)],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[True]"]  # one call, compiled by XLA


def test_two_tf_functions_with_one_rate_share_no_graph_tensors():
    """A constant made inside one graph belongs to it: no cache may hand it to another."""
    x = tf.ones((4, 8))
    first = tf.function(lambda v: xdrop.dropout(v, 0.3, seed=1))(x)
    second = tf.function(lambda v: xdrop.dropout(v, 0.3, seed=1))(x)
    assert (first.numpy() == second.numpy()).all()
    assert (first.numpy() == xdrop.dropout(x, 0.3, seed=1).numpy()).all()  # eager


def test_eager_calls_of_changing_shapes_log_no_retracing_warning():
    """xdrop stages eager calls as tf.functions of its own; their traces for new shapes are
    xdrop's business, not a retracing in the user's code that TensorFlow should warn about."""
    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record.getMessage())

    handler = Collect(logging.WARNING)
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        for rank in range(1, 4):
            for size in range(1, 9):
                x = tf.ones((size,) * rank)
                with tf.GradientTape() as tape:  # recorded: the staged steps run, not the kernel
                    tape.watch(x)
                    for _ in range(3):  # past xdrop.api.COMPILE_AFTER: a program per shape
                        xdrop.dropout(x, 0.5, seed=size)
                        xdrop.dropout(x, tf.constant(0.25), seed=size)
    finally:
        logger.removeHandler(handler)
    assert not [record for record in records if "retracing" in record]


def test_a_tensor_of_unknown_rank_is_refused_with_what_to_do():
    @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
    def unknown_rank(x):
        return xdrop.dropout(x, 0.5, seed=1)

    expected = r"xdrop needs tensors \(x, p, seeds\) of known rank.*input_signature"
    with pytest.raises(xdrop.TracingError, match=expected):
        unknown_rank(tf.ones((2, 3)))


# -- sizes known only at run time ----------------------------------------------------------------
RUNTIME_ROWS = (0, 1, 2, 341, 342, 343, 427, 428, 1000)
"""Rows of 3 elements: flat sizes 0, 3, 6 and around the padded sizes 1024 and 1280."""


def _runtime_step(**options):
    signature = (tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([], tf.int64))

    @tf.function(input_signature=signature, autograph=False)
    def step(x, seed):
        with tf.GradientTape() as tape:
            tape.watch(x)
            result = xdrop.dropout(x, 0.3, seed=seed, **options)
            y = result[0] if isinstance(result, tuple) else result
        return result, tape.gradient(y, x, output_gradients=tf.fill(tf.shape(y), 3.0))

    return step


@pytest.mark.parametrize(
    "options",
    [{}, {"return_mask": True}, {"mode": "classic"}, {"offset": 2**32 - 5, "return_mask": True}],
)
def test_a_none_dimension_gives_the_eager_bits_and_gradients_at_every_size(options):
    step = _runtime_step(**options)
    for rows in RUNTIME_ROWS:
        x = tf.random.normal((rows, 3))
        result, gradient = step(x, tf.constant(11, tf.int64))
        with tf.GradientTape() as tape:
            tape.watch(x)
            expected = xdrop.dropout(x, 0.3, seed=11, **options)
            y = expected[0] if isinstance(expected, tuple) else expected
        expected_gradient = tape.gradient(y, x, output_gradients=tf.fill(tf.shape(y), 3.0))
        for ours, theirs in zip(tf.nest.flatten(result), tf.nest.flatten(expected), strict=True):
            assert ours.shape == theirs.shape == (rows, 3)
            assert (ours.numpy() == theirs.numpy()).all(), (options, rows)
        assert (gradient.numpy() == expected_gradient.numpy()).all(), (options, rows)
    assert step.experimental_get_tracing_count() == 1  # one graph for every size


def test_a_none_dimension_runs_one_compiled_step_not_the_word_operations():
    graph = (
        tf.function(lambda v, s: xdrop.dropout(v, 0.5, seed=s))
        .get_concrete_function(tf.TensorSpec((None, 8), tf.float32), tf.TensorSpec((), tf.int64))
        .graph
    )
    calls = [op for op in graph.get_operations() if op.type.endswith("PartitionedCall")]
    assert [op.get_attr("_XlaMustCompile") for op in calls] == [True]
    assert len(graph.get_operations()) < 120  # not ~130 word operations and more


def test_a_none_dimension_is_padded_to_four_sizes_per_doubling():
    """XLA compiles the step once per size it runs at: a flat size is padded up to a multiple of
    an eighth of the next power of two (at least 1024), so sizes up to 2**20 make 41 programs."""
    from xdrop.registry import backend_for

    module = sys.modules[type(backend_for(tf.ones(1))).__module__]
    sizes = np.array([*range(0, 5000), *range(2**20 - 3000, 2**20 + 3000), 2**40 + 1])
    padded = module.padded_size(tf, tf.constant(sizes, tf.int64)).numpy()
    assert (padded >= sizes).all() and (padded >= 1024).all()
    assert (padded[sizes > 1024] < 1.25 * sizes[sizes > 1024]).all()
    assert sorted(set(padded[sizes <= 2**12].tolist())) == [1024, 1280, 1536, 1792, 2048, 2560,
                                                           3072, 3584, 4096]  # fmt: skip
    assert padded[-1] == 2**40 + 2**38


def test_gradients_of_compiled_steps_are_the_mask_times_the_scale():
    x = tf.random.normal((64, 33))

    @tf.function(autograph=False)
    def gradient(x, seed, p):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y, keep = xdrop.dropout(x, p, seed=seed, return_mask=True)
        return tape.gradient(y, x, output_gradients=tf.fill(tf.shape(y), 2.0)), keep

    for p in (0.3, tf.constant(0.3), 1.0):
        ours, keep = gradient(x, tf.constant(5, tf.int64), p)
        expected = np.where(keep.numpy(), 2 * (np.float32(1) / np.float32(0.7)), 0.0)
        assert (ours.numpy() == (expected if p != 1.0 else 0.0)).all()


@pytest.mark.parametrize("shape", [(7,), (4, 3), (2, 5, 6), (0, 4)])
def test_rdrop_picks_labels_as_numpy_in_every_mode_with_the_gradient_at_the_label(shape):
    """R-Dropout's cross entropy picks each position's log-probability with take_along_axis:
    eagerly, in graphs with static and None sizes and under XLA the picked values are NumPy's,
    and the gradient is dy at the picked class, 0 elsewhere."""
    from xdrop.registry import backend_for

    xp = backend_for(tf.ones(1))
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    labels = rng.integers(0, shape[-1], (*shape[:-1], 1))
    expected = np.take_along_axis(x, labels, -1)
    scattered = np.zeros_like(x)
    np.put_along_axis(scattered, labels, 3.0, -1)

    def pick_and_gradient(x, labels):
        with tf.GradientTape() as tape:
            tape.watch(x)
            picked = xp.take_along_axis(x, labels, len(shape) - 1)
        gradient = tape.gradient(picked, x, output_gradients=tf.fill(tf.shape(picked), 3.0))
        return picked, tf.convert_to_tensor(gradient)  # 1-d: sparse slices, as gather_nd gives

    unknown = [tf.TensorSpec([None] * len(shape)), tf.TensorSpec([None] * len(shape), tf.int32)]
    modes = {
        "eager": pick_and_gradient,
        "graph": tf.function(pick_and_gradient, autograph=False),
        "graph, None sizes": tf.function(pick_and_gradient, input_signature=unknown),
        "XLA": tf.function(pick_and_gradient, jit_compile=True),
    }
    for mode, run in modes.items():
        picked, gradient = run(tf.constant(x), tf.constant(labels, tf.int32))
        assert np.array_equal(picked.numpy(), expected), mode
        assert np.array_equal(gradient.numpy(), scattered), mode


@pytest.mark.parametrize("sizes", [[4, 3], [None, 3]])
def test_a_label_out_of_range_in_a_graph_raises(sizes):
    """Labels are not read back inside a graph; gather_nd checks them there (on the CPU), for
    static and None sizes alike, rather than reading another position's logits."""
    signature = [tf.TensorSpec(sizes), tf.TensorSpec(sizes[:1], tf.int64)]
    loss = tf.function(lambda a, labels: xdrop.rdrop_loss(a, a, labels), input_signature=signature)
    logits = tf.zeros((4, 3))
    assert np.isfinite(loss(logits, tf.constant([0, 1, 2, 2], tf.int64)).numpy())
    with pytest.raises(tf.errors.InvalidArgumentError, match="does not index into"):
        loss(logits, tf.constant([0, 1, 3, 2], tf.int64))
