"""xdrop.mc_dropout on the backend under test, against statistics computed by hand."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xdrop


def entropy(p):
    p = np.asarray(p, np.float64)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=-1)


PROBABILITIES = np.array(
    [
        [[0.7, 0.2, 0.1], [1.0, 0.0, 0.0]],
        [[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]],
        [[0.1, 0.1, 0.8], [0.0, 1.0, 0.0]],
    ]
)  # three samples of a batch of two


def scripted(array, outputs):
    """A predict that returns outputs[t] for the seed fold_in(0, t)."""
    by_seed = {xdrop.fold_in(0, t): t for t in range(len(outputs))}
    return lambda x, seed: array(outputs[by_seed[seed]])


def test_statistics_of_probabilities_against_hand_computed_values(xp, array, host):
    result = xdrop.mc_dropout(
        scripted(array, PROBABILITIES), None, samples=3, seed=0, from_logits=False
    )
    mean = PROBABILITIES.mean(axis=0)
    np.testing.assert_allclose(host(result.mean), mean, rtol=1e-6)
    np.testing.assert_allclose(host(result.variance), PROBABILITIES.var(axis=0), atol=1e-7)
    np.testing.assert_allclose(host(result.predictive_entropy), entropy(mean), rtol=1e-6)
    expected_entropy = entropy(PROBABILITIES).mean(axis=0)
    np.testing.assert_allclose(host(result.expected_entropy), expected_entropy, rtol=1e-6)
    bald = entropy(mean) - expected_entropy
    np.testing.assert_allclose(host(result.mutual_information), bald, rtol=1e-5, atol=1e-7)
    assert np.isfinite(host(result.predictive_entropy)).all()  # zeros: 0 log 0 = 0


def test_logits_go_through_softmax_and_minus_infinity_is_a_zero_probability(xp, array, host):
    logits = np.log(np.where(PROBABILITIES > 0, PROBABILITIES, 1e-300))
    logits = np.where(PROBABILITIES > 0, logits, -np.inf)
    result = xdrop.mc_dropout(scripted(array, logits), None, samples=3, seed=0)
    mean = PROBABILITIES.mean(axis=0)
    np.testing.assert_allclose(host(result.mean), mean, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(host(result.predictive_entropy), entropy(mean), rtol=1e-5)
    assert np.isfinite(host(result.mutual_information)).all()


@pytest.mark.parametrize("from_logits", [True, False])
def test_one_sample_has_no_mutual_information(xp, array, host, from_logits):
    # H[E p] and E H[p] are one entropy when T = 1: equal to the bit, so BALD is exactly 0
    outputs = np.random.default_rng(1).normal(size=(1, 6, 5))
    if not from_logits:
        outputs = np.exp(outputs) / np.exp(outputs).sum(axis=-1, keepdims=True)
    result = xdrop.mc_dropout(
        scripted(array, outputs), None, samples=1, seed=0, from_logits=from_logits
    )
    np.testing.assert_array_equal(host(result.predictive_entropy), host(result.expected_entropy))
    np.testing.assert_array_equal(host(result.mutual_information), np.zeros(6))
    np.testing.assert_allclose(host(result.expected_entropy), entropy(host(result.mean)), rtol=1e-6)


def test_half_precision_outputs_are_computed_in_float32(xp, array, host):
    outputs = np.random.default_rng(0).normal(size=(4, 5, 3))
    result = xdrop.mc_dropout(
        lambda x, seed: array(outputs[0], "float16"), None, samples=4, seed=0, axis=1
    )
    assert xp.dtype_name(result.mean) == "float32"
    assert xp.shape(result.predictive_entropy) == (5,)
    np.testing.assert_allclose(host(result.mutual_information), 0, atol=1e-6)  # all alike


def test_class_axis_other_than_the_last(xp, array, host):
    columns = np.moveaxis(PROBABILITIES, -1, 1)  # (samples, classes, batch)
    result = xdrop.mc_dropout(
        scripted(array, columns), None, samples=3, seed=0, axis=0, from_logits=False
    )
    np.testing.assert_allclose(
        host(result.predictive_entropy), entropy(PROBABILITIES.mean(0)), rtol=1e-6
    )


def seed_value(host, seed):
    """A seed ``predict`` was given, as an integer: itself, or the key words ``(hi, lo)`` of a
    uint32[2] array."""
    if isinstance(seed, int):
        return seed
    high, low = (int(word) for word in np.asarray(host(seed)).reshape(-1))
    return high << 32 | low


def test_each_sample_gets_fold_in_seed_t_and_the_batched_form_stacks_them(xp, array, host):
    weights = np.random.default_rng(1).normal(size=(6, 3)).astype(np.float32)
    x = array(np.random.default_rng(2).normal(size=(4, 6)))

    seen = []

    def recording(x, seed):
        seen.append(seed)
        return array(host(xdrop.dropout(x, 0.5, seed=seed)) @ weights)

    result = xdrop.mc_dropout(recording, x, samples=5, seed=3)
    assert [seed_value(host, seed) for seed in seen] == [xdrop.fold_in(3, t) for t in range(5)]
    # a framework with a compiler gets its key words in an array, which a compiled predict takes
    assert all(isinstance(seed, int) != xp.is_array(seed) for seed in seen)
    assert all(isinstance(seed, int) for seed in seen) == isinstance(x, np.ndarray)
    assert xp.shape(result.mean) == (4, 3)
    stacked = []

    def batched(x, seed):
        stacked.append(xp.shape(x))
        return array(host(xdrop.dropout(x, 0.5, seed=seed)) @ weights)

    together = xdrop.mc_dropout(batched, x, samples=5, seed=3, batched=True)
    assert stacked == [(20, 6)]
    by_hand = host(xdrop.dropout(array(np.tile(host(x), (5, 1))), 0.5, seed=3)) @ weights
    logits = by_hand.reshape(5, 4, 3)
    probabilities = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(host(together.mean), probabilities.mean(0), rtol=1e-5)


def test_inputs_nested_in_dicts_and_tuples_get_the_seed_their_arrays_would(xp, array, host):
    x = array(np.ones((2, 4)))
    given = {"array": [], "nested": []}

    def recording(kind):
        def predict(inputs, seed):
            given[kind].append(seed)
            return xdrop.dropout(inputs if kind == "array" else inputs["x"][0], 0.5, seed=seed)

        return predict

    direct = xdrop.mc_dropout(recording("array"), x, samples=3, seed=5)
    inputs = {"steps": 1, "x": (x, None)}  # numbers beside the arrays, as configs hold them
    nested = xdrop.mc_dropout(recording("nested"), inputs, samples=3, seed=5)
    # the key words in an array of x's framework (a compiled predict takes them as an argument)
    assert [type(seed) for seed in given["nested"]] == [type(seed) for seed in given["array"]]
    values = {kind: [seed_value(host, seed) for seed in given[kind]] for kind in given}
    assert values["nested"] == values["array"] == [xdrop.fold_in(5, t) for t in range(3)]
    np.testing.assert_array_equal(host(nested.mean), host(direct.mean))


def test_batched_samples_need_an_array_with_a_batch_axis(xp, array):
    # not a word about batch_axis, which would be in range for an array with axes
    for x in ({"x": array(np.ones((2, 4)))}, array(np.ones(()))):
        with pytest.raises(xdrop.XdropError, match=r"^x must be an array") as refused:
            xdrop.mc_dropout(lambda x, seed: x, x, samples=2, batched=True)
        assert "batch_axis" not in str(refused.value)


@pytest.mark.parametrize(
    "draw",
    [
        lambda x, seed, shape: xdrop.dropout(x, 0.5, seed=seed, noise_shape=shape),
        lambda x, seed, shape: xdrop.alpha_dropout(x, 0.5, seed=seed, noise_shape=shape),
        lambda x, seed, shape: xdrop.gaussian_dropout(x, 0.5, seed=seed, noise_shape=shape),
    ],
    ids=["dropout", "alpha_dropout", "gaussian_dropout"],
)
def test_batched_samples_refuse_a_mask_shared_along_the_axis_they_are_stacked_on(
    xp, array, host, draw
):
    x = array(np.ones((3, 4)))

    def predict_sharing(shape):
        return lambda x, seed: draw(x, seed, shape)

    # one mask for the whole stacked batch: every sample would be the same
    with pytest.raises(xdrop.ArgumentValueError, match=r"batched must be False .* axis 0"):
        xdrop.mc_dropout(predict_sharing((1, None)), x, samples=4, batched=True)
    # stacked along another axis, per-sample masks, one sample, or one call per sample: drawn
    xdrop.mc_dropout(predict_sharing((1, None)), x, samples=4, batched=True, batch_axis=1)
    xdrop.mc_dropout(predict_sharing((None, 1)), x, samples=4, batched=True)
    xdrop.mc_dropout(predict_sharing((1, None)), x, samples=1, batched=True)
    result = xdrop.mc_dropout(predict_sharing((1, None)), x, samples=4, seed=1)
    assert float(host(result.variance).sum()) > 0
    # nothing is left behind after the refusal: the draw runs outside mc_dropout
    assert xp.shape(draw(x, 1, (1, None))) == (3, 4)


def test_the_refusal_holds_on_the_sampling_thread_alone(xp, array, host):
    # a model trained on another thread meanwhile shares its masks as it likes
    x = array(np.ones((3, 4)))
    predicting, drawn = threading.Event(), threading.Event()
    results = []

    def predict(stacked, seed):
        predicting.set()
        assert drawn.wait(60)
        return xdrop.dropout(stacked, 0.5, seed=seed)

    def sample():
        results.append(xdrop.mc_dropout(predict, x, samples=4, seed=0, batched=True))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        assert predicting.wait(60)
        shared = xdrop.dropout(x, 0.5, seed=1, noise_shape=(1, None))
    finally:
        drawn.set()
        sampler.join(60)
    assert len(results) == 1 and xp.shape(shared) == (3, 4)
    assert float(host(results[0].variance).sum()) > 0

    def sample_sharing():  # on the sampling thread itself, the refusal holds
        try:
            xdrop.mc_dropout(
                lambda stacked, seed: xdrop.dropout(stacked, 0.5, seed=seed, noise_shape=(1, None)),
                x,
                samples=4,
                batched=True,
            )
        except xdrop.ArgumentValueError as error:
            results.append(error)

    sampler = threading.Thread(target=sample_sharing)
    sampler.start()
    sampler.join(60)
    assert isinstance(results[-1], xdrop.ArgumentValueError)


@pytest.mark.parametrize(
    ("arguments", "error", "message"),
    [
        ({"samples": 0}, xdrop.ArgumentValueError, "samples must be"),
        ({"samples": 2.5}, xdrop.ArgumentTypeError, "samples must be"),
        ({"from_logits": "yes"}, xdrop.ArgumentTypeError, "from_logits"),
        ({"axis": 3}, xdrop.ArgumentValueError, "axis"),
        ({"batched": 1}, xdrop.ArgumentTypeError, "batched"),
    ],
)
def test_bad_arguments_raise_xdrop_errors_naming_them(xp, array, arguments, error, message):
    with pytest.raises(error, match=message):
        xdrop.mc_dropout(lambda x, seed: array(np.zeros((2, 3))), None, **arguments)


def test_bad_predict_and_outputs(xp, array):
    with pytest.raises(xdrop.ArgumentTypeError, match="predict must be a callable"):
        xdrop.mc_dropout(None, None)  # type: ignore[arg-type]
    with pytest.raises(xdrop.ArgumentTypeError, match="the output of predict"):
        xdrop.mc_dropout(lambda x, seed: "logits", None, samples=2)
    with pytest.raises(xdrop.ArgumentValueError, match="the output of predict"):
        xdrop.mc_dropout(lambda x, seed: array(np.zeros(2), "int32"), None, samples=2)
    with pytest.raises(xdrop.ArgumentValueError, match="the output of predict"):
        xdrop.mc_dropout(
            lambda x, seed: array(np.zeros((2, 3))),
            array(np.zeros((2, 1))),
            samples=2,
            batched=True,
        )
    with pytest.raises(xdrop.ArgumentValueError, match="a class along axis 0"):
        xdrop.mc_dropout(lambda x, seed: array(np.zeros((0, 2))), None, samples=2, axis=0)
