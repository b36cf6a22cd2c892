"""User code that mypy checks (tests/test_typing.py): what the public signatures promise.

Never run, only type-checked: each ``assert_type`` states the type a call gives, and each line
marked ``# type: ignore[...]`` is a call the signatures must refuse (mypy reports an unused
ignore otherwise).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
import numpy.typing as npt
import torch
from typing_extensions import assert_type

import xdrop
from xdrop.typing import Mode

# -- dropout keeps the array type ------------------------------------------------------------------
t = torch.ones(2, 4)
assert_type(xdrop.dropout(t, 0.5, seed=0), torch.Tensor)
assert_type(xdrop.dropout(t, 0.5, seed=0, return_mask=True), tuple[torch.Tensor, torch.Tensor])
y, keep = xdrop.dropout(t, 0.5, seed=0, return_mask=True)
assert_type(keep, torch.Tensor)

j = jax.numpy.ones((2, 4))
assert_type(xdrop.dropout(j, 0.5, seed=jax.random.key(0)), jax.Array)
assert_type(xdrop.dropout(j, 0.5, return_mask=True), tuple[jax.Array, jax.Array])

a: npt.NDArray[np.float32] = np.ones((2, 4), np.float32)
assert_type(xdrop.dropout(a, 0.5, seed=0), npt.NDArray[np.float32])
y_np, keep_np = xdrop.dropout(a, 0.5, seed=0, return_mask=True)
assert_type(y_np, npt.NDArray[np.float32])
assert_type(keep_np, npt.NDArray[np.bool_])

# Python values run on the default backend, whose array type is not known statically
assert_type(xdrop.dropout([1.0, 2.0], 0.5, seed=0), Any)


# a flag known only at run time: the array, or the pair
def maybe_mask(x: torch.Tensor, flag: bool) -> None:
    assert_type(xdrop.dropout(x, 0.5, return_mask=flag), torch.Tensor | tuple[torch.Tensor, Any])


# -- literal arguments -----------------------------------------------------------------------------
mode: Mode = "classic"
xdrop.dropout(t, 0.5, mode=mode, rng="native")
xdrop.dropout(t, 0.5, mode="clasic")  # type: ignore[call-overload]
xdrop.dropout(t, 0.5, rng="numpy")  # type: ignore[call-overload]
xdrop.set_rng("portable")
xdrop.set_rng("fast")  # type: ignore[arg-type]

# -- masks -----------------------------------------------------------------------------------------
assert_type(xdrop.dropout_mask((2, 4), 0.5, seed=0, like=t), torch.Tensor)
assert_type(xdrop.dropout_mask((2, 4), 0.5, seed=0, like=j), jax.Array)
assert_type(xdrop.dropout_mask((2, 4), 0.5, seed=0, like=a), npt.NDArray[np.bool_])
assert_type(xdrop.dropout_mask((2, 4), 0.5, seed=0), Any)  # the default backend's

# -- R-Dropout -------------------------------------------------------------------------------------
labels = torch.tensor([0, 1])
assert_type(xdrop.rdrop_loss(t, t, labels, alpha=1.0), torch.Tensor)
assert_type(xdrop.rdrop_kl(j, j, reduction="none"), jax.Array)
xdrop.rdrop_kl(t, t, reduction="average")  # type: ignore[call-overload]
# NumPy reduces to a NumPy scalar; "none" keeps one value per position
assert_type(xdrop.rdrop_kl(a, a), np.floating[Any])
assert_type(xdrop.rdrop_kl(a, a, reduction="none"), npt.NDArray[np.floating[Any]])


def model(batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (batch,)


assert_type(
    xdrop.rdrop_forward(model, t), tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]
)
