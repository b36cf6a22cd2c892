"""xdrop: dropout and R-Dropout, defined once, bit-identical on NumPy, PyTorch, TensorFlow and JAX."""

from xdrop.api import dropout, dropout_mask
from xdrop.errors import (
    ArgumentTypeError,
    ArgumentValueError,
    BackendError,
    BackendWarning,
    InPlaceError,
    InputRankError,
    InputRankWarning,
    RecomputationError,
    RoleNotImplementedError,
    TracingError,
    UnbuiltLayerError,
    UnconvertedDropoutError,
    UnconvertedDropoutWarning,
    XdropError,
    XdropWarning,
)
from xdrop.family import alpha_dropout, drop_block, drop_path, gaussian_dropout
from xdrop.mc import MCDropoutResult, mc_dropout
from xdrop.rdrop_api import rdrop_forward, rdrop_kl, rdrop_loss, rdrop_regression_loss
from xdrop.registry import get_backend, set_backend, use_backend
from xdrop.seeds import Generator, fold_in, get_rng, manual_seed, set_rng, use_rng
from xdrop.self_check import available_backends
from xdrop.sharding import Block, chunk_block, shard_map_block

__version__ = "0.1.0"

__all__ = [
    "ArgumentTypeError",
    "ArgumentValueError",
    "BackendError",
    "BackendWarning",
    "Block",
    "Generator",
    "InPlaceError",
    "InputRankError",
    "InputRankWarning",
    "MCDropoutResult",
    "RecomputationError",
    "RoleNotImplementedError",
    "TracingError",
    "UnbuiltLayerError",
    "UnconvertedDropoutError",
    "UnconvertedDropoutWarning",
    "XdropError",
    "XdropWarning",
    "alpha_dropout",
    "available_backends",
    "chunk_block",
    "drop_block",
    "drop_path",
    "dropout",
    "dropout_mask",
    "fold_in",
    "gaussian_dropout",
    "get_backend",
    "get_rng",
    "manual_seed",
    "mc_dropout",
    "rdrop_forward",
    "rdrop_kl",
    "rdrop_loss",
    "rdrop_regression_loss",
    "set_backend",
    "set_rng",
    "shard_map_block",
    "use_backend",
    "use_rng",
]
