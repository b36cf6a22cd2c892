"""What every framework's layer shares: the checks of its arguments, the seed it starts from, and
what each variant computes (:class:`DropoutDraws` and its subclasses). A framework's module adds
only the stream: the seed and the step held as the framework's state, advanced on each training
call. Imports no framework."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import numbers
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

import xdrop
from xdrop import api, seeds, sharding, spec
from xdrop.errors import Shown, bad_type, bad_value
from xdrop.protocol import FamilyBackend, SeedBackend, require
from xdrop.registry import backend_for
from xdrop.seeds import Generator, global_generator
from xdrop.typing import Mode
from xdrop.validation import (
    as_input_array,
    as_integer,
    check_choice,
    check_flag,
    check_float_dtype,
    check_noise_shape,
    check_seed,
    is_integer,
)


def check_layer_rate(argument: str, rate: object, interval: str = "[0, 1]") -> float:
    """A layer's rate as a float in ``[0, 1]``; errors name the layer's own argument (``p`` or
    ``rate``). A layer holds a Python number: it is part of the layer's configuration. A 0-d
    array holding a real number (``jnp.float32(0.1)``, ``torch.tensor(0.1)``), which the
    frameworks' own layers take, is read as its value. A variable (``keras.Variable``,
    ``tf.Variable``: anything with ``assign``) is refused: read once, its later values would be
    ignored silently."""
    if hasattr(rate, "assign"):
        raise bad_type(
            argument,
            Shown(f"<{type(rate).__name__}>", type(rate).__name__),
            "a real number in [0, 1], or a 0-d array holding one: a layer holds its rate as "
            "configuration, read once; for a rate that changes in training, call xdrop.dropout "
            "with the variable, which reads it at each call",
        )
    value = _host_real(rate)
    if value is None:
        raise bad_type(argument, rate, "a real number in [0, 1], or a 0-d array holding one")
    if not 0.0 <= value <= 1.0:  # NaN fails both comparisons
        raise bad_value(argument, rate, f"a real number in {interval}")
    return value


def _host_real(value: object) -> float | None:
    """``value`` as a float: a real number, or a 0-d real array on the host; None otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    dtype = str(getattr(value, "dtype", ""))  # float32, torch.bfloat16, <dtype: 'int64'>...
    if getattr(value, "ndim", None) != 0 or not ("float" in dtype or "int" in dtype):
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, RuntimeError):  # traced or symbolic: no value to read
        return None


def initial_seed(seed: object) -> int:
    """The seed ``s`` a layer starts from: ``seed`` itself, the next seed of an
    :class:`xdrop.Generator`, or, for ``None``, the next seed of xdrop's global generator."""
    if seed is None:
        return global_generator().next_seed()
    if isinstance(seed, Generator):
        return seed.next_seed()
    if as_integer(seed) is None:
        raise bad_type("seed", seed, "an integer in [0, 2**64), an xdrop.Generator or None")
    return check_seed(seed)


def step_seed(seed: Any, step: Any) -> Any:
    """The seed of a layer's step ``t``, for seed and step held as arrays of one framework:
    Threefry-2x32 of the seed's key at counter ``(t >> 32, t & 0xFFFFFFFF)``, ``t`` read as its
    unsigned two's complement.

    Below ``2**32`` the counter is ``(0, t)``, so this is exactly ``xdrop.fold_in(seed, t)``,
    the layers' contract. Above, the high word carries into the counter instead of being dropped:
    the stream never repeats within ``2**64`` steps (a signed int64 step that wraps past
    ``2**63 - 1`` keeps going on fresh counters), at the cost of one fold."""
    xp = backend_for(seed)
    arrays = require(xp, SeedBackend, "a layer's stream", "hold the seed in an integer array")
    high, low = arrays.seed_words(step)
    return arrays.seed_array(spec.threefry2x32(xp, arrays.seed_words(seed), (high, low)))


