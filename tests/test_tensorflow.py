"""xdrop on TensorFlow tensors and variables: what a TensorFlow user expects."""

from __future__ import annotations

import logging
import math
import os
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
                for _ in range(3):  # past xdrop.api.COMPILE_AFTER: a program per shape
                    xdrop.dropout(tf.ones((size,) * rank), 0.5, seed=size)
                    xdrop.dropout(tf.ones((size,) * rank), tf.constant(0.25), seed=size)
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
