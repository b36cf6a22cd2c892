"""The backend protocol's roles: what each backend implements, and what a missing role does."""

from __future__ import annotations

import numpy as np
import pytest

import xdrop
from xdrop import protocol, registry
from xdrop.protocol import (
    ArrayOps,
    FamilyOps,
    LossBackend,
    LossOps,
    NativeGenerator,
    RateOps,
    SeedArrays,
    Staging,
    WordArithmetic,
    require,
)

pytestmark = pytest.mark.backend_independent

ROLES = (
    WordArithmetic,
    ArrayOps,
    Staging,
    LossOps,
    RateOps,
    FamilyOps,
    SeedArrays,
    NativeGenerator,
)
EVERY_OPTIONAL_ROLE = (LossOps, RateOps, FamilyOps, SeedArrays, NativeGenerator)


def _own_names(role: type) -> set[str]:
    return {name for name in vars(role) if not name.startswith("_")}


def test_no_name_means_two_things_across_the_roles():
    for index, role in enumerate(ROLES):
        for other in ROLES[index + 1 :]:
            shared = _own_names(role) & _own_names(other)
            assert not shared, f"{role.__name__} and {other.__name__} both define {shared}"


@pytest.mark.parametrize(
    ("name", "lacks"),
    [("numpy", ()), ("torch", ()), ("tensorflow", ()), ("jax", ()),
     ("array_api", (NativeGenerator,))],
)  # fmt: skip
def test_the_built_in_backends_implement_every_optional_role_but_those_they_lack(name, lacks):
    backend_class = registry._backend_class(name)
    assert backend_class is not None
    for role in EVERY_OPTIONAL_ROLE:
        assert issubclass(backend_class, role) == (role not in lacks), role.__name__


def test_require_gives_the_backend_as_the_role_it_has():
    numpy_backend = registry.load("numpy")
    assert require(numpy_backend, LossBackend, "R-Dropout") is numpy_backend
    assert require(numpy_backend, SeedArrays, "a seed array") is numpy_backend


def test_a_missing_role_is_a_backend_error_and_not_implemented_naming_role_and_feature():
    array_api = registry.load("array_api")
    with pytest.raises(xdrop.RoleNotImplementedError) as raised:
        require(array_api, protocol.NativeBackend, 'rng="native"')
    assert str(raised.value) == (
        "the array_api backend does not implement xdrop.protocol.NativeGenerator, "
        'which rng="native" needs'
    )
    assert isinstance(raised.value, xdrop.BackendError)
    assert isinstance(raised.value, NotImplementedError)


boxed = pytest.importorskip(
    "xdrop_testplugin.boxed", reason="install tests/plugins/xdrop-testplugin"
)


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda x: xdrop.rdrop_kl(x, x), "xdrop.protocol.LossOps, which R-Dropout needs"),
     (lambda x: xdrop.gaussian_dropout(x, 0.5, seed=0),
      "xdrop.protocol.FamilyOps, which the dropout family needs"),
     (lambda x: xdrop.dropout(x, 0.5, seed=0, rng="native"),
      'xdrop.protocol.NativeGenerator, which rng="native" needs')],
)  # fmt: skip
def test_a_plugin_without_an_optional_role_says_which_role_a_call_needs(call, message):
    x = boxed.Boxed(np.ones((2, 3), np.float32))
    with pytest.raises(xdrop.RoleNotImplementedError, match="the boxed backend does not implement"):
        call(x)
    with pytest.raises(xdrop.RoleNotImplementedError) as raised:
        call(x)
    assert str(raised.value).endswith(message)


def test_a_plugin_with_only_the_required_roles_still_draws_portable_masks():
    x = boxed.Boxed(np.ones(64, np.float32))
    y = xdrop.dropout(x, 0.25, seed=5)
    assert np.array_equal(y.values, xdrop.dropout(np.ones(64, np.float32), 0.25, seed=5))