def site_seed(seed: int, name: str) -> int:
    """The seed of the dropout site ``name`` in a model converted with ``seed``: with ``(hi, lo)``
    the two big-endian 32-bit words of the first 8 bytes of BLAKE2b(``name`` in UTF-8),
    ``fold_in(fold_in(seed, hi), lo)``.

    A site's stream depends on its name alone, never on the order in which a model created its
    layers, and any framework derives the same seed for the same name: ``convert`` in PyTorch,
    Keras and Flax names each dropout after its place in the model.

    >>> site_seed(0, "encoder.dropout") != site_seed(0, "decoder.dropout")
    True
    """
    high, low = site_words(name)
    return spec.fold_in(spec.fold_in(seed, high), low)


CONVERT_SEEDS: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()
"""The seed each stream made by a framework's ``convert`` in this process was converted with
(Keras and Flax layers keep no model-wide seed, as torch's converted root does in a buffer)."""


def check_convert_seed(streams: Sequence[tuple[str, Any]], seed: int) -> None:
    """Refuse converting ``(name, stream)``s that an earlier ``convert`` made with another seed:
    converting again keeps every stream, so the new seed would silently be ignored. Streams made
    otherwise (built by hand, restored from a file) are not known here, and pass."""
    others = {
        name or "<model>": CONVERT_SEEDS[stream]
        for name, stream in streams
        if CONVERT_SEEDS.get(stream, seed) != seed
    }
    if others:
        held = next(iter(others.values()))
        raise bad_value(
            "seed",
            seed,
            f"{held}, the seed this model's converted layers ({', '.join(others)}) were converted "
            "with: converting again keeps every stream; for other streams, convert a new model",
        )


def site_words(name: str) -> tuple[int, int]:
    """The words :func:`site_seed` folds into the seed for the site ``name``: the two big-endian
    32-bit words of the first 8 bytes of BLAKE2b(``name`` in UTF-8), each in ``[0, 2**32)``."""
    digest = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    return seed_words(digest)


def seed_words(seed: int) -> tuple[int, int]:
    """The seed's two 32-bit words ``(hi, lo)``, each in ``[0, 2**32)``."""
    return seed >> 32, seed & 0xFFFF_FFFF


def signed(word: int, bits: int) -> int:
    """An unsigned ``bits``-bit value as the signed integer with the same bits."""
    return word - (1 << bits) if word >> (bits - 1) else word


def unsigned(value: int, bits: int) -> int:
    """A signed ``bits``-bit value as the unsigned integer with the same bits."""
    return value % (1 << bits)


def check_noise_shape_entries(noise_shape: object) -> tuple[int | None, ...] | None:
    """A layer's ``noise_shape``: None, or a sequence of positive integers and None (checked
    against each input's shape when the layer is called)."""
    allowed = "None or a sequence of entries, each 1, None or the size of the input there"
    if noise_shape is None:
        return None
    if not isinstance(noise_shape, Sequence) or isinstance(noise_shape, (str, bytes)):
        raise bad_type("noise_shape", noise_shape, allowed)
    if not all(entry is None or is_integer(entry) for entry in noise_shape):
        raise bad_type("noise_shape", noise_shape, allowed)
    if any(entry is not None and int(entry) < 1 for entry in noise_shape):
        raise bad_value("noise_shape", noise_shape, allowed)
    return tuple(None if entry is None else int(entry) for entry in noise_shape)


def check_shared_axes(argument: str, axes: tuple[int, ...], ndim: int) -> None:
    """Axes a layer shares one decision along (Flax's ``broadcast_dims``) must be axes of the
    input: taken modulo ``ndim`` an axis past the end would share along another one."""
    if not all(-ndim <= axis < ndim for axis in axes):
        raise bad_value(argument, axes, f"axes in [{-ndim}, {ndim}) of the {ndim}-d inputs")


