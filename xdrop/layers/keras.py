"""Keras 3 layers (JAX, TensorFlow and torch backends): ``Dropout``, ``SpatialDropout1D/2D/3D``,
the family ``AlphaDropout``, ``GaussianDropout``, ``DropPath``, ``DropBlock2D``, and
``GaussianNoise``; each holds its stream in a :class:`SeedStream`."""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from os import PathLike
from typing import Any, TypeVar

import keras
import numpy as np
from keras.src.backend.common.masking import get_keras_mask, set_keras_mask
from keras.src.utils.naming import auto_name

import xdrop
from xdrop.errors import (
    ArgumentTypeError,
    ArgumentValueError,
    Shown,
    UnbuiltLayerError,
    UnconvertedDropoutError,
    UnconvertedDropoutWarning,
    bad_type,
    bad_value,
)
from xdrop.layers import common
from xdrop.validation import check_alpha, check_choice, check_flag, check_mode, check_natural

__all__ = [
    "AlphaDropout",
    "DropBlock2D",
    "DropPath",
    "Dropout",
    "GaussianDropout",
    "GaussianNoise",
    "RDrop",
    "SeedStream",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "convert",
    "load_model",
    "named_layers",
    "set_mc_sampling",
]

_T = TypeVar("_T")

_WORD = 1 << 32


def _as_value_error(check: Callable[[], _T]) -> _T:
    """``check()``, its type errors raised as :class:`~xdrop.ArgumentValueError` with the same
    message: Keras' layers raise ``ValueError`` for a seed or a noise shape of a wrong type."""
    try:
        return check()
    except ArgumentTypeError as error:
        raise ArgumentValueError(*error.args) from None


