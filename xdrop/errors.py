"""The exceptions xdrop raises on purpose, all rooted in :class:`XdropError`, and the warnings it
emits, rooted in :class:`XdropWarning` (``docs/warnings.md`` lists each).

The argument errors also subclass the matching built-in, so ``except ValueError`` keeps working.
They restore ``Exception.__init__``: TensorFlow's autograph re-raises an exception from inside
``tf.function`` with its own type only when ``type(e).__init__ is Exception.__init__``; otherwise
the user sees a ``StagingError`` instead of ours.
"""

from __future__ import annotations


class XdropError(Exception):
    """Root of every error xdrop raises on purpose."""


class ArgumentValueError(XdropError, ValueError):
    """An argument has the right type but a value outside what is allowed."""


class ArgumentTypeError(XdropError, TypeError):
    """An argument has a type that is not allowed."""


class BackendError(XdropError, ValueError):
    """A backend is unknown, ambiguous, not installed or does not implement the protocol (a bad
    value of a backend's name, ``XDROP_BACKEND``, or of the installed plugins)."""


class RoleNotImplementedError(BackendError, NotImplementedError):
    """The backend does not implement an optional role of the protocol that a call needs (the
    loss operations for R-Dropout, seeds held in arrays...): :mod:`xdrop.protocol` lists them."""


class TracingError(XdropError, RuntimeError):
    """An operation cannot be staged into a compiled graph as asked (e.g. ``seed=None`` under jit)."""


class InputRankError(ArgumentValueError, RuntimeError):
    """A layer's input has a number of dimensions the layer does not take. Also a
    ``RuntimeError``: the type PyTorch's own layers raise for it (``except RuntimeError`` code
    written for ``torch.nn.Dropout1d`` keeps working)."""


class InPlaceError(XdropError, RuntimeError):
    """A layer built with ``inplace=True`` was asked to overwrite a tensor that autograd forbids
    overwriting (a leaf that requires grad, or a view of one), as ``torch.nn.Dropout`` refuses."""


class RecomputationError(XdropError, RuntimeError):
    """An xdrop layer was asked to draw during a backward pass: activation checkpointing
    (``torch.utils.checkpoint``, Hugging Face's ``gradient_checkpointing_enable``, timm's
    ``set_grad_checkpointing``) recomputes a forward there, and the layer's stream, which has
    advanced since, would draw another mask than the forward's, so the gradient would mix two
    masks. Refused rather than silently wrong, for xdrop's layers and for every draw of a model
    made portable by ``convert``."""


class TensorParallelError(XdropError, RuntimeError):
    """A plain tensor reached a dropout computed from the local shard of a sharded DTensor (a
    tensor-parallel layer's output with ``use_local_output=True``, the default of
    ``ColwiseParallel``, followed by other operations): a plain tensor carries no placement, so
    its mask would be drawn as if the shard were the whole tensor and would differ from the
    unsharded model's. Build the plan with ``use_local_output=False`` so that the dropout gets
    a DTensor, or pass ``offset=xdrop.Block(...)`` placing the shard yourself."""


class UnconvertedDropoutError(XdropError, ValueError):
    """``convert(model, strict=True)`` found dropout-like layers or modules it cannot make
    portable (a class it does not know whose name says dropout, drop path, drop block, stochastic
    depth or noise, a subclass of one it knows, or a layer that draws its own masks): their masks
    would still come from the framework's own generator. The message names each by its place in
    the model. PyTorch's ``convert`` also raises it where a converted model's submodule, called
    directly, draws a mask outside the model's forward, which has no stream of the model."""


class UnbuiltLayerError(XdropError):
    """``convert`` met a layer whose dropout does not exist yet because the layer is not built
    (Keras' ``MultiHeadAttention`` makes its dropout layer in ``build``): build the model first."""


class XdropWarning(UserWarning):
    """Root of every warning xdrop emits: ``warnings.filterwarnings("ignore", category=...)``
    with it silences them all."""


class InputRankWarning(XdropWarning):
    """A channel dropout layer got an input of a rank PyTorch's own layer takes with a deprecation
    warning (``Dropout2d`` on 3-d or 5-d inputs, ``Dropout3d`` on 6-d...): xdrop reads the input as
    torch does and says how, as torch does."""


class UnconvertedDropoutWarning(XdropWarning):
    """``convert`` left dropout-like layers or modules it cannot make portable as they are
    (their masks do not come from xdrop); the warning names each. ``strict=True`` raises
    :class:`UnconvertedDropoutError` instead."""


class BackendWarning(XdropWarning):
    """A backend was passed over: a plugin claims arrays that a built-in backend runs, and the
    built-in runs them unless the plugin is selected."""


for _mixed in (
    ArgumentValueError,
    ArgumentTypeError,
    BackendError,
    TracingError,
    InputRankError,
    InPlaceError,
    RecomputationError,
    TensorParallelError,
    UnconvertedDropoutError,
):
    _mixed.__init__ = Exception.__init__  # type: ignore[method-assign]


class Shown:
    """A value as an error message shows it, e.g. ``<array of int32>``, standing in for a value
    whose own ``repr`` would be too long or say too little. ``type_name`` is the type of the value
    it stands for, which :func:`bad_type` names (None: the text already says what it is)."""

    def __init__(self, text: str, type_name: str | None = None) -> None:
        self.text = text
        self.type_name = type_name

    def __repr__(self) -> str:
        return self.text


def describe(argument: str, value: object, allowed: str) -> str:
    """The one message shape for bad arguments: which argument, what it was, what is allowed."""
    return f"{argument} must be {allowed}, got {value!r}"


def bad_value(argument: str, value: object, allowed: str) -> ArgumentValueError:
    return ArgumentValueError(describe(argument, value, allowed))


def bad_type(argument: str, value: object, allowed: str) -> ArgumentTypeError:
    """A type error naming the type of the value (for a :class:`Shown`, of the value it shows)."""
    type_name = value.type_name if isinstance(value, Shown) else type(value).__name__
    suffix = "" if type_name is None else f" of type {type_name}"
    return ArgumentTypeError(describe(argument, value, allowed) + suffix)