def spatial_noise_shape(ndim: int, shared: Sequence[int]) -> tuple[int | None, ...]:
    """A noise shape of ``ndim`` entries: 1 (one decision shared) on the ``shared`` axes, None
    (the input's size) elsewhere."""
    axes = {axis % ndim for axis in shared}
    return tuple(1 if axis in axes else None for axis in range(ndim))


def check_gaussian_rate(argument: str, rate: object) -> float:
    """A Gaussian dropout layer's rate: in ``[0, 1)`` (``1`` has infinite variance)."""
    value = check_layer_rate(argument, rate, "[0, 1)")
    if value == 1:
        raise bad_value(argument, rate, "a real number in [0, 1) (1 has infinite variance)")
    return value


def check_drop_path_options(mode: object, scale_by_keep: object) -> tuple[str, bool]:
    """A DropPath layer's ``mode`` (``"row"`` or ``"batch"``) and ``scale_by_keep`` flag."""
    return check_choice("mode", mode, ("row", "batch")), check_flag("scale_by_keep", scale_by_keep)


def check_block_size(block_size: object) -> int:
    value = as_integer(block_size)
    if value is None:
        raise bad_type("block_size", block_size, "a positive integer")
    if value < 1:
        raise bad_value("block_size", block_size, "a positive integer")
    return value


def check_data_format(data_format: object, default: str | None = None) -> str:
    """``"channels_first"`` or ``"channels_last"``; None stands for ``default`` where the layer
    has one (Keras' layers: ``keras.config.image_data_format()``) and is refused otherwise."""
    allowed = '"channels_first" or "channels_last"'
    if data_format is None and default is not None:
        return default
    if default is not None:
        allowed = f"None, {allowed}"
    return check_choice("data_format", data_format, ("channels_first", "channels_last"), allowed)


DATA_PARALLEL_MODES = ("per_rank", "global_batch")
"""The values of a layer's ``data_parallel`` argument besides None (see ``docs/distributed.md``)."""


def check_data_parallel(data_parallel: object) -> str | None:
    """A layer's ``data_parallel``: None, ``"per_rank"`` or ``"global_batch"``."""
    if data_parallel is None:
        return None
    allowed = 'None, "per_rank" or "global_batch"'
    return check_choice("data_parallel", data_parallel, DATA_PARALLEL_MODES, allowed)


def data_parallel_mode(data_parallel: str | None, world: int) -> str | None:
    """How a call draws on a data-parallel group of ``world`` ranks: None (as one process: one
    rank, whatever the argument), ``"per_rank"`` (also for ``data_parallel=None`` on several
    ranks, so that no two ranks draw one mask for their different examples) or
    ``"global_batch"``.

    >>> data_parallel_mode(None, 2), data_parallel_mode("global_batch", 1)
    ('per_rank', None)
    """
    if world <= 1:
        return None
    return data_parallel or "per_rank"


def batch_rows(sizes: Sequence[int], rank: int) -> tuple[int, int]:
    """``(start, total)``: where the local batch of ``rank`` starts in the global batch that
    puts the ranks' local batches (of ``sizes[r]`` rows each) one after the other in rank
    order, and the global batch's size. Equal sizes ``B`` give ``(rank * B, len(sizes) * B)``;
    an uneven last batch is placed the same way, after the rows of the ranks before it.

    >>> batch_rows([4, 4], 1), batch_rows([4, 3, 2], 2)
    ((4, 8), (7, 9))
    """
    return sum(sizes[:rank]), sum(sizes)


def placed_mask(
    shape: Sequence[int | None], noise_shape: Sequence[int | None] | None
) -> tuple[tuple[int | None, ...], bool]:
    """What a Block offset places for an input of ``shape`` drawn with ``noise_shape``: the
    mask's shape (the noise shape completed against ``shape``, its entries aligned to the right
    as :func:`xdrop.dropout` aligns them), and whether the mask holds one decision along the
    batch axis (axis 0), which is then the global batch's on every rank.

    >>> placed_mask((8, 3, 4), (None, 1))
    ((1, 3, 1), True)
    """
    if noise_shape is None:
        return tuple(shape), False
    mask = check_noise_shape(noise_shape, tuple(shape))
    padded = (1,) * (len(shape) - len(noise_shape)) + tuple(noise_shape)
    return mask, bool(padded) and padded[0] == 1


