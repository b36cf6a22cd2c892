"""The backend protocol's roles: what each backend implements, and what a missing role does."""

from __future__ import annotations

import numpy as np
import pytest

import xdrop
from xdrop import protocol, registry, spec
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
        'which rng="native" needs; ' + protocol.EVERY_ROLE_ADVICE
    )
    assert isinstance(raised.value, xdrop.BackendError)
    assert isinstance(raised.value, NotImplementedError)


@pytest.fixture
def boxed():  # type: ignore[no-untyped-def]
    """The test plugin whose backend has the required roles and seed arrays only."""
    return pytest.importorskip("xdrop_testplugin.boxed")


@pytest.mark.parametrize(
    ("call", "message"),
    [(lambda x: xdrop.rdrop_kl(x, x), "xdrop.protocol.LossOps, which R-Dropout needs; "
      + protocol.EVERY_ROLE_ADVICE),
     (lambda x: xdrop.gaussian_dropout(x, 0.5, seed=0),
      "FamilyOps, which gaussian_dropout in training needs; " + protocol.EVERY_ROLE_ADVICE),
     (lambda x: xdrop.dropout(x, 0.5, seed=0, rng="native"),
      'xdrop.protocol.NativeGenerator, which rng="native" needs; use rng="portable"')],
)  # fmt: skip
def test_a_plugin_without_an_optional_role_says_which_role_a_call_needs(boxed, call, message):
    x = boxed.Boxed(np.ones((2, 3), np.float32))
    with pytest.raises(xdrop.RoleNotImplementedError, match="the boxed backend does not implement"):
        call(x)
    with pytest.raises(xdrop.RoleNotImplementedError) as raised:
        call(x)
    assert str(raised.value).endswith(message)


def test_a_plugin_without_the_optional_float_roles_still_draws_portable_masks(boxed):
    x = boxed.Boxed(np.ones(64, np.float32))
    y = xdrop.dropout(x, 0.25, seed=5)
    assert np.array_equal(y.values, xdrop.dropout(np.ones(64, np.float32), 0.25, seed=5))


def test_the_family_in_evaluation_and_drop_path_need_no_optional_role(boxed):
    x = boxed.Boxed(np.ones((4, 2), np.float32))
    for function in (xdrop.alpha_dropout, xdrop.gaussian_dropout):
        assert function(x, 0.5, training=False) is x
    y = xdrop.drop_path(x, 0.5, seed=0)
    assert np.array_equal(y.values, xdrop.drop_path(np.ones((4, 2), np.float32), 0.5, seed=0))


def test_a_rate_held_in_an_array_needs_the_rate_operations_and_says_what_to_do_instead(boxed):
    backend = boxed.BoxedBackend()
    with pytest.raises(xdrop.RoleNotImplementedError) as raised:
        spec.keep_probability(backend, boxed.Boxed(np.float32(0.25)))
    assert str(raised.value) == (
        "the boxed backend does not implement xdrop.protocol.LossOps, xdrop.protocol.RateOps, "
        "which a rate held in an array needs; pass p as a Python float"
    )
    assert spec.keep_probability(backend, 0.25) == 0.75
