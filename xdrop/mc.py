"""Monte Carlo dropout (Gal & Ghahramani, ICML 2016): predict with dropout on, many times, and read
the spread of the predictions as the model's uncertainty.

Written once over the backend protocol, like :mod:`xdrop.rdrop`: the outputs are arrays of the
model's framework, differentiable where it differentiates.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from xdrop import rdrop, registry, seeds, spec
from xdrop.errors import Shown, bad_type, bad_value
from xdrop.protocol import Array, FamilyBackend, LossBackend, require
from xdrop.registry import backend_for
from xdrop.tracing import PerThread, called_as_is
from xdrop.validation import as_input_array, as_integer, check_axis, check_flag

MAX_SAMPLES = 2**32  # one fold_in step per sample


class MCDropoutResult(NamedTuple):
    """What :func:`mc_dropout` returns, each an array of the model's framework. With ``p_t`` the
    predicted class probabilities of sample ``t`` of ``T``, and sums over the class axis::

        the output's shape:
        mean                = E p    = 1/T sum_t p_t
        variance            = 1/T sum_t (p_t - E p)**2
        without the class axis:
        predictive_entropy  = H[E p] = -sum_c E p_c log E p_c
        expected_entropy    = E H[p] = 1/T sum_t -sum_c p_tc log p_tc
        mutual_information  = H[E p] - E H[p]  (BALD; clipped at 0)

    ``0 log 0`` is 0. Entropies are in nats."""

    mean: Any
    variance: Any
    predictive_entropy: Any
    expected_entropy: Any
    mutual_information: Any


@called_as_is
def mc_dropout(
    predict: Callable[[Any, Any], Any],
    x: Any,
    *,
    samples: int = 30,
    seed: seeds.SeedLike = 0,
    axis: int = -1,
    from_logits: bool = True,
    batched: bool = False,
    batch_axis: int = 0,
) -> MCDropoutResult:
    """Monte Carlo dropout: ``samples`` stochastic predictions, their mean and their spread.

    Calls ``predict(x, fold_in(seed, t))`` for ``t = 0 .. samples - 1`` (dropout inside
    ``predict`` uses the seed it is given, in training mode), or with ``batched=True`` once,
    ``predict(concat([x] * samples, batch_axis), seed)``: dropout then draws one mask for the
    stacked batch, so every copy gets its own (as :func:`xdrop.rdrop_forward` does for two); a
    dropout that shares its mask along ``batch_axis`` is refused there (every copy would get it).
    For ``x`` of torch, TensorFlow or JAX (or dicts, lists and tuples of such arrays) an integer
    seed arrives as its key words, a uint32[2] array of that framework (the same masks), which a
    compiled ``predict`` (``jax.jit``, ``tf.function``, ``torch.compile``) takes as an argument
    without recompiling.
    A model of xdrop layers owns its seeds: switch its layers to sampling
    (``set_mc_sampling`` of ``xdrop.layers.torch``, ``.keras`` or ``.flax``) and pass
    ``lambda x, seed: model(x)``.

    Args:
        predict: a callable ``(x, seed) -> output``, the output a floating array whose ``axis``
            holds the classes.
        x: the input, an array of any framework (``predict`` receives it as it is unless
            ``batched``, where it must be an array of a registered framework).
        samples: the number of predictions ``T``, an integer from 1 to ``2**32``.
        seed: an integer in ``[0, 2**64)``, a seed array (traceable), or an
            :class:`xdrop.Generator` / ``None`` (one seed drawn from it, or from the global one).
        axis: the class axis of the output.
        from_logits: the output holds logits (softmax is taken over ``axis``); False: it holds
            probabilities already.
        batched: stack the samples along ``batch_axis`` and call ``predict`` once.
        batch_axis: the batch axis of ``x`` and of the output, for ``batched``.

    Returns:
        :class:`MCDropoutResult`. float16 and bfloat16 outputs are computed in float32, and its
        arrays are float32 then (float64 outputs give float64).

    Example:
        >>> import numpy as np
        >>> weights = np.array([[2.0, -1.0], [0.5, 1.0]], np.float32)
        >>> def predict(x, seed):
        ...     return xdrop.dropout(x, 0.5, seed=seed) @ weights
        >>> x = np.ones((1, 2), np.float32)
        >>> result = xdrop.mc_dropout(predict, x, samples=4, seed=0)
        >>> result.mean
        array([[0.689944, 0.310056]], dtype=float32)
        >>> entropy, bald = result.predictive_entropy[0], result.mutual_information[0]
        >>> print(f"{float(entropy):.4f} {float(bald):.4f}")
        0.6191 0.2859
    """
    if not callable(predict):
        raise bad_type("predict", predict, "a callable taking (x, seed) and returning an array")
    count = as_integer(samples)
    if count is None:
        raise bad_type("samples", samples, "an integer in [1, 2**32]")
    if not 0 < count <= MAX_SAMPLES:
        raise bad_value("samples", samples, "an integer in [1, 2**32]")
    logits = check_flag("from_logits", from_logits)
    if check_flag("batched", batched):
        outputs = _batched(predict, x, count, _base_seed(seed), batch_axis)
    else:
        base, like = _base_seed(seed), _first_array(x)
        outputs = [predict(x, _seed_argument(seeds.fold_in(base, t), like)) for t in range(count)]
    xp, class_axis = _check_outputs(outputs, axis)
    return summarize(xp, outputs, class_axis, logits)


def _base_seed(seed: object) -> object:
    """The seed the samples derive from: an integer or seed array as it is; generators draw one."""
    if seed is None or isinstance(seed, seeds.Generator):
        seeds.refuse_to_draw_in_a_trace()
        return (seed or seeds.global_generator()).next_seed()
    return seed


def _seed_argument(seed: object, like: Any) -> object:
    """The seed ``predict`` is given with an input whose array is ``like``: an integer seed goes
    to a model of a framework with a compiler as its key words ``(seed >> 32, seed &
    0xFFFFFFFF)`` in a uint32[2] array of that framework, the same mask: a compiled ``predict``
    takes an array as an argument, where a 64-bit Python int does not fit ``jax.jit``'s and
    would recompile ``torch.compile`` and ``tf.function`` per sample. NumPy's, and what no
    backend claims (``like`` None), keep the integer."""
    if not isinstance(seed, int) or like is None:
        return seed
    if registry.owner_of_type(type(like)) == "numpy":
        return seed
    return backend_for(like).asarray(np.array(divmod(seed, spec.WORD_COUNT), np.uint32))


def _first_array(x: Any) -> Any:
    """``x`` if a backend claims its type, else the first such array among the values of the
    dicts, lists and tuples ``x`` nests (a Hugging Face ``BatchEncoding``, a Flax model's
    ``(inputs, mask)``), else None."""
    if registry.owner_of_type(type(x)) is not None:
        return x
    if isinstance(x, Mapping):
        children: Iterable[Any] = x.values()
    elif isinstance(x, (list, tuple)) and not (x and isinstance(x[0], (int, float, complex))):
        children = x  # (a list of numbers is an array for NumPy, which keeps integer seeds)
    else:
        return None
    for child in children:
        found = _first_array(child)
        if found is not None:
            return found
    return None


def _batched(
    predict: Callable[[Any, Any], Any], x: Any, count: int, seed: object, batch_axis: object
) -> list[Array]:
    """The ``count`` outputs of one call on the stacked batch."""
    xp = backend_for(x)
    given, x = x, as_input_array(xp, x)
    shape = xp.shape(x)
    if not shape:
        shown = Shown("<0-d array>") if xp.is_array(given) else given
        raise bad_value("x", shown, "an array with a batch axis, for batched=True")
    stack_axis = check_axis(batch_axis, len(shape), "batch_axis")
    stacking = _STACKING.value
    outer, stacking.axis = stacking.axis, stack_axis if count > 1 else None
    try:
        y = predict(xp.concat([x] * count, axis=stack_axis), _seed_argument(seed, x))
    finally:
        stacking.axis = outer
    yp = require(backend_for(y), LossBackend, "mc_dropout")
    batch = shape[stack_axis]
    expected = f"an array with {count} times x's entries along axis {batch_axis}"
    if not yp.is_array(y):
        raise bad_type("the output of predict", y, expected)
    output_shape = yp.shape(y)
    if not -len(output_shape) <= stack_axis < len(output_shape):
        raise bad_value(
            "the output of predict", Shown(f"<array of shape {output_shape}>"), expected
        )
    stacked = output_shape[stack_axis]
    if batch is not None and stacked is not None and stacked != count * batch:
        raise bad_value(
            "the output of predict", Shown(f"<array of shape {output_shape}>"), expected
        )
    return yp.split(y, count, stack_axis)


class _Stacking:
    """The axis along which :func:`mc_dropout` stacked its samples, while ``batched=True``
    predicts on this thread (the model runs where ``predict`` calls it)."""

    def __init__(self) -> None:
        self.axis: int | None = None


_STACKING = PerThread(_Stacking)


def check_drawn_per_sample(noise: tuple[int | None, ...], shape: tuple[int | None, ...]) -> None:
    """Refuse a mask shared along the axis that ``mc_dropout(batched=True)`` stacks its samples
    on, while it predicts: every sample would get that mask, and the spread would be too small,
    silently. Drawing functions call this in training with their noise shape and ``x``'s."""
    axis = _STACKING.value.axis
    if axis is None or axis >= len(shape) or noise[axis] != 1 or shape[axis] == 1:
        return
    allowed = (
        f"False for a model whose dropout shares its mask along batch axis {axis} (a mask of "
        f"shape {noise} for an input of shape {shape}): every sample stacked along it would "
        "get that one mask"
    )
    raise bad_value("batched", True, allowed)