def batch_block(
    shape: Sequence[int], start: int, total: int, noise_shape: Sequence[int | None] | None = None
) -> int | xdrop.Block:
    """The ``offset`` of a local batch of ``shape`` whose rows start at row ``start`` of a global
    batch of ``total`` rows (axis 0): an :class:`xdrop.Block` giving each element the counter it
    has in the global tensor. With a ``noise_shape`` the Block places the mask
    (:func:`placed_mask`); one shared over the batch axis is the same on every rank: 0.

    >>> batch_block((2, 3), 2, 4)
    Block(global_shape=(4, 3), start=(2, 0), offset=0)
    """
    mask, shares_batch = placed_mask(shape, noise_shape)
    return 0 if shares_batch else global_batch_block(mask, start, total)


class DropoutDraws:
    """What a ``Dropout`` layer computes, in every framework: the training output for one step's
    seed (:meth:`_draw`) and the evaluation output (:meth:`_evaluate`). A framework's ``Dropout``
    inherits this and adds the stream; each variant below overrides what it computes otherwise."""

    mode: Mode

    _check_rate: Callable[[str, object], float] = staticmethod(check_layer_rate)
    """Checks the layer's rate at construction: ``(argument name, rate) -> float``."""

    _axis_names: tuple[str, str, dict[int, tuple[str, ...]]] = (
        "N",
        "C",
        {1: ("L",), 2: ("H", "W"), 3: ("D", "H", "W")},
    )
    """How the framework names the axes of feature maps in its errors: the batch axis, the
    channel axis, and the spatial axes of each rank (Keras' layers use Keras' own names)."""

    def _check_input_shape(self, argument: str, shape: Sequence[int | None]) -> None:
        """An :class:`~xdrop.errors.ArgumentValueError` naming ``argument`` (the input) unless
        an input of ``shape`` has a rank the layer takes. Every framework's layer checks each
        call, drawing or not: a wrong rank that passed evaluation would only fail later, in
        training (the frameworks' own layers refuse it in evaluation too); Keras' also checks
        the symbolic input a model is built on."""
        allowed = self._ranks_allowed(len(shape))
        if allowed is not None:
            shown = Shown(f"<tensor of shape {tuple(shape)}>")
            raise bad_value(argument, shown, allowed)

    def _ranks_allowed(self, ndim: int) -> str | None:
        """None where the layer takes inputs of ``ndim`` axes; otherwise the ranks it takes, in
        words. Plain dropout takes any rank."""
        return None

    def _check_floating(self, argument: str, inputs: Any) -> None:
        """An :class:`~xdrop.errors.ArgumentTypeError` naming ``argument`` unless ``inputs`` is
        floating, checked each call before the stream advances (the draw would refuse it only
        after its step, or an ``rngs`` key, was spent). Evaluation refuses it too, where the
        frameworks' own layers pass integers through: a model that feeds integers to a dropout
        would evaluate, then fail at its first training step."""
        xp = backend_for(inputs)
        check_float_dtype(xp, as_input_array(xp, inputs, argument), argument)

    def _feature_map(self, spatial: int, data_format: str) -> str:
        """What a layer of feature maps with ``spatial`` spatial axes takes, e.g. ``"a 4-d tensor
        (N, C, H, W)"``, named as the framework names the axes."""
        batch, channels, names = self._axis_names
        axes = (channels, *names[spatial])
        if data_format == "channels_last":
            axes = (*names[spatial], channels)
        return f"a {spatial + 2}-d tensor ({', '.join((batch, *axes))})"

    def _draw(self, inputs: Any, rate: float, seed: Any, noise_shape: Any, offset: Any = 0) -> Any:
        """The training output for the step's seed; ``offset``: an :class:`xdrop.Block` where
        the inputs are a block of a larger batch (see :func:`batch_block`)."""
        return xdrop.dropout(
            inputs, rate, seed=seed, mode=self.mode, noise_shape=noise_shape, offset=offset
        )

    def _evaluate(self, inputs: Any, rate: float) -> Any:
        return xdrop.dropout(inputs, rate, training=False, mode=self.mode)

    _global_batch_refused: str | None = None
    """Why the variant cannot draw in ``data_parallel="global_batch"`` (None: it can)."""

    @classmethod
    def _check_data_parallel(cls, data_parallel: object) -> str | None:
        """``data_parallel`` checked for this variant."""
        mode = check_data_parallel(data_parallel)
        if mode == "global_batch" and cls._global_batch_refused is not None:
            allowed = f'"per_rank" or None for {cls.__name__} ({cls._global_batch_refused})'
            raise bad_value("data_parallel", mode, allowed)
        return mode


