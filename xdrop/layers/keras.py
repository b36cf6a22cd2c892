"""Keras 3 layers (JAX, TensorFlow and torch backends): ``Dropout``, ``SpatialDropout1D/2D/3D``
and the family ``AlphaDropout``, ``GaussianDropout``, ``DropPath``, ``DropBlock2D``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

import xdrop
from xdrop.errors import ArgumentTypeError
from xdrop.layers import common
from xdrop.validation import check_flag, check_mode

__all__ = [
    "AlphaDropout",
    "DropBlock2D",
    "DropPath",
    "Dropout",
    "GaussianDropout",
    "SpatialDropout1D",
    "SpatialDropout2D",
    "SpatialDropout3D",
    "set_mc_sampling",
]


@keras.saving.register_keras_serializable(package="xdrop")
class Dropout(common.DropoutDraws, keras.layers.Layer):
    """``keras.layers.Dropout`` with a seeded, portable mask stream saved with the model.

    On its ``t``-th call with ``training=True`` (``t = 0, 1, ...``) the layer returns exactly::

        xdrop.dropout(x, rate, seed=xdrop.fold_in(seed, t), mode=mode,
                      noise_shape=noise_shape)

    and then advances ``t``; other calls return ``xdrop.dropout(x, rate, training=False,
    mode=mode)`` (``x`` itself for ``mode="inverted"``) and leave ``t`` alone. The seed (two int32
    words ``(hi, lo)``, exact on every backend, JAX without x64 included) and ``t`` (int32, read
    modulo 2**32) are non-trainable variables, as Keras' ``SeedGenerator`` state is: a compiled
    train step advances ``t``, and ``model.save("m.keras")`` / ``save_weights`` store both, so a
    reloaded model continues the stream.

    Args:
        rate: the probability of zeroing an element, in ``[0, 1]``.
        noise_shape: the shape the mask is drawn at, broadcast to the input (entries 1, None or
            the input's size; see :func:`xdrop.dropout`). None: one decision per element.
        seed: an integer in ``[0, 2**64)``; ``None`` (default) draws one now from xdrop's global
            generator (reproducible after ``xdrop.manual_seed``). ``get_config`` holds the seed
            in use, so ``from_config`` rebuilds the same stream.
        mode: ``"inverted"`` (scale kept elements by ``1 / (1 - rate)`` in training) or
            ``"classic"`` (scale by ``1 - rate`` in evaluation).
        **kwargs: Keras layer arguments (``name``, ``dtype``).

    Example:
        >>> import keras, numpy as np, xdrop
        >>> from xdrop.layers.keras import Dropout
        >>> layer = Dropout(0.5, seed=0)
        >>> x = np.ones((2, 4), "float32")
        >>> y = layer(x, training=True)
        >>> expected = xdrop.dropout(x, 0.5, seed=xdrop.fold_in(0, 0))
        >>> same = (keras.ops.convert_to_numpy(y) == expected).all()
        >>> bool(same), int(layer.step.numpy())
        (True, 1)
    """

    def __init__(
        self,
        rate: float,
        noise_shape: Sequence[int | None] | None = None,
        seed: int | xdrop.Generator | None = None,
        mode: str = "inverted",
        **kwargs: Any,
    ) -> None:
        defaults = {"noise_shape": None, "mode": "inverted"}
        given = {"noise_shape": noise_shape, "mode": mode}
        for name in self._not_taken:  # a variant passes its **kwargs on to here
            if given[name] != defaults[name]:
                raise ArgumentTypeError(
                    f"{type(self).__name__} takes no {name!r} argument, got {given[name]!r}"
                )
        super().__init__(**kwargs)
        self.rate = self._check_rate("rate", rate)
        self.noise_shape = common.check_noise_shape_entries(noise_shape)
        self.mode = check_mode(mode)
        words = np.array(common.seed_words(common.initial_seed(seed)), np.uint32).view(np.int32)
        self.seed_words = self.add_weight(
            shape=(2,),
            dtype="int32",
            initializer=lambda shape, dtype: keras.ops.convert_to_tensor(words, dtype),
            trainable=False,
            name="seed",
        )
        self.step = self.add_weight(
            shape=(), dtype="int32", initializer="zeros", trainable=False, name="step"
        )
        self.supports_masking = True
        self._build_at_init()  # as keras.layers.Dropout: no weights depend on the input

    @property
    def seed(self) -> int:
        """The seed ``s`` of the stream, read from its variable."""
        high, low = keras.ops.convert_to_numpy(self.seed_words.value).astype(np.int64)
        return (common.unsigned(int(high), 32) << 32) | common.unsigned(int(low), 32)

    mc_sampling = False
    """Sample when not training too (Monte Carlo dropout); :func:`set_mc_sampling` sets it."""

    _axis_names = (
        "samples",
        "channels",
        {1: ("timesteps",), 2: ("rows", "cols"), 3: ("dim1", "dim2", "dim3")},
    )  # as Keras' documentation names them

    def call(self, inputs: Any, training: bool | None = False) -> Any:
        self._check_input_shape("inputs", inputs.shape)
        if not (training or self.mc_sampling):
            return self._evaluate(inputs, self.rate)
        step = self.step.value
        seed = xdrop.fold_in(_seed_array(self.seed_words.value), step)
        y = self._draw(inputs, self.rate, seed, self._noise_shape(inputs))
        self.step.assign(step + 1)
        return y

    def _noise_shape(self, inputs: Any) -> Sequence[int | None] | None:
        return self.noise_shape

    def compute_output_shape(self, input_shape: Any) -> Any:
        # Keras builds a model by calling each layer on symbolic inputs, which reach this method
        # and not call: a wrong rank is refused here, when the model is built, as an InputSpec
        # would refuse it, rather than at the first predict or fit.
        self._check_input_shape("inputs", input_shape)
        return input_shape

    _not_taken: tuple[str, ...] = ()
    """The arguments of :class:`Dropout` that a variant does not take: its config leaves them out."""

    def get_config(self) -> dict[str, Any]:
        config: dict[str, Any] = super().get_config()
        shared = dict(rate=self.rate, noise_shape=self.noise_shape, seed=self.seed, mode=self.mode)
        config.update((key, value) for key, value in shared.items() if key not in self._not_taken)
        return {**config, **self._own_config()}

    def _own_config(self) -> dict[str, Any]:
        """A variant's own arguments, added to the config after those it shares with Dropout."""
        return {}


def _seed_array(words: Any) -> Any:
    """The int32 words ``(hi, lo)`` as a seed array ``xdrop.fold_in`` takes: uint32[2], or on
    torch (whose Keras backend has no uint32) the 0-d int64 holding the seed's two's complement."""
    if keras.backend.backend() != "torch":
        return keras.ops.cast(words, "uint32")
    high, low = keras.ops.cast(words[0], "int64"), keras.ops.cast(words[1], "int64")
    return keras.ops.bitwise_or(
        keras.ops.left_shift(high, 32), keras.ops.bitwise_and(low, 0xFFFF_FFFF)
    )


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
    ``evaluate`` functions are dropped, so that they are traced again with the new setting.
    Returns the number of layers switched.

    Example:
        >>> model = keras.Sequential([keras.layers.Dense(4), Dropout(0.5, seed=0)])
        >>> set_mc_sampling(model)
        1
    """
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