def _check_outputs(outputs: list[Any], axis: object) -> tuple[FamilyBackend, int]:
    """The outputs' backend and class axis; every output a floating array of one shape."""
    first = outputs[0]
    xp = require(backend_for(first), FamilyBackend, "mc_dropout")
    allowed = "a floating array (logits or probabilities) of one shape for every sample"
    for output in outputs:
        if not xp.is_array(output):
            raise bad_type("the output of predict", output, allowed)
        dtype, shape = xp.dtype_name(output), xp.shape(output)
        if dtype not in ("float16", "bfloat16", "float32", "float64") or shape != xp.shape(first):
            raise bad_value("the output of predict", Shown(f"<{dtype} array {shape}>"), allowed)
    shape = xp.shape(first)
    if not shape:
        raise bad_value("the output of predict", Shown("<0-d array>"), "an array with a class axis")
    class_axis = check_axis(axis, len(shape))
    if shape[class_axis] == 0:  # no class to average, nor an entropy
        shown = Shown(f"<{xp.dtype_name(first)} array {shape}>")
        raise bad_value("the output of predict", shown, f"an array with a class along axis {axis}")
    return xp, class_axis


# -- the statistics --------------------------------------------------------------------------------
def summarize(
    xp: FamilyBackend, outputs: list[Array], axis: int, from_logits: bool
) -> MCDropoutResult:
    """:class:`MCDropoutResult` of the outputs of ``T`` samples (arrays of one shape and dtype)."""
    dtype = rdrop.compute_dtype(xp.dtype_name(outputs[0]))
    probabilities, neg_entropies = [], []
    for output in outputs:
        values = xp.astype(output, dtype) if xp.dtype_name(output) != dtype else output
        if from_logits:
            log_p = xp.log_softmax(values, axis)
            p = xp.exp(log_p)
        else:
            p, log_p = values, safe_log(xp, values)
        probabilities.append(p)
        neg_entropies.append(xp.sum(xp.multiply(p, zero_where_impossible(xp, p, log_p)), axis))
    count = float(len(outputs))
    mean = xp.divide(_total(xp, probabilities), count)
    squares = [xp.multiply(d, d) for d in (xp.subtract(p, mean) for p in probabilities)]
    variance = xp.divide(_total(xp, squares), count)
    expected = xp.multiply(xp.divide(_total(xp, neg_entropies), count), -1.0)
    if len(outputs) == 1:  # H[E p] is E H[p]: computed once, their difference is exactly 0
        predictive = xp.multiply(expected, 1.0)  # a copy: an in-place edit of one keeps the other
    else:
        predictive = xp.multiply(xp.sum(xp.multiply(mean, safe_log(xp, mean)), axis), -1.0)
    difference = xp.subtract(predictive, expected)
    information = xp.where(xp.less_equal(difference, 0.0), 0.0, difference)
    return MCDropoutResult(mean, variance, predictive, expected, information)


def safe_log(xp: FamilyBackend, p: Array) -> Array:
    """``log p`` where ``p > 0``, and 0 (not ``-inf``) where ``p == 0``, with finite gradients."""
    impossible = xp.equal(p, 0.0)
    return xp.where(impossible, 0.0, xp.log(xp.where(impossible, 1.0, p)))


def zero_where_impossible(xp: FamilyBackend, p: Array, log_p: Array) -> Array:
    """``log_p`` with 0 where ``p == 0`` (a ``-inf`` there would make ``p * log_p`` NaN)."""
    return xp.where(xp.equal(p, 0.0), 0.0, log_p)


def _total(xp: FamilyBackend, arrays: list[Array]) -> Array:
    total = arrays[0]
    for a in arrays[1:]:
        total = xp.add(total, a)
    return total