class FamilyDraws(DropoutDraws):
    """A member of the dropout family: no ``mode``, and evaluation returns the inputs."""

    def _evaluate(self, inputs: Any, rate: float) -> Any:
        return inputs


class AlphaDropoutDraws(FamilyDraws):
    """:func:`xdrop.alpha_dropout`: dropout that keeps SELU activations' mean and variance."""

    def _draw(self, inputs: Any, rate: float, seed: Any, noise_shape: Any, offset: Any = 0) -> Any:
        return xdrop.alpha_dropout(inputs, rate, seed=seed, noise_shape=noise_shape, offset=offset)


class GaussianDropoutDraws(FamilyDraws):
    """:func:`xdrop.gaussian_dropout`: multiplicative noise; the rate is below 1."""

    _check_rate = staticmethod(check_gaussian_rate)

    def _draw(self, inputs: Any, rate: float, seed: Any, noise_shape: Any, offset: Any = 0) -> Any:
        return xdrop.gaussian_dropout(
            inputs, rate, seed=seed, noise_shape=noise_shape, offset=offset
        )


class DropPathDraws(FamilyDraws):
    """:func:`xdrop.drop_path`: one draw per sample (``path_mode="row"``) or one per batch."""

    path_mode: str
    scale_by_keep: bool

    def _ranks_allowed(self, ndim: int) -> str | None:
        if self.path_mode == "row" and ndim == 0:
            return 'a tensor with a batch axis for mode="row"'
        return None

    def _draw(self, inputs: Any, rate: float, seed: Any, noise_shape: Any, offset: Any = 0) -> Any:
        return xdrop.drop_path(
            inputs,
            rate,
            seed=seed,
            mode=self.path_mode,
            scale_by_keep=self.scale_by_keep,
            offset=offset,
        )


class DropBlock2DDraws(FamilyDraws):
    """:func:`xdrop.drop_block`: drops square (``spatial_dims = 3``: cubic) blocks of
    ``block_size`` of each feature map. The class attributes are the function's defaults; a
    layer that takes timm's or torchvision's arguments sets them on the instance."""

    _global_batch_refused = "each rank would draw the whole global batch's corners"

    block_size: int
    data_format: str
    spatial_dims = 2
    couple_channels = False
    scale_by_keep = True
    with_noise = False
    gamma_scale = 1.0
    eps = 0.0

    def _ranks_allowed(self, ndim: int) -> str | None:
        spatial = self.spatial_dims
        return None if ndim == spatial + 2 else self._feature_map(spatial, self.data_format)

    def _draw(self, inputs: Any, rate: float, seed: Any, noise_shape: Any, offset: Any = 0) -> Any:
        return xdrop.drop_block(
            inputs,
            rate,
            self.block_size,
            data_format=self.data_format,
            couple_channels=self.couple_channels,
            scale_by_keep=self.scale_by_keep,
            with_noise=self.with_noise,
            gamma_scale=self.gamma_scale,
            eps=self.eps,
            seed=seed,
            offset=offset,
        )