@keras.saving.register_keras_serializable(package="xdrop")
class SeedStream(keras.random.SeedGenerator):
    """The stream of an xdrop layer, as the ``keras.random.SeedGenerator`` Keras' own layers hold:
    Keras' tooling counts it as a seed generator (``layer.seed_generator``), and its one variable
    ``state`` is the layer's whole state, outside its weights.

    ``state`` is int32[4] ``(s_hi, s_lo, t_hi, t_lo)``: the seed ``s`` and the step ``t`` (the
    number of draws so far), each as two 32-bit words, exact on every backend (JAX without x64
    included). Draw ``t`` uses the seed of every layer's step (``xdrop.layers.common.step_seed``):
    Threefry-2x32 of the key of ``s`` at counter ``(t_hi, t_lo)``, which is ``xdrop.fold_in(s, t)``
    for ``t < 2**32``; the step carries into the high word instead of wrapping, so one stream
    never repeats within ``2**64`` draws.

    Args:
        seed: an integer in ``[0, 2**64)``, an :class:`xdrop.Generator`, or None (the next seed
            of xdrop's global generator).
        name: the name of the generator (its variable's path starts with it); None numbers
            it as Keras numbers its own (``seed_generator``, ``seed_generator_1``...).

    Example:
        >>> stream = SeedStream(7)
        >>> stream.seed, stream.step
        (7, 0)
    """

    def __init__(self, seed: int | xdrop.Generator | None = None, name: str | None = None) -> None:
        # SeedGenerator.__init__ is not called: it makes a (2,) variable of the backend's seed
        # dtype, which cannot hold a 64-bit seed and a step on JAX without x64.
        # numbered as Keras names its own generators: every variable path in a model is unique
        self.name = auto_name("seed_generator") if name is None else name
        self._initial_seed = _as_value_error(lambda: common.initial_seed(seed))
        high, low = common.seed_words(self._initial_seed)
        words = np.array([high, low, 0, 0], np.uint32).view(np.int32)
        with keras.name_scope(self.name, caller=self):
            self.state = keras.Variable(
                lambda shape, dtype: keras.ops.convert_to_tensor(words, dtype),
                shape=(4,),
                dtype="int32",
                trainable=False,
                aggregation="none",
                name="seed_generator_state",
            )

    @property
    def seed(self) -> int:
        """The seed ``s`` of the stream, read from ``state``."""
        high, low, _, _ = _words(self.state)
        return high << 32 | low

    @property
    def step(self) -> int:
        """The step ``t``: the number of draws so far, read from ``state``."""
        _, _, high, low = _words(self.state)
        return high << 32 | low

    def draw(self) -> Any:
        """The seed of the next draw, as a seed array ``xdrop.dropout`` takes, and advance the
        step (traceable: inside a compiled step the new state is assigned as Keras' own
        ``SeedGenerator`` assigns its own)."""
        state = self.state.value
        s_high, s_low, t_high, t_low = (state[i] for i in range(4))
        seed = common.step_seed(_seed_array(s_high, s_low), _seed_array(t_high, t_low))
        carry = keras.ops.cast(keras.ops.equal(t_low, -1), "int32")  # t_lo == 2**32 - 1
        self.state.assign(keras.ops.stack([s_high, s_low, t_high + carry, t_low + 1]))
        return seed

    def next(self, ordered: bool = True) -> Any:
        """A seed for ``keras.random`` functions (``seed=layer.seed_generator``): the two words of
        the next draw's seed, each shifted right by one bit to fit every backend's seed dtype."""
        seed = self.draw()
        if len(seed.shape) == 0:  # a 0-d int64 holding the seed's two's complement
            high = keras.ops.bitwise_and(keras.ops.right_shift(seed, 33), 0x7FFF_FFFF)
            words = keras.ops.stack([high, keras.ops.bitwise_and(seed, 0xFFFF_FFFF) // 2])
        else:  # uint32[2] (hi, lo)
            words = keras.ops.right_shift(seed, 1)
        # the dtype keras.random's functions take seeds in (not exported: uint32, int64 or int32)
        from keras.src.backend import random_seed_dtype

        return keras.ops.cast(words, random_seed_dtype())

    def get_config(self) -> dict[str, Any]:
        return {"seed": self.seed, "name": self.name}

    def load(self, values: Sequence[Any], layer: str) -> None:
        """Set ``state`` from saved values: one int32[4] ``state``, or the int32[2] seed and the
        0-d int32 step that files of earlier versions hold. Refused unless integers of those
        shapes, each word within int32 (no value is read modulo anything)."""
        arrays = [np.asarray(value) for value in values]
        shapes = [array.shape for array in arrays]
        argument = f"the state of layer {layer!r}"
        allowed = "an int32[4] (seed hi, seed lo, step hi, step lo), or an int32[2] seed and an int32 step"
        if not arrays:  # a file saved before convert: Keras' Dropout holds no variable
            raise bad_value(
                argument,
                Shown("<no array: the file holds no stream for it>"),
                allowed + "; a file saved before convert loads with keras.saving.load_model, "
                "then convert the model (xdrop.layers.keras.convert(model, seed=...))",
            )
        if shapes not in ([(4,)], [(2,), ()]):
            shown = Shown(f"<arrays of shapes {shapes}>")
            raise bad_value(argument, shown, allowed)
        for array in arrays:
            if array.dtype.kind not in "iu":
                raise bad_type(
                    argument, Shown(f"<array of {array.dtype}>", array.dtype.name), allowed
                )
            int32 = np.iinfo(np.int32)
            if array.size and (array.min() < int32.min or array.max() > int32.max):
                raise bad_value(argument, Shown(f"<array holding {array.tolist()}>"), allowed)
        words = np.concatenate([array.reshape(-1) for array in arrays]).astype(np.int64)
        if len(words) == 3:  # the seed's words and the step, which was read modulo 2**32
            words = np.array([words[0], words[1], 0, words[2]])
        self.state.assign(words.astype(np.int32))


def _ranks(inputs: Any) -> common.Ranks:
    """The data-parallel ranks of a call, read where the backend keeps them: on TensorFlow the
    replica context of ``tf.distribute`` (``strategy.run``, and so ``fit`` under a strategy; a
    call outside a replica context sees the whole batch); on JAX the processes
    (:func:`xdrop.layers.common.process_ranks`); on torch ``torch.distributed`` once it is
    initialised."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None or context.num_replicas_in_sync == 1:
            return common.Ranks()
        replica = context.replica_id_in_sync_group

        def rows(mask_shape: Sequence[int | None]) -> tuple[Any, int | None]:
            # the replicas' batches may differ (the last batch of a dataset split unevenly):
            # each row's place comes from every replica's size, gathered
            sizes = context.all_gather(tf.shape(inputs, out_type=tf.int64)[:1], axis=0)
            return tf.math.cumsum(sizes, exclusive=True)[replica], None

        return common.Ranks(replica, context.num_replicas_in_sync, rows)
    if backend == "jax":
        return common.process_ranks(inputs)
    if backend == "torch":
        from xdrop.layers.torch_functional import DataParallel

        group = DataParallel()  # the default group
        rank, world = group.rank_and_world()
        if world == 1:
            return common.Ranks()

        def gathered_rows(mask_shape: Sequence[int | None]) -> tuple[Any, int | None]:
            return common.batch_rows(group.batch_sizes(inputs, world, mask_shape), rank)

        return common.Ranks(rank, world, gathered_rows)
    return common.Ranks()


def _words(variable: Any) -> list[int]:
    """The four words of a stream's state as unsigned Python integers."""
    values = keras.ops.convert_to_numpy(variable.value).astype(np.int64)
    return [common.unsigned(int(value), 32) for value in values]


def _seed_array(high: Any, low: Any) -> Any:
    """The int32 words ``(hi, lo)`` as a seed array ``xdrop.fold_in`` takes: uint32[2], or on
    torch (whose Keras backend has no uint32) the 0-d int64 holding the seed's two's complement."""
    if keras.backend.backend() != "torch":
        return keras.ops.cast(keras.ops.stack([high, low]), "uint32")
    high, low = keras.ops.cast(high, "int64"), keras.ops.cast(low, "int64")
    return keras.ops.bitwise_or(
        keras.ops.left_shift(high, 32), keras.ops.bitwise_and(low, 0xFFFF_FFFF)
    )


@keras.saving.register_keras_serializable(package="xdrop")
class Dropout(common.DropoutDraws, keras.layers.Layer):
    """``keras.layers.Dropout`` with a seeded, portable mask stream saved with the model.

    On its ``t``-th call with ``training=True`` (``t = 0, 1, ...``) the layer returns exactly::

        xdrop.dropout(x, rate, seed=xdrop.fold_in(seed, t), mode=mode,
                      noise_shape=noise_shape)

    and then advances ``t``; other calls return ``xdrop.dropout(x, rate, training=False,
    mode=mode)`` (``x`` itself for ``mode="inverted"``) and leave ``t`` alone. The seed and ``t``
    are held in ``layer.seed_generator``, a :class:`SeedStream` (a ``keras.random.SeedGenerator``,
    as Keras' own ``Dropout`` holds one; ``t`` carries past ``2**32`` as it describes): no
    weights, one seed generator, as Keras counts them. A compiled train step advances ``t``, and
    ``model.save("m.keras")`` / ``save_weights`` store the state, so a reloaded model continues the
    stream. ``layer.seed`` and ``layer.step`` read ``s`` and ``t`` as Python integers.

    Args:
        rate: the probability of zeroing an element, in ``[0, 1]``.
        noise_shape: the shape the mask is drawn at, broadcast to the input (entries 1, None or
            the input's size; see :func:`xdrop.dropout`). None: one decision per element.
        seed: an integer in ``[0, 2**64)``; ``None`` (default) draws one now from xdrop's global
            generator (reproducible after ``xdrop.manual_seed``). ``get_config`` holds the seed
            in use, so ``from_config`` rebuilds the same stream.
        mode: ``"inverted"`` (scale kept elements by ``1 / (1 - rate)`` in training) or
            ``"classic"`` (scale by ``1 - rate`` in evaluation).
        data_parallel: how replicas draw, read at each call where the backend keeps them
            (TensorFlow: the ``tf.distribute`` replica context, so ``fit`` under a strategy;
            JAX: ``jax.process_index()`` of ``jax.process_count()`` for process-local arrays;
            torch: ``torch.distributed``). Among ``R > 1`` replicas, ``"per_rank"`` draws
            with ``xdrop.fold_in(xdrop.fold_in(seed, t), r)`` on replica ``r``;
            ``"global_batch"`` places replica ``r``'s rows in the global batch (an
            :class:`xdrop.Block`; on TensorFlow from every replica's gathered batch size, so
            an uneven split is placed exactly), so the replicas draw together what one device
            draws over the global batch; None (default) is ``"per_rank"``. With one replica,
            and for global ``jax.Array`` inputs, every mode draws as one device does. The
            stored seed and step are the same on every replica. ``DropBlock2D`` and
            ``GaussianNoise`` do not take ``"global_batch"``. See the page "One mask on one
            device or many".
        **kwargs: Keras layer arguments (``name``, ``dtype``).

    Raises ``ValueError`` (:class:`xdrop.ArgumentValueError`) where Keras' layer raises one: a
    rate, seed or noise shape it does not take.

    Example:
        >>> import keras, numpy as np, xdrop
        >>> from xdrop.layers.keras import Dropout
        >>> layer = Dropout(0.5, seed=0)
        >>> x = np.ones((2, 4), "float32")
        >>> y = layer(x, training=True)
        >>> expected = xdrop.dropout(x, 0.5, seed=xdrop.fold_in(0, 0))
        >>> same = (keras.ops.convert_to_numpy(y) == expected).all()
        >>> bool(same), layer.step
        (True, 1)
    """

    def __init__(
        self,
        rate: float,
        noise_shape: Sequence[int | None] | None = None,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
        data_parallel: str | None = None,
        **kwargs: Any,
    ) -> None:
        defaults = {"noise_shape": None, "mode": "inverted"}
        given = {"noise_shape": noise_shape, "mode": mode}
        for name in self._not_taken:  # a variant passes its **kwargs on to here
            if name in given and given[name] != defaults[name]:
                raise ArgumentTypeError(
                    f"{type(self).__name__} takes no {name!r} argument, got {given[name]!r}"
                )
        super().__init__(**kwargs)
        self.rate = self._check_rate(self._rate_argument, rate)
        self.noise_shape = _as_value_error(lambda: common.check_noise_shape_entries(noise_shape))
        self.mode = check_mode(mode)
        self.data_parallel = self._check_data_parallel(data_parallel)
        self.seed_generator = SeedStream(seed)
        self.supports_masking = True
        self._build_at_init()  # as keras.layers.Dropout: no weights depend on the input

    _rate_argument = "rate"
    """The name of the layer's rate argument, as its errors name it."""

    @property
    def seed(self) -> int:
        """The seed ``s`` of the stream (``seed_generator.seed``)."""
        return int(self.seed_generator.seed)

    @property
    def step(self) -> int:
        """The step ``t``: training calls so far (``seed_generator.step``)."""
        return int(self.seed_generator.step)

    mc_sampling = False
    """Sample when not training too (Monte Carlo dropout); :func:`set_mc_sampling` sets it."""

    _axis_names = (
        "samples",
        "channels",
        {1: ("timesteps",), 2: ("rows", "cols"), 3: ("dim1", "dim2", "dim3")},
    )  # as Keras' documentation names them

    def call(self, inputs: Any, training: bool | None = False) -> Any:
        self._check_input_shape("inputs", inputs.shape)
        self._check_floating("inputs", inputs)
        if not (training or self.mc_sampling):
            return self._evaluate(inputs, self.rate)
        noise_shape = self._noise_shape(inputs)
        seed, offset = _ranks(inputs).place(
            self.data_parallel,
            self.seed_generator.draw(),
            *common.placed_mask(tuple(inputs.shape), noise_shape),
        )
        return self._draw(inputs, self.rate, seed, noise_shape, offset)

    def _noise_shape(self, inputs: Any) -> Sequence[int | None] | None:
        return self.noise_shape

    def compute_output_shape(self, input_shape: Any) -> Any:
        # Keras builds a model by calling each layer on symbolic inputs, which reach this method
        # and not call: a wrong rank is refused here, when the model is built, as an InputSpec
        # would refuse it, rather than at the first predict or fit.
        self._check_input_shape("inputs", input_shape)
        return input_shape

    def save_own_variables(self, store: Any) -> None:
        # Keras' Layer saves its weights only; the stream is the state that must resume
        super().save_own_variables(store)
        weights = len(self._trainable_variables + self._non_trainable_variables)
        store[str(weights)] = self.seed_generator.state

    def load_own_variables(self, store: Any) -> None:
        keys = sorted(store.keys(), key=int)
        self.seed_generator.load([store[key] for key in keys], self.name)

    _not_taken: tuple[str, ...] = ()
    """The arguments of :class:`Dropout` that a variant does not take: its config leaves them out."""

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        shared: dict[str, Any] = dict(
            rate=self.rate, noise_shape=self.noise_shape, seed=self.seed, mode=self.mode
        )
        if self.data_parallel is not None:  # configs without it stay as they were
            shared["data_parallel"] = self.data_parallel
        config.update((key, value) for key, value in shared.items() if key not in self._not_taken)
        return {**config, **self._own_config()}

    def _own_config(self) -> dict[str, Any]:
        """A variant's own arguments, added to the config after those it shares with Dropout."""
        return {}


class _SpatialDropout(Dropout):
    """One decision per ``(sample, channel)``, shared over the spatial axes."""

    _not_taken = ("noise_shape",)

    rank = 0

    def __init__(
        self,
        rate: float,
        data_format: str | None = None,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
        **kwargs: Any,
    ) -> None:
        super().__init__(rate, seed=seed, mode=mode, **kwargs)
        # Keras: SpatialDropout1D is channels-last whatever the config
        default = "channels_last" if self.rank == 1 else keras.config.image_data_format()
        self.data_format = common.check_data_format(data_format, default)

    def _ranks_allowed(self, ndim: int) -> str | None:
        return None if ndim == self.rank + 2 else self._feature_map(self.rank, self.data_format)

    def _noise_shape(self, inputs: Any) -> Sequence[int | None] | None:
        first = 2 if self.data_format == "channels_first" else 1
        return common.spatial_noise_shape(len(inputs.shape), range(first, first + self.rank))

    def _own_config(self) -> dict[str, Any]:
        return {"data_format": self.data_format}


@keras.saving.register_keras_serializable(package="xdrop")
class SpatialDropout1D(_SpatialDropout):
    """:class:`Dropout` of whole feature maps of ``(samples, timesteps, channels)`` inputs, as
    ``keras.layers.SpatialDropout1D``: the mask is drawn at ``(samples, 1, channels)``.

    Args: ``rate``, ``seed``, ``mode`` and ``**kwargs`` as for :class:`Dropout`;
    ``data_format`` (``"channels_last"``, or ``"channels_first"`` for ``(samples, channels,
    timesteps)``).

    Example:
        >>> layer = SpatialDropout1D(0.5, seed=0)
        >>> y = layer(np.ones((2, 5, 3), "float32"), training=True)
    """

    rank = 1


@keras.saving.register_keras_serializable(package="xdrop")
class SpatialDropout2D(_SpatialDropout):
    """:class:`Dropout` of whole feature maps of 4-d inputs, as ``keras.layers.SpatialDropout2D``:
    the mask is drawn at ``(samples, 1, 1, channels)`` (``channels_last``) or ``(samples,
    channels, 1, 1)`` (``channels_first``; default: ``keras.config.image_data_format()``).

    Example:
        >>> layer = SpatialDropout2D(0.5, seed=0)
        >>> y = layer(np.ones((2, 4, 4, 3), "float32"), training=True)
    """

    rank = 2


@keras.saving.register_keras_serializable(package="xdrop")
class SpatialDropout3D(_SpatialDropout):
    """:class:`Dropout` of whole feature maps of 5-d inputs, as ``keras.layers.SpatialDropout3D``:
    the mask is drawn at ``(samples, 1, 1, 1, channels)`` or ``(samples, channels, 1, 1, 1)``.

    Example:
        >>> layer = SpatialDropout3D(0.5, seed=0)
        >>> y = layer(np.ones((2, 2, 2, 2, 3), "float32"), training=True)
    """

    rank = 3


@keras.saving.register_keras_serializable(package="xdrop")
class AlphaDropout(common.AlphaDropoutDraws, Dropout):
    """:func:`xdrop.alpha_dropout` as a layer, as ``keras.layers.AlphaDropout``: on its ``t``-th
    training call ``xdrop.alpha_dropout(x, rate, seed=xdrop.fold_in(seed, t),
    noise_shape=noise_shape)``; the inputs otherwise. Arguments as for :class:`Dropout`, without
    ``mode``.

    Example:
        >>> y = AlphaDropout(0.2, seed=0)(np.ones((2, 4), "float32"), training=True)
    """

    _not_taken = ("mode",)

    def __init__(
        self,
        rate: float,
        noise_shape: Sequence[int | None] | None = None,
        seed: int | xdrop.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(rate, noise_shape=noise_shape, seed=seed, **kwargs)


@keras.saving.register_keras_serializable(package="xdrop")
class GaussianDropout(common.GaussianDropoutDraws, Dropout):
    """:func:`xdrop.gaussian_dropout` as a layer, as ``keras.layers.GaussianDropout``: on its
    ``t``-th training call ``xdrop.gaussian_dropout(x, rate, seed=xdrop.fold_in(seed, t))``
    (``x * (1 + sqrt(rate / (1 - rate)) * z)``); the inputs otherwise. ``rate`` in ``[0, 1)``.

    Example:
        >>> y = GaussianDropout(0.2, seed=0)(np.ones((2, 4), "float32"), training=True)
    """

    _not_taken = ("noise_shape", "mode")

    def __init__(
        self, rate: float, seed: int | xdrop.Generator | None = None, **kwargs: Any
    ) -> None:
        super().__init__(rate, seed=seed, **kwargs)

    def _noise_shape(self, inputs: Any) -> None:
        return None  # as keras.layers.GaussianDropout: one draw per element


@keras.saving.register_keras_serializable(package="xdrop")
class GaussianNoise(common.GaussianNoiseDraws, Dropout):
    """Additive zero-centred Gaussian noise, as ``keras.layers.GaussianNoise``: on its ``t``-th
    training call ``x + dtype(float32(stddev) * z)``, with ``z`` the standard normals
    :func:`xdrop.gaussian_dropout` draws for ``seed=xdrop.fold_in(seed, t)`` (so that
    ``xdrop.gaussian_dropout(x, p, ...)`` is ``x * (1 + sqrt(p / (1 - p)) * z)`` with the same
    ``z``); the inputs otherwise.

    Args:
        stddev: the standard deviation of the noise, in ``[0, 1]`` (as Keras takes it).
        seed: and ``**kwargs`` as for :class:`Dropout`.

    Example:
        >>> y = GaussianNoise(0.1, seed=0)(np.ones((2, 4), "float32"), training=True)
    """

    _not_taken = ("rate", "noise_shape", "mode")

    _rate_argument = "stddev"

    def __init__(
        self, stddev: float, seed: int | xdrop.Generator | None = None, **kwargs: Any
    ) -> None:
        super().__init__(stddev, seed=seed, **kwargs)
        self.stddev = self.rate

    def _noise_shape(self, inputs: Any) -> None:
        return None  # as keras.layers.GaussianNoise: one draw per element

    def _own_config(self) -> dict[str, Any]:
        return {"stddev": self.stddev}


@keras.saving.register_keras_serializable(package="xdrop")
class DropPath(common.DropPathDraws, Dropout):
    """:func:`xdrop.drop_path` (stochastic depth) as a layer: on its ``t``-th training call
    ``xdrop.drop_path(x, rate, seed=xdrop.fold_in(seed, t), mode=mode,
    scale_by_keep=scale_by_keep)``; the inputs otherwise.

    Args: ``rate`` (of dropping a sample's branch), ``mode`` (``"row"`` or ``"batch"``),
    ``scale_by_keep`` (by ``1 / (1 - rate)``), ``seed`` and ``**kwargs`` as for :class:`Dropout`.

    Example:
        >>> y = DropPath(0.1, seed=0)(np.ones((4, 3), "float32"), training=True)
    """

    _not_taken = ("noise_shape", "mode")

    def __init__(
        self,
        rate: float,
        mode: str = "row",
        scale_by_keep: bool = True,
        seed: int | xdrop.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(rate, seed=seed, **kwargs)
        self.path_mode, self.scale_by_keep = common.check_drop_path_options(mode, scale_by_keep)

    def _own_config(self) -> dict[str, Any]:
        return {"mode": self.path_mode, "scale_by_keep": self.scale_by_keep}


@keras.saving.register_keras_serializable(package="xdrop")
class DropBlock2D(common.DropBlock2DDraws, Dropout):
    """:func:`xdrop.drop_block` as a layer for 4-d inputs: on its ``t``-th training call
    ``xdrop.drop_block(x, rate, block_size, data_format=data_format,
    seed=xdrop.fold_in(seed, t))``; the inputs otherwise.

    Args: ``rate`` (the target fraction of dropped units), ``block_size``, ``data_format``
    (default: ``keras.config.image_data_format()``), ``seed`` and ``**kwargs`` as for
    :class:`Dropout`.

    Example:
        >>> layer = DropBlock2D(0.1, 3, seed=0)
        >>> y = layer(np.ones((2, 8, 8, 4), "float32"), training=True)
    """

    _not_taken = ("noise_shape", "mode")

    def __init__(
        self,
        rate: float,
        block_size: int = 7,
        data_format: str | None = None,
        seed: int | xdrop.Generator | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(rate, seed=seed, **kwargs)
        self.block_size = common.check_block_size(block_size)
        self.data_format = common.check_data_format(data_format, keras.config.image_data_format())

    def _own_config(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "data_format": self.data_format}


def set_mc_sampling(model: Any, enabled: bool = True) -> int:
    """Make every xdrop layer in ``model`` (a layer or model, searched recursively) sample when
    called without ``training=True`` too (Monte Carlo dropout), or stop.

    Only xdrop's layers change: BatchNormalization keeps using its moving statistics, which
    ``training=True`` would not (keras-team/keras#9412). The model's compiled ``predict`` and
    ``evaluate`` functions are dropped, so that they are traced again with the new setting; pass
    the model whose ``predict`` is called (an outer model keeps its own compiled functions).
    Returns the number of layers switched.

    Example:
        >>> model = keras.Sequential([keras.layers.Dense(4), Dropout(0.5, seed=0)])
        >>> set_mc_sampling(model)
        1
    """
    if not isinstance(model, keras.layers.Layer):
        raise bad_type("model", model, "a Keras layer or model (keras.layers.Layer)")
    flag = check_flag("enabled", enabled)
    switched = 0
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, Dropout):
            layer.mc_sampling = flag
            switched += 1
    for cached in ("predict_function", "test_function"):
        if hasattr(model, cached):
            setattr(model, cached, None)
    return switched


def _dropout_arguments(layer: Any) -> dict[str, Any]:
    return {"rate": layer.rate, "noise_shape": layer.noise_shape}


def _spatial_arguments(layer: Any) -> dict[str, Any]:
    return {"rate": layer.rate, "data_format": getattr(layer, "data_format", None)}


_CONVERTED: dict[type, tuple[type[Dropout], Callable[[Any], dict[str, Any]]]] = {
    keras.layers.Dropout: (Dropout, _dropout_arguments),
    keras.layers.SpatialDropout1D: (SpatialDropout1D, lambda layer: {"rate": layer.rate}),
    keras.layers.SpatialDropout2D: (SpatialDropout2D, _spatial_arguments),
    keras.layers.SpatialDropout3D: (SpatialDropout3D, _spatial_arguments),
    keras.layers.GaussianDropout: (GaussianDropout, lambda layer: {"rate": layer.rate}),
    keras.layers.AlphaDropout: (AlphaDropout, _dropout_arguments),
    keras.layers.GaussianNoise: (GaussianNoise, lambda layer: {"stddev": layer.stddev}),
}
"""Keras' layer class (exactly: a subclass may compute something else) -> xdrop's layer and the
arguments read from Keras' layer."""

_NOT_CHILDREN = frozenset(
    {
        "_layers",  # every tracked sublayer again, without a name
        "_operations",  # a functional model's graph: its layers again
        "_operations_by_depth",
        "_functional",  # a Sequential's inner functional model: the same layers
        "_inbound_nodes",
        "_outbound_nodes",
        "_modules",  # torch's view of the sublayers (read as attributes below)
        "_parameters",
        "_buffers",
        "_torch_params",
        "_tracker",
        "_self_saveable_object_factories",
    }
)
"""Attributes of a Keras layer that hold its sublayers a second time (or none): a layer's name in
the model never goes through them."""

# what Keras' layers hold about their place in a graph and how they were built and called:
# kept when a layer changes class, so that the graph and the model's config stay as they were
_KEPT = ("_inbound_nodes", "_outbound_nodes", "_called", "_parent_path", "_path",
         "_build_shapes_dict", "_trainable", "build", "quantize")  # fmt: skip


def named_layers(model: Any) -> Iterator[tuple[str, Any]]:
    """Every layer inside ``model`` (not ``model`` itself), once, with its name in the model (the
    name :func:`convert` derives the layer's seed from): the
    dotted path of attributes that reaches it, list and tuple items by index and dict items by key
    (``"encoder.blocks.0.attention._dropout_layer"``), attributes in sorted order, so a layer held
    twice is named after the first. Layers reached through no attribute (those of a Sequential or
    functional model, e.g.) are ``layers.I``, with ``I`` the index in the parent's ``layers``.

    Names come from the model's structure, never from Keras' layer names (``dropout_3``), which
    depend on how many layers the process made before."""
    seen = {id(model)}

    def children(layer: Any) -> Iterator[tuple[str, Any]]:
        attributes = {**vars(layer), **getattr(layer, "_modules", {})}
        for attribute in sorted(attributes):
            # TensorFlow's tracking (_self_unconditional_dependency_names...) holds them again
            if attribute not in _NOT_CHILDREN and not attribute.startswith("_self_uncondition"):
                yield from items(attribute, attributes[attribute])
        tracked = (
            layer.layers
            if isinstance(layer, keras.Model)
            else layer._flatten_layers(include_self=False, recursive=False)
        )
        for index, sublayer in enumerate(tracked):
            yield f"layers.{index}", sublayer

    def items(name: str, value: Any) -> Iterator[tuple[str, Any]]:
        if isinstance(value, keras.layers.Layer):
            yield name, value
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                yield from items(f"{name}.{index}", item)
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                yield from items(f"{name}.{key}", value[key])

    def walk(layer: Any, prefix: str) -> Iterator[tuple[str, Any]]:
        found = [(prefix + name, child) for name, child in children(layer)]
        fresh = []
        for name, child in found:  # a layer's own children first: they are named there
            if id(child) not in seen:
                seen.add(id(child))
                fresh.append((name, child))
        for name, child in fresh:
            yield name, child
            yield from walk(child, name + ".")

    yield from walk(model, "")


_DROPOUT_LIKE = re.compile(r"Dropout|Noise|DropPath|DropBlock|StochasticDepth")


def _draws_its_own(layer: Any) -> bool:
    """A layer that draws dropout-like noise without xdrop: a subclass of a Keras layer convert
    replaces (whatever its name), a class named like a dropout (``Dropout``, ``Noise``,
    ``DropPath``, ``DropBlock`` or ``StochasticDepth`` in the name: keras-hub's models hold
    drop paths of their own) whose ``rate`` is not 0, or a layer holding a seed generator of its
    own and a rate above 0
    (``rate``, ``dropout`` or ``recurrent_dropout``: Keras' ``Attention``, ``AdditiveAttention``,
    the recurrent cells)."""
    if isinstance(layer, Dropout) or type(layer) in _CONVERTED:
        return False
    if isinstance(layer, keras.Model):
        return False  # a model is a container: its layers are judged one by one
    # only the exact classes are replaced: a subclass may draw otherwise, so it is reported
    if isinstance(layer, tuple(_CONVERTED)):
        return True
    rates = [getattr(layer, rate, 0) for rate in ("rate", "dropout", "recurrent_dropout")]
    if _DROPOUT_LIKE.search(type(layer).__name__):
        # keras-hub's drop paths rise from a rate of 0, at which they return their inputs
        return not any(_is_zero(getattr(layer, rate, None)) for rate in ("rate", "drop_prob"))
    owns_generator = bool(getattr(layer, "_seed_generators", ()))
    return owns_generator and any(isinstance(r, (int, float)) and r > 0 for r in rates)


def _is_zero(rate: object) -> bool:
    return isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate == 0


def _unbuilt_dropout(layer: Any) -> bool:
    """A layer with a ``dropout`` above 0 whose dropout layers do not exist yet because it is not
    built: Keras' ``MultiHeadAttention`` and ``GroupedQueryAttention`` make theirs in ``build``,
    and so do layers that make every sublayer there (keras-hub's ``TransformerEncoder``). A layer
    that draws with a seed generator of its own is judged by :func:`_draws_its_own` instead."""
    rate = getattr(layer, "dropout", 0)
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate <= 0 or layer.built:
        return False
    if getattr(layer, "_seed_generators", ()):
        return False
    attention = (keras.layers.MultiHeadAttention, keras.layers.GroupQueryAttention)
    return isinstance(layer, attention) or not layer._flatten_layers(
        include_self=False, recursive=False
    )


def _swap(
    layer: Any, target: type, arguments: dict[str, Any], seed: int, data_parallel: str | None
) -> None:
    """Make ``layer`` (an instance of Keras' layer) the xdrop layer ``target`` in place: the same
    object, so every reference to it (attributes, lists, a functional graph's nodes, torch's
    module tree) now reaches xdrop's layer. The new state is that of a freshly built
    ``target(**arguments, seed=seed, data_parallel=data_parallel)`` with the layer's name and
    dtype; what Keras holds about the layer's place in the graph is kept."""
    fresh = target(
        **arguments,
        seed=seed,
        data_parallel=data_parallel,
        name=layer.name,
        dtype=layer.dtype_policy,
    )
    state = dict(vars(fresh))
    old = vars(layer)
    for attribute in _KEPT:
        if attribute in old:
            state[attribute] = old[attribute]
    old.clear()
    old.update(state)
    layer.__class__ = target


def _check_rename(rename: object) -> Callable[[str], str] | None:
    if rename is not None and not callable(rename):
        raise bad_type("rename", rename, "a function from a layer's name to a site's name, or None")
    return rename


def convert(
    model: Any,
    *,
    seed: int,
    strict: bool = False,
    rename: Callable[[str], str] | None = None,
    data_parallel: str | None = None,
) -> Any:
    """Make every dropout in a Keras 3 model portable, seeded and resumable, in place; returns
    ``model``.

    Each layer of ``keras.layers`` ``Dropout``, ``SpatialDropout1D/2D/3D``, ``GaussianDropout``,
    ``AlphaDropout`` and ``GaussianNoise`` anywhere inside ``model`` (the layers of a Sequential
    or functional model, a subclassed model's attributes, nested layers and models, the dropout
    inside ``keras.layers.MultiHeadAttention`` and its subclasses), or ``model`` itself, becomes
    the xdrop layer of the same name with the same arguments and the seed::

        xdrop.layers.common.site_seed(seed, rename(name))

    ``name`` is the layer's place in the model (see :func:`named_layers`: attributes by name, list
    items by index, the layers of a Sequential or functional model as ``layers.I``; ``""`` for
    ``model`` itself, which is checked as any layer inside it), so a site's
    stream depends neither on the order in which layers were made nor on Keras' layer names; its
    ``t``-th training call then returns what the xdrop layer's docstring says, e.g. for
    ``Dropout`` ``xdrop.dropout(x, rate, seed=xdrop.fold_in(site_seed, t))``. The layer stays
    the same Python object (its class changes), so functional graphs and the model's config stay
    valid; the model's compiled train, test and predict functions are dropped, to be traced again
    (those of a model holding ``model``, which this call cannot see, are not: convert the
    outermost model, or compile the one holding it again).
    Layers that already are xdrop's are left as they are, so converting twice changes nothing;
    converting again with another seed, which they would ignore, is refused where this process
    converted them (layers loaded from a file, or built by hand, are left as they are).

    A layer that draws dropout-like noise otherwise (a subclass of a layer listed above, a class
    with ``Dropout``, ``Noise``, ``DropPath``, ``DropBlock`` or ``StochasticDepth`` in its name
    that is not listed above, such as keras-hub's drop paths, or one that holds its own seed
    generator and a ``rate``, ``dropout`` or ``recurrent_dropout`` above 0, such as
    ``keras.layers.Attention`` or an ``LSTM``'s cell) is left as it is, with an
    :class:`xdrop.UnconvertedDropoutWarning` naming each (``model`` itself as ``<model>``); with
    ``strict=True`` an :class:`xdrop.UnconvertedDropoutError` names them and nothing changes.

    ``model.save("m.keras")`` stores every stream. ``keras.saving.load_model`` reloads a model
    whose converted layers all come back from its config (those of Sequential and functional
    models); models that make their layers in code (subclassed models, keras-hub's, the dropout
    in ``MultiHeadAttention``) come back with Keras' layers, and Keras refuses to load their
    streams into them: load those with :func:`load_model`.

    Args:
        model: a ``keras.layers.Layer`` (a model is one), built where it is or holds layers
            that make their dropout in ``build`` (``MultiHeadAttention``,
            ``GroupQueryAttention``). A bare dropout layer is converted in place too: the
            returned object is ``model``, now xdrop's layer.
        seed: an integer in ``[0, 2**64)``, the seed of the model's sites.
        strict: raise instead of warning about dropout-like layers left as they are.
        rename: a function from a layer's name to the name its site's seed is derived from
            (so that two implementations of one model can share streams); None: the name itself.
        data_parallel: how the converted layers draw among data-parallel replicas (the
            ``data_parallel`` of :class:`Dropout`): ``"per_rank"``, ``"global_batch"`` or None.

    Raises:
        xdrop.ArgumentTypeError: ``model`` is not a Keras layer, or another argument has a wrong
            type; xdrop.ArgumentValueError: a seed out of range, or not the one this process
            converted the model's layers with before, or ``rename`` giving two sites one name;
            xdrop.UnbuiltLayerError: a layer with dropout that makes its dropout layers
            in ``build`` (attention layers, keras-hub's blocks) is not built yet;
            xdrop.UnconvertedDropoutError: with ``strict=True``, as above.

    Example:
        >>> import keras
        >>> from xdrop.layers.common import site_seed
        >>> from xdrop.layers.keras import convert
        >>> layers = [keras.layers.Dense(4), keras.layers.Dropout(0.5)]
        >>> model = convert(keras.Sequential(layers), seed=0)
        >>> layer = model.layers[1]
        >>> type(layer).__module__, layer.seed == site_seed(0, "layers.1")
        ('xdrop.layers.keras', True)
    """
    if not isinstance(model, keras.layers.Layer):
        raise bad_type("model", model, "a Keras layer or model (keras.layers.Layer)")
    seed = check_natural("seed", seed, 64)
    strict = check_flag("strict", strict)
    rename = _check_rename(rename)
    data_parallel = common.check_data_parallel(data_parallel)
    # the model itself is judged as any layer in it (a bare Dropout is converted, an unbuilt
    # attention refused), named "" as torch's convert names its root: "<model>" in messages
    layers = [("", model), *named_layers(model)]
    unbuilt = [name or "<model>" for name, layer in layers if _unbuilt_dropout(layer)]
    if unbuilt:
        raise UnbuiltLayerError(
            "layers whose dropout is made when they are built, not built yet: "
            f"{', '.join(unbuilt)}; build "
            "the model first (call it on a batch, or model.build(input_shape)), then convert it"
        )
    unknown = [
        f"{name or '<model>'} ({type(layer).__name__})"
        for name, layer in layers
        if _draws_its_own(layer)
    ]
    if unknown and strict:
        raise UnconvertedDropoutError(
            f"dropout-like layers that xdrop cannot convert: {', '.join(unknown)}; replace them "
            "with xdrop's layers, or convert with strict=False to leave them as they are"
        )
    common.check_convert_seed(layers, seed)
    sites: dict[str, str] = {}
    plan = []
    for name, layer in layers:
        if type(layer) not in _CONVERTED:
            continue
        site = name if rename is None else rename(name)
        if not isinstance(site, str):
            raise bad_type(f"rename({name!r})", site, "a str, the name of the site")
        if site in sites:
            raise bad_value(
                "rename", rename, f"a function giving each site its own name ({sites[site]!r} "
                f"and {name!r} both give {site!r})"
            )  # fmt: skip
        sites[site] = name
        plan.append((layer, site))
    for layer, _ in plan:  # refused before any layer changes
        _CONVERTED[type(layer)][0]._check_data_parallel(data_parallel)
    with _scope_of(model):
        for layer, site in plan:
            target, arguments = _CONVERTED[type(layer)]
            _swap(layer, target, arguments(layer), common.site_seed(seed, site), data_parallel)
            common.CONVERT_SEEDS[layer] = seed
    if unknown:
        warnings.warn(
            f"dropout-like layers left as they are (their masks do not come from xdrop): "
            f"{', '.join(unknown)}",
            UnconvertedDropoutWarning,
            stacklevel=2,
        )
    if plan:
        _refresh(model)
    return model


def _scope_of(model: Any) -> contextlib.AbstractContextManager[Any]:
    """The scope of the ``tf.distribute`` strategy the model's variables were made under, where
    ``convert`` runs outside it: the streams are made there too, mirrored as the model's
    variables are (a plain variable would be advanced once by every replica)."""
    tf = sys.modules.get("tensorflow")
    if tf is None or tf.distribute.has_strategy():
        return contextlib.nullcontext()
    # a Keras variable's TensorFlow variable (.value) is a distributed one made under the
    # strategy; should Keras stop saying so, the streams are made as before, unmirrored
    for weight in model.weights:
        strategy = getattr(getattr(weight, "value", None), "distribute_strategy", None)
        if strategy is not None:
            return strategy.scope()  # type: ignore[no-any-return]
    return contextlib.nullcontext()


def _refresh(model: Any) -> None:
    """What the model derived from its layers before they changed: its compiled functions, and
    on the torch backend each layer's torch parameters (which hold the layers' variables)."""
    for cached in ("train_function", "test_function", "predict_function"):
        if getattr(model, cached, None) is not None:
            setattr(model, cached, None)
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if "_torch_params" in vars(layer):
            layer._track_variables()


def load_model(
    filepath: str | PathLike[str],
    *,
    custom_objects: dict[str, Any] | None = None,
    compile: bool = True,
    safe_mode: bool = True,
) -> Any:
    """Load a ``.keras`` file of a converted model, streams included, wherever the model comes
    back from its config with Keras' dropout layers (subclassed models, keras-hub's models, the
    dropout in ``MultiHeadAttention``), which ``keras.saving.load_model`` refuses: the model is
    made from the file's config (and compiled from it, unless ``compile=False``), converted with
    :func:`convert`, and then every weight, stream and optimizer variable is read from the file.
    Each stream continues from the file's seed and step: the loaded model draws at its next
    steps what the saved one would have.

    Args: as ``keras.saving.load_model``.

    Example:
        >>> model = load_model("converted.keras")  # doctest: +SKIP
    """
    with zipfile.ZipFile(filepath) as archive:
        config = json.loads(archive.read("config.json"))
    if not compile:
        config.pop("compile_config", None)
    model = keras.saving.deserialize_keras_object(
        config, custom_objects=custom_objects, safe_mode=safe_mode
    )
    # the seed is irrelevant: each stream's seed and step are read from the file next
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnconvertedDropoutWarning)
        convert(model, seed=0)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None and not optimizer.built and model.built:
        # a model built after it was compiled from the file (keras-hub's tasks) has an empty
        # optimizer, which Keras would leave without the file's slots (with only a warning)
        optimizer.build(model.trainable_variables)
    model.load_weights(filepath)
    for _, layer in [("", model), *named_layers(model)]:  # the file's streams, not seed 0's
        common.CONVERT_SEEDS.pop(layer, None)
    return model


# -- R-Dropout in fit ------------------------------------------------------------------------------
PREDICTS = ("logits", "probabilities", "binary_logits", "binary_probabilities", "values")
"""What a model wrapped by :class:`RDrop` outputs, which picks its consistency term."""

_CLASS_LOSSES = {
    "SparseCategoricalCrossentropy",
    "CategoricalCrossentropy",
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
}
_BINARY_LOSSES = {"BinaryCrossentropy", "binary_crossentropy"}
_VALUE_LOSSES = {
    "MeanSquaredError",
    "MeanAbsoluteError",
    "Huber",
    "LogCosh",
    "mean_squared_error",
    "mean_absolute_error",
    "huber",
    "log_cosh",
    "mse",
    "mae",
}


def _predicts_from_loss(loss: object) -> str:
    """What the model outputs, read from the loss ``compile`` was given: a categorical
    crossentropy's ``from_logits`` (Keras' default, and its string names, take probabilities), or
    a regression loss; anything else is refused, naming ``predicts``."""
    if isinstance(loss, str):
        name = loss
    elif isinstance(loss, keras.losses.Loss):
        name = type(loss).__name__
        config = loss.get_config()
        if name in _CLASS_LOSSES | _BINARY_LOSSES:
            if config.get("axis", -1) != -1:
                raise bad_value("loss", loss, "a crossentropy over the last axis (axis=-1)")
            kind = "logits" if config.get("from_logits") else "probabilities"
            return kind if name in _CLASS_LOSSES else f"binary_{kind}"
    else:  # a function, e.g. keras.losses.sparse_categorical_crossentropy (from_logits=False)
        name = getattr(loss, "__name__", "")
    if name in _CLASS_LOSSES:
        return "probabilities"
    if name in _BINARY_LOSSES:
        return "binary_probabilities"
    if name in _VALUE_LOSSES:
        return "values"
    raise bad_value(
        "loss",
        loss,
        "a loss RDrop can read the model's outputs from (a categorical or binary "
        "crossentropy, or a regression loss), or any loss with RDrop(model, predicts=...) naming the outputs: "
        + ", ".join(f'"{kind}"' for kind in PREDICTS),
    )


class _Consistency(keras.losses.Loss):
    """R-Dropout's consistency term between the passes, as a Keras loss of ``(pass2, pass1)``:
    ``Loss.__call__`` then weighs, masks and reduces it as the compiled loss is."""

    def __init__(self, predicts: str, reduction: str, name: str = "rdrop_consistency") -> None:
        super().__init__(name=name, reduction=reduction)
        self.predicts = predicts

    def call(self, y_true: Any, y_pred: Any) -> Any:
        """``y_true``: the second pass, or the second pass and the positions that count."""
        if isinstance(y_true, (tuple, list)):
            second, counted = y_true
            divergence = self.call(second, y_pred)
            # as Keras' sparse crossentropy marks its ignore_class: __call__ then leaves these
            # positions out with the model's own mask, and averages over the rest once
            set_keras_mask(divergence, keras.ops.cast(counted, "bool"))
            return divergence
        first, second = y_pred, y_true
        if self.predicts == "values":  # as Keras' mean squared error: a mean over the last axis
            return keras.ops.mean(keras.ops.square(keras.ops.subtract(first, second)), axis=-1)
        binary = self.predicts.startswith("binary_")
        if not binary and first.shape[-1] == 1:  # one class: the divergence would always be 0
            raise bad_value(
                "predicts",
                self.predicts,
                f'"binary_{self.predicts}" for a model with one output per position (a '
                "sigmoid), or outputs with a class axis of two or more",
            )
        if binary:  # each output is a Bernoulli distribution: two classes, P(1) = p
            first, second = _two_classes(first, self.predicts), _two_classes(second, self.predicts)
        elif self.predicts == "probabilities":  # clipped as Keras' crossentropies clip them
            first, second = _log_clipped(first), _log_clipped(second)
        divergence = xdrop.rdrop_kl(first, second, reduction="none")
        # as Keras' binary crossentropy: a mean over the last axis
        return keras.ops.mean(divergence, axis=-1) if binary else divergence


def _own(sample_weight: Any) -> Any:
    # a loss masks its weights in place on the torch backend (``sample_weight *= mask``, where
    # ignore_class or a Keras mask applies): each pass's loss gets weights of its own
    return None if sample_weight is None else keras.ops.copy(sample_weight)


def _log_clipped(probabilities: Any) -> Any:
    """``log p``, ``p`` clipped below at Keras' epsilon as its crossentropies clip it: logits
    whose softmax is ``p`` (for ``p`` that sums to 1)."""
    return keras.ops.log(keras.ops.clip(probabilities, keras.config.epsilon(), 1.0))


def _two_classes(outputs: Any, predicts: str) -> Any:
    """Sigmoid outputs as the logits of two classes ``(0, 1)`` along a new last axis: ``(0, z)``
    for a logit ``z`` (``softmax((0, z)) == (1 - sigmoid(z), sigmoid(z))``), ``log (1 - p, p)``
    for a probability ``p``."""
    if predicts == "binary_logits":
        return keras.ops.stack([keras.ops.zeros_like(outputs), outputs], axis=-1)
    return _log_clipped(keras.ops.stack([1.0 - outputs, outputs], axis=-1))


@keras.saving.register_keras_serializable(package="xdrop")
class RDrop(keras.Model):
    """Train any Keras 3 model with R-Dropout through ``compile`` and ``fit``.

    ``fit`` runs the wrapped ``model`` once on each batch doubled (``concat([x, x])``), so that
    its dropout draws two masks per sample, and minimises::

        loss(y, P1) + loss(y, P2) + alpha * consistency(P1, P2) + the model's own losses

    where ``loss`` is the one given to ``compile`` (each pass's, weighted, masked and reduced as
    Keras does) and ``consistency`` is, per position, reduced the same way:

    - class outputs: ``(KL(P1 || P2) + KL(P2 || P1)) / 2`` (:func:`xdrop.rdrop_kl`; for sigmoid
      outputs that of the two classes, averaged over the last axis), so that with
      a sparse categorical crossentropy the loss is R-Drop's
      ``NLL1 + NLL2 + alpha * KL_sym``, :func:`xdrop.rdrop_loss` with ``reduction="mean"``;
    - values (regression): the squared difference ``(p1 - p2)**2``, averaged over the last axis
      as Keras' mean squared error is, so that with ``loss="mse"`` the loss is
      :func:`xdrop.rdrop_regression_loss`.

    The loss ``fit`` reports is that total. The training metrics are those of the first pass;
    ``evaluate``, ``predict`` and calls without ``training=True`` run the wrapped model as it is
    (one pass). A call with ``training=True`` returns the doubled batch's output, both passes.

    Args:
        model: a Keras model (or layer) with one output, whose first axis is the batch.
        alpha: the weight of the consistency term, a real number ``>= 0``.
        predicts: what the model outputs: ``"logits"`` or ``"probabilities"`` over the last axis
            (a softmax); ``"binary_logits"`` or ``"binary_probabilities"`` (a sigmoid: each
            output is the distribution of two classes, as for a binary crossentropy); or
            ``"values"`` (regression). None (default): read from the loss given to ``compile``:
            a categorical or binary crossentropy's ``from_logits`` (their string names take
            probabilities, as in Keras), or a regression loss (mean squared or absolute error,
            Huber, log-cosh); any other loss needs ``predicts``.
        **kwargs: Keras model arguments (``name``).

    ``RDrop(model).save("m.keras")`` stores the wrapped model inside, with its xdrop layers'
    streams; ``keras.saving.load_model`` brings it back, and ``fit`` continues the streams.
    With xdrop's layers in the model (or after :func:`convert`), TensorFlow, JAX and torch give
    one loss history from one set of weights.

    Example:
        >>> import keras, numpy as np
        >>> from xdrop.layers.keras import Dropout, RDrop
        >>> model = keras.Sequential(
        ...     [keras.Input((4,)), Dropout(0.2, seed=0), keras.layers.Dense(3)]
        ... )
        >>> rdrop = RDrop(model, alpha=1.0)
        >>> loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        >>> rdrop.compile(optimizer="sgd", loss=loss)
        >>> x, y = np.ones((8, 4), "float32"), np.zeros(8, "int32")
        >>> history = rdrop.fit(x, y, batch_size=4, epochs=1, verbose=0)
        >>> model.layers[0].step  # two steps of fit, one draw each
        2
    """

    def __init__(
        self, model: Any, alpha: float = 1.0, predicts: str | None = None, **kwargs: Any
    ) -> None:
        if not isinstance(model, keras.layers.Layer):
            raise bad_type("model", model, "a Keras model or layer")
        super().__init__(**kwargs)
        self.model = model
        self.alpha = check_alpha(alpha)
        self.predicts = None if predicts is None else check_choice("predicts", predicts, PREDICTS)
        self._consistency: _Consistency | None = None
        self._consistency_of: object = None
        if getattr(model, "built", False):
            self.built = True

    def build(self, input_shape: Any = None) -> None:
        if not self.model.built:
            self.model.build(input_shape)
        self.built = True

    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if not training:
            return self.model(inputs, training=training)
        doubled = keras.tree.map_structure(lambda x: keras.ops.concatenate([x, x], axis=0), inputs)
        return self.model(doubled, training=True)

    def _consistency_term(self) -> _Consistency:
        """The consistency term for the loss ``compile`` was given (made again after a compile
        with another loss; the loss is Keras' compiled one, so that a saved model recompiles)."""
        loss = self.loss
        if self._consistency is None or self._consistency_of is not loss:
            predicts = self.predicts or _predicts_from_loss(loss)
            reduction = getattr(loss, "reduction", "sum_over_batch_size")
            self._consistency = _Consistency(predicts, reduction)
            self._consistency_of = loss
        return self._consistency

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        if isinstance(self.loss, (dict, list, tuple)) and _is_tensor(y_pred):
            # one output's loss in a dict or list: Keras' own error, about None, says not why
            allowed = "one loss, given alone (RDrop wraps a model of one output)"
            raise bad_value("loss", self.loss, allowed)
        if not training or self._compile_loss is None:
            return super().compute_loss(x, y, y_pred, sample_weight, training=training)
        if not _is_tensor(y_pred):
            raise bad_type(
                "the output of the model RDrop wraps",
                y_pred,
                "one tensor (RDrop wraps models with one output)",
            )
        first, second = _halves(y_pred)
        total = keras.ops.add(
            self._compile_loss(y, first, _own(sample_weight)),
            self._compile_loss(y, second, _own(sample_weight)),
        )
        if self.alpha:
            ignored = getattr(self.loss, "ignore_class", None)  # a sparse crossentropy's padding
            if ignored is not None:  # left out as that crossentropy leaves them out
                labels = keras.ops.reshape(y, keras.ops.shape(first)[:-1])
                second = (second, keras.ops.not_equal(labels, ignored))
            consistency = self._consistency_term()(second, first, sample_weight)
            total = keras.ops.add(total, keras.ops.multiply(consistency, self.alpha))
        for loss in self.losses:
            total = keras.ops.add(total, self._aggregate_additional_loss(loss))
        return total

    def compute_metrics(
        self, x: Any, y: Any, y_pred: Any, sample_weight: Any = None
    ) -> dict[str, Any]:
        # in fit, y_pred holds both passes: the metrics are the first pass's, as the R-Drop
        # authors' code reports the first pass's predictions
        batch = keras.ops.shape(next(t for t in keras.tree.flatten(x) if t is not None))[0]
        if _is_tensor(y_pred):
            y_pred = _first_rows(y_pred, batch)
        return super().compute_metrics(x, y, y_pred, sample_weight)  # type: ignore[no-any-return]

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"name": self.name, "trainable": self.trainable}
        config["model"] = keras.saving.serialize_keras_object(self.model)
        return {**config, "alpha": self.alpha, "predicts": self.predicts}

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> RDrop:
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)


def _is_tensor(value: Any) -> bool:
    return not isinstance(value, (dict, list, tuple)) and value is not None


def _halves(y: Any) -> tuple[Any, Any]:
    """The outputs of the two copies of the batch, each keeping its half of a Keras mask."""
    first, second = keras.ops.split(y, 2, axis=0)
    mask = get_keras_mask(y)
    if mask is not None:
        for half, part in zip((first, second), keras.ops.split(mask, 2, axis=0), strict=True):
            set_keras_mask(half, part)
    return first, second


def _first_rows(y: Any, count: Any) -> Any:
    """The first ``count`` rows of ``y`` (all of it where it has no more), with their mask."""
    rows = y[:count]
    mask = get_keras_mask(y)
    if mask is not None:
        set_keras_mask(rows, mask[:count])
    return rows