def check_gamma_scale(gamma_scale: object) -> float:
    """timm's ``gamma_scale``: a finite real number above 0 that multiplies DropBlock's gamma."""
    allowed = "a finite real number above 0"
    if isinstance(gamma_scale, (bool, np.bool_)) or not isinstance(gamma_scale, numbers.Real):
        raise bad_type("gamma_scale", gamma_scale, allowed)
    value = float(gamma_scale)
    if not (np.isfinite(value) and value > 0):
        raise bad_value("gamma_scale", gamma_scale, allowed)
    return value


def check_eps(eps: object) -> float:
    """torchvision's ``eps``: a finite real number at least 0 added to DropBlock's kept count."""
    allowed = "a finite real number at least 0"
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, numbers.Real):
        raise bad_type("eps", eps, allowed)
    value = float(eps)
    if not (np.isfinite(value) and value >= 0):
        raise bad_value("eps", eps, allowed)
    return value


def layer_rate(p: object, drop_prob: object, default: float) -> tuple[object, str]:
    """The rate a torch drop layer was given, as torchvision spells it (``p``) or timm
    (``drop_prob``), and which: ``"torchvision"`` for ``p``, ``"timm"`` for ``drop_prob`` or
    neither (then ``default``). Both is an error: one of them would be ignored."""
    if p is not None and drop_prob is not None:
        raise bad_value(
            "drop_prob", drop_prob, f"None when p is given (p={p!r}): the rate is p or drop_prob"
        )
    if drop_prob is not None:
        return drop_prob, "timm"
    if p is not None:
        return p, "torchvision"
    return default, "timm"


def gaussian_noise(x: Any, stddev: float, seed: Any) -> Any:
    """Additive Gaussian noise: ``x + dtype(float32(stddev) * z)``, with ``z`` the float32 standard
    normals of the specification ("Normals") that :func:`xdrop.gaussian_dropout` draws for the same
    seed, one per element of ``x``. ``stddev == 0`` returns ``x``."""
    xp = backend_for(x)
    x = as_input_array(xp, x)
    dtype = check_float_dtype(xp, x)
    family = require(xp, FamilyBackend, "GaussianNoise in training")
    resolved = api.resolve_seed(family, seed, "portable", x)
    if stddev == 0:
        return x
    assert resolved is not None  # portable seeds are host integers or key words
    key = seeds.key_of(resolved, family, x)
    z = spec.normals(family, key, tuple(family.runtime_shape(x)), 0, like=x)
    noise = family.multiply(z, spec.rounded(stddev, "float32"))
    return family.add(x, noise if dtype == "float32" else family.astype(noise, dtype))


class GaussianNoiseDraws(FamilyDraws):
    """Additive zero-centred Gaussian noise of standard deviation ``stddev`` (held as the rate:
    a real number in ``[0, 1]``, as Keras' ``GaussianNoise`` takes it)."""

    _global_batch_refused = "its normals take no offset"

    def _draw(self, inputs: Any, rate: float, seed: Any, noise_shape: Any, offset: Any = 0) -> Any:
        return gaussian_noise(inputs, rate, seed)


# -- Data-parallel placement of the Keras and Flax layers -------------------------------------------


def global_batch_block(
    mask_shape: Sequence[int | None], first: Any, rows: int | None
) -> sharding.Block:
    """The :class:`xdrop.Block` of a rank's mask in ``"global_batch"`` mode: the rank's local
    batch (axis 0 of a mask of ``mask_shape``) is rows ``[first, first + B)`` of a global batch of
    ``rows`` rows, so each element draws the counter it has in the global mask. ``first`` may be
    a 0-d integer array (traced).

    ``rows`` None (unknown where the layer is traced) places the mask in the tallest logical
    tensor whose counters fit: axis 0 is outermost in row-major order, so the counters of its
    first rows are those of the global batch's, whatever the number of rows. The other axes must
    be known."""
    if any(size is None for size in mask_shape[1:]):
        allowed = (
            f'"per_rank" or None for a mask of shape {tuple(mask_shape)}, whose axes after the '
            'batch axis are known only at run time ("global_batch" places each row by the sizes '
            "of the others)"
        )
        raise bad_value("data_parallel", "global_batch", allowed)
    rest = tuple(int(size) for size in mask_shape[1:])  # type: ignore[arg-type]
    row = math.prod(rest)
    if rows is None:
        rows = min(sharding.AXIS_LIMIT - 1, spec.SEED_COUNT // max(row, 1))
    return sharding.Block((rows, *rest), (first, *(0,) * len(rest)))


def even_rows(rank: Any, world: int, batch: int | None) -> tuple[Any, int | None]:
    """Where a rank's ``batch`` rows lie in the global batch when every rank holds as many:
    from row ``rank * batch``, of ``world * batch`` rows (None where ``batch`` is unknown)."""
    if batch is None:
        raise bad_value(
            "data_parallel",
            "global_batch",
            '"per_rank" or None for inputs whose batch size is known only at run time',
        )
    return rank * batch, world * batch


@dataclasses.dataclass(frozen=True)
class Ranks:
    """The data-parallel ranks a layer's call runs among: its ``rank`` (an integer, or a 0-d
    integer array such as a replica id in a graph), the ``world`` size, and ``rows``: for the
    local mask's shape (its batch of ``B`` rows first, None where unknown), the global row it
    starts at and the global batch's row count (None where unknown); :func:`even_rows` unless
    the framework can ask the other ranks."""

    rank: Any = 0
    world: int = 1
    rows: Callable[[Sequence[int | None]], tuple[Any, int | None]] | None = None

    def place(
        self,
        data_parallel: str | None,
        seed: Any,
        mask_shape: Sequence[int | None],
        shares_batch: bool = False,
    ) -> tuple[Any, Any]:
        """The seed and the offset a training call draws with, in the mode
        :func:`data_parallel_mode` gives: ``(seed, 0)`` as one process draws;
        ``(xdrop.fold_in(seed, rank), 0)`` in ``"per_rank"`` mode; in ``"global_batch"``
        mode ``seed`` and the :func:`global_batch_block` of a mask of ``mask_shape``, or
        ``(seed, 0)`` where the mask ``shares_batch`` (one decision along the batch axis: the
        global batch's, on every rank)."""
        mode = data_parallel_mode(data_parallel, self.world)
        if mode is None:
            return seed, 0
        if mode == "per_rank":
            return xdrop.fold_in(seed, self.rank), 0
        if not mask_shape:
            shown = Shown("<inputs of shape ()>")
            allowed = 'a batched input (the batch on axis 0) for data_parallel="global_batch"'
            raise bad_value("inputs", shown, allowed)
        if shares_batch:
            return seed, 0
        if self.rows is None:
            first, rows = even_rows(self.rank, self.world, mask_shape[0])
        else:
            first, rows = self.rows(mask_shape)
        return seed, global_batch_block(mask_shape, first, rows)


def process_ranks(inputs: Any) -> Ranks:
    """The ranks of a JAX call: ``jax.process_index()`` among ``jax.process_count()`` for
    ``inputs`` local to this process; one rank (no fold-in, no Block) for an array that spans
    the devices of several processes (a global ``jax.Array``, or its tracer under ``jit``, whose
    sharding's mesh is larger than this process's devices): its mask already is the global
    tensor's."""
    import jax

    if jax.process_count() == 1:
        return Ranks()
    if isinstance(inputs, jax.Array) and not isinstance(inputs, jax.core.Tracer):
        spans = not inputs.is_fully_addressable
    else:
        mesh = getattr(getattr(getattr(inputs, "aval", None), "sharding", None), "mesh", None)
        spans = mesh is not None and mesh.size > jax.local_device_count()
    if spans:
        return Ranks()
    return Ranks(jax.process_index(), jax.process_count())
