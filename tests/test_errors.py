"""Bad input gets a clear error naming the argument, the value and what is allowed."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import xdrop
from xdrop.errors import ArgumentTypeError, ArgumentValueError, TracingError
from xdrop.validation import as_input_array


def raises(kind: type, *fragments: str):
    """Expect ``kind`` (an XdropError subclass) whose message contains every fragment."""

    class _Check:
        def __enter__(self):
            self.context = pytest.raises(kind)
            self.info = self.context.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.context.__exit__(*exc)
            assert isinstance(self.info.value, xdrop.XdropError)
            for fragment in fragments:
                assert fragment in str(self.info.value)
            return handled

    return _Check()


@pytest.fixture
def x(array):
    return array(np.ones((2, 3)))


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf"), 10**400, -(10**400)])
def test_p_outside_the_unit_interval(x, p):
    with raises(ValueError, "p must be a real number in [0, 1]", repr(p)):
        xdrop.dropout(x, p, seed=0)


@pytest.mark.parametrize("p", ["0.5", None, True, [0.5], 0.5j])
def test_p_that_is_not_a_real_number(x, p):
    with raises(TypeError, "p must be", repr(p)):
        xdrop.dropout(x, p, seed=0)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.complex64, np.uint8])
def test_non_floating_inputs(xp, dtype):
    # every backend makes these arrays: a conversion that fails is a bug to see, not a skip
    x = xp.asarray(np.ones(3, dtype))
    with raises(TypeError, "x must be an array of float16, bfloat16, float32 or float64"):
        xdrop.dropout(x, 0.5, seed=0)


def test_integer_python_lists(xp):
    with raises(TypeError, "x must be"):
        xdrop.dropout([1, 2, 3], 0.5, seed=0)


@pytest.mark.parametrize(
    ("noise_shape", "kind"),
    [
        ((2, 3, 1), ValueError),  # more dims than x
        ((2, 2), ValueError),  # 2 is neither 1 nor 3
        ((0, 3), ValueError),
        ((-1, 3), ValueError),
        (("2", 3), TypeError),
        ("23", TypeError),
        ((2.0, 3), TypeError),
        ((True, 3), TypeError),
        (5, TypeError),
    ],
)
def test_bad_noise_shapes(x, noise_shape, kind):
    with raises(kind, "noise_shape must be", "(2, 3)"):
        xdrop.dropout(x, 0.5, seed=0, noise_shape=noise_shape)


@pytest.mark.parametrize(
    ("mode", "kind"),
    [("Inverted", ValueError), ("paper", ValueError), (None, TypeError), (1, TypeError)],
)
def test_unknown_mode(x, mode, kind):
    with raises(kind, "mode must be one of", repr(mode)):
        xdrop.dropout(x, 0.5, seed=0, mode=mode)


@pytest.mark.parametrize(("seed", "kind"), [(-1, ValueError), (2**64, ValueError),
                                            (True, TypeError), (1.0, TypeError),
                                            ("7", TypeError), (np.float32(3), TypeError)])  # fmt: skip
@pytest.mark.parametrize("training", [True, False])
def test_bad_seeds(x, seed, kind, training):
    with raises(kind, "seed must be", repr(seed)):
        xdrop.dropout(x, 0.5, seed=seed, training=training)
    with raises(kind, "seed must be"):
        xdrop.dropout_mask((3,), 0.5, seed=seed)


def test_numpy_integer_seeds_are_accepted(x, host):
    a = host(xdrop.dropout(x, 0.5, seed=np.uint64(2**64 - 1)))
    b = host(xdrop.dropout(x, 0.5, seed=2**64 - 1))
    assert (a == b).all()


@pytest.mark.parametrize(("offset", "kind"), [(-1, ValueError), (2**64, ValueError),
                                              (1.5, TypeError), (False, TypeError)])  # fmt: skip
def test_bad_offsets(x, offset, kind):
    with raises(kind, "offset must be", repr(offset)):
        xdrop.dropout(x, 0.5, seed=0, offset=offset)


def test_counters_must_fit_in_64_bits(x):
    with raises(ValueError, "offset must be at most 2**64 - 6"):
        xdrop.dropout(x, 0.5, seed=0, offset=2**64 - 5)
    xdrop.dropout(x, 0.5, seed=0, offset=2**64 - 6)  # the last six counters: fine


@pytest.mark.parametrize("flag", ["training", "return_mask"])
def test_flags_must_be_booleans(x, flag):
    with raises(TypeError, f"{flag} must be True or False", "'yes'"):
        xdrop.dropout(x, 0.5, seed=0, **{flag: "yes"})


def test_an_inverted_scale_that_overflows_float16_is_refused(array):
    x = array(np.ones(4), "float16")
    with raises(ValueError, "p must be small enough that the inverted scale", "float16"):
        xdrop.dropout(x, 0.99999, seed=0)
    xdrop.dropout(x, 0.99999, seed=0, mode="classic")  # no scale: fine
    xdrop.dropout(x, 0.99999, training=False)  # eval is x itself: fine


@pytest.mark.parametrize(("shape", "kind"), [((-1, 2), ValueError), ((2.0,), TypeError),
                                             ("3", TypeError), (None, TypeError)])  # fmt: skip
def test_bad_mask_shapes(shape, kind):
    with raises(kind, "shape must be"):
        xdrop.dropout_mask(shape, 0.5, seed=0)


@pytest.mark.parametrize(("shape", "like"), [((None,), None), ((None, 3), None),
                                           ((None, 3), np.ones(3)), ((None,), np.ones((2, 3)))])  # fmt: skip
@pytest.mark.parametrize("rng", ["portable", "native"])
def test_a_mask_shape_with_none_needs_a_like_array_of_its_rank(shape, like, rng):
    with raises(ValueError, "shape must be", "or None beside a like array of its rank"):
        xdrop.dropout_mask(shape, 0.5, seed=0, like=like, rng=rng)


@pytest.mark.parametrize(("data", "kind"), [(-1, ValueError), (2**32, ValueError),
                                            (1.0, TypeError)])  # fmt: skip
def test_bad_fold_in_data(data, kind):
    with raises(kind, "data must be an integer in [0, 2**32)"):
        xdrop.fold_in(0, data)


@pytest.mark.parametrize("error_class", [ArgumentTypeError, ArgumentValueError, TracingError])
def test_argument_errors_keep_exception_init_for_tensorflow_autograph(error_class):
    assert error_class.__init__ is Exception.__init__
    assert issubclass(error_class, xdrop.XdropError)


def test_errors_can_be_caught_as_builtin_or_xdrop_errors(x):
    with pytest.raises(ValueError):
        xdrop.dropout(x, 2.0)
    with pytest.raises(xdrop.XdropError):
        xdrop.dropout(x, 2.0)


@pytest.mark.parametrize(
    ("shape", "reason"),
    [
        ((2**64 + 1,), "at most 2**64 elements"),
        ((2**33, 2**32), "at most 2**64 elements"),
        ((2**64,), "this machine's memory"),
        ((2**32, 2**32), "this machine's memory"),
        ((2**62,), "this machine's memory"),
        ((2**63,), "this machine's memory"),  # a dimension NumPy cannot even describe
    ],
)
def test_a_mask_too_large_to_make_is_refused_at_once_blaming_the_shape(shape, reason):
    # before: a list of chunks grew without end, or the size was blamed on `offset`
    with raises(ValueError, "shape must be", repr(shape), reason):
        xdrop.dropout_mask(shape, 0.5, seed=0)
    with raises(ValueError, "shape must be", reason):
        xdrop.dropout_mask(shape, 0.5, seed=0, offset=5)


def test_a_non_float_array_is_shown_with_its_dtype_shape_and_type(array):
    integers = array(np.ones(3), "int32")
    shown = f"got <int32 array of shape (3,)> of type {type(integers).__name__}"
    with raises(TypeError, "x must be an array of float16", "cast integers", shown) as info:
        xdrop.dropout(integers, 0.5, seed=0)
    assert "of type str" not in str(info.value)
    with raises(TypeError, "logits1 must be an array of float16", shown):
        xdrop.rdrop_loss(integers, integers, np.zeros((), np.int32))


def test_a_list_of_integers_is_shown_as_the_array_the_default_backend_made_from_it(xp):
    made = as_input_array(xp, [[1, 2], [3, 4]])  # NumPy's array, or XDROP_BACKEND's tensor
    shown = f"got <{xp.dtype_name(made)} array of shape (2, 2)> of type {type(made).__name__}"
    with raises(TypeError, "x must be an array of float16", shown):
        xdrop.dropout([[1, 2], [3, 4]], 0.5, seed=0)


@pytest.mark.parametrize("p", [np.array([0.3]), np.array(1), np.array([[0.5]], np.float32)])
def test_a_rate_array_of_the_wrong_shape_or_dtype_is_shown_with_its_own_type(x, p):
    with raises(TypeError, "p must be", f"got <{p.dtype} array of shape {p.shape}>") as info:
        xdrop.dropout(x, p, seed=0)
    assert str(info.value).endswith("of type ndarray")  # not the class that formats the message
    assert "Shown" not in str(info.value)


@pytest.mark.parametrize("x", [[[1.0], [1.0, 2.0]], [[1.0, 2.0], 3.0]])
def test_what_cannot_become_an_array_is_an_xdrop_error(x):
    with raises(TypeError, "x must be an array, or a rectangular nested list of numbers"):
        xdrop.dropout(x, 0.5, seed=0)


@pytest.mark.parametrize("name", [["numpy"], None, 3])
def test_a_backend_name_that_is_not_a_string_is_an_xdrop_error(name):
    with raises(TypeError, "backend name must be a str", repr(name)):
        xdrop.set_backend(name)
    with raises(TypeError, "backend name must be a str"):
        xdrop.use_backend(name).__enter__()


def test_sparse_torch_tensors_are_refused_with_an_xdrop_error():
    torch = pytest.importorskip("torch")
    for x in (torch.ones(3).to_sparse(), torch.ones(3, 3).to_sparse_csr()):
        for training in (True, False):
            with raises(TypeError, "x must be a dense array", "torch.sparse"):
                xdrop.dropout(x, 0.5, seed=0, training=training, mode="classic")


@pytest.mark.parametrize(
    ("x", "remedy"),
    [
        (np.ma.array([1.0, 2.0], mask=[0, 1]), "np.ma.getdata(x)"),
        (np.matrix([[1.0, 2.0]]), "np.asarray(x)"),
    ],
    ids=["masked array", "matrix"],
)
def test_numpy_subclasses_whose_meaning_the_output_would_drop_are_refused(x, remedy, tmp_path):
    # a masked array's mask (the masked values would leak into the output), a matrix's type;
    # a memmap is a plain array with a file behind it
    for call in (xdrop.dropout, xdrop.alpha_dropout):
        for training in (True, False):
            with raises(TypeError, "x must be a plain NumPy array", remedy, type(x).__name__):
                call(x, 0.5, seed=0, training=training)
    memmap = np.memmap(tmp_path / "x", np.float32, "w+", shape=(4,))
    with xdrop.use_backend("numpy"):
        assert type(xdrop.dropout(memmap, 0.5, seed=0)) is np.ndarray  # as memmap * 2 is


STRINGS = np.array(["inverted", "classic"])  # `in` on it compares element by element
LOGITS = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize(
    ("argument", "call"),
    [
        ("mode", lambda v: xdrop.dropout(np.ones(4), 0.5, seed=0, mode=v)),
        ("rng", lambda v: xdrop.dropout(np.ones(4), 0.5, seed=0, rng=v)),
        ("rng", lambda v: xdrop.dropout_mask(4, 0.5, seed=0, rng=v)),
        ("rng", lambda v: xdrop.alpha_dropout(np.ones(4), 0.5, seed=0, rng=v)),
        ("mode", lambda v: xdrop.drop_path(np.ones((2, 2)), 0.5, seed=0, mode=v)),
        ("data_format", lambda v: xdrop.drop_block(np.ones((1, 1, 4, 4)), 0.5, 2, data_format=v)),
        ("rng", xdrop.set_rng),
        ("rng", lambda v: xdrop.use_rng(v).__enter__()),
        ("reduction", lambda v: xdrop.rdrop_kl(LOGITS, LOGITS, reduction=v)),
    ],
)
@pytest.mark.parametrize("value", [STRINGS, 3, b"classic"])
def test_a_string_choice_that_is_not_a_str_is_a_type_error_naming_it(argument, call, value):
    # before: an array of strings raised NumPy's "truth value of an array ... is ambiguous"
    with raises(ArgumentTypeError, f"{argument} must be one of", "of type"):
        call(value)


FAMILY = {  # every public function with a training flag, and a shape it takes
    "dropout": (xdrop.dropout, (2, 3), {}),
    "alpha_dropout": (xdrop.alpha_dropout, (2, 3), {}),
    "gaussian_dropout": (xdrop.gaussian_dropout, (2, 3), {}),
    "drop_path": (xdrop.drop_path, (2, 3), {}),
    "drop_path unscaled": (xdrop.drop_path, (2, 3), {"scale_by_keep": False}),
    "drop_block": (xdrop.drop_block, (1, 2, 4, 4), {"block_size": 2}),
}
BAD_ARGUMENTS = {  # each argument of those functions, with values none of them takes
    "x": ["int32 array", "letters"],
    "p": [1.5, "0.5", np.array([0.1, 0.2])],
    "seed": [-1, 2**64, "s", np.array(1.5)],
    "mode": ["bogus", 3],
    "noise_shape": [(5, 7), "ab", (1, 1, 1, 1, 1)],
    "offset": [-1, 1.5, xdrop.Block((9,) * 5)],
    "return_mask": [3],
    "rng": ["bogus", 3],
    "scale_by_keep": [None],
    "block_size": [0, 1.5],
    "data_format": ["bogus"],
    "couple_channels": [None, 1],
    "with_noise": [None],
    "gamma_scale": [0, -1.0, float("nan"), "1", True],
    "eps": [-1e-6, float("inf"), "0", None],
}
CASES = [
    pytest.param(name, argument, value, id=f"{name}-{argument}-{index}")
    for name, (function, _, _) in FAMILY.items()
    for argument in inspect.signature(function).parameters
    if argument != "training"
    for index, value in enumerate(BAD_ARGUMENTS[argument])
]


@pytest.mark.parametrize(("name", "argument", "value"), CASES)
def test_every_argument_is_checked_alike_in_training_and_evaluation(
    xp, array, name, argument, value
):
    # before: drop_path(scale_by_keep=False) returned an integer x as it was in evaluation
    function, shape, fixed = FAMILY[name]
    x = array(np.ones(shape))
    if argument == "x":
        x = xp.asarray(np.ones(shape, np.int32)) if value == "int32 array" else value
    arguments = {"x": x, "p": 0.5, "seed": 0, **fixed}
    if argument != "x":
        arguments[argument] = value
    errors = []
    for training in (True, False):
        with pytest.raises(xdrop.XdropError) as info:
            function(**arguments, training=training)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]
    assert f"{argument} must be" in errors[0][1]


@pytest.mark.parametrize("training", [True, False])
def test_nested_torch_tensors_are_refused_with_an_xdrop_error(training):
    # before: "NestedTensorImpl doesn't support sizes", or an AttributeError for jagged ones
    torch = pytest.importorskip("torch")
    for layout in (torch.strided, torch.jagged):
        x = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)], layout=layout)
        for call in (xdrop.dropout, xdrop.alpha_dropout, xdrop.drop_path):
            with raises(TypeError, "x must be a dense array", "nested tensor", str(layout)):
                call(x, 0.5, seed=1, training=training)


@pytest.mark.parametrize("training", [True, False])
def test_a_seed_or_start_on_the_meta_device_beside_values_is_an_xdrop_error(training):
    # before: "Tensor.item() cannot be called on meta tensors", "Cannot copy out of meta tensor"
    torch = pytest.importorskip("torch")
    meta = torch.tensor(3, device="meta")
    with raises(ValueError, "seed must be a seed array whose value can be read", "no value"):
        xdrop.dropout(torch.ones(4), 0.5, seed=meta, training=training)
    with raises(ValueError, "seed must be", "on like's device"):
        xdrop.dropout_mask(4, 0.5, seed=meta, like=torch.ones(4))
    block = xdrop.Block((4, 6), (0, torch.tensor(2, device="meta")))
    with raises(ValueError, "start must be", "whose values can be read", "holds no value"):
        xdrop.dropout(torch.ones(4, 3), 0.5, seed=0, offset=block, training=training)
    # on the meta device with x, they are placeholders like x, which computes shapes alone
    y = xdrop.dropout(torch.ones(4, 3, device="meta"), 0.5, seed=meta, offset=block)
    assert y.shape == (4, 3) and y.device.type == "meta"


def test_dropout_mask_names_like_and_not_an_x_it_does_not_have():
    torch = pytest.importorskip("torch")
    block = xdrop.Block((4, 6), (0, torch.tensor(5)))
    with raises(ValueError, "offset must be a Block that holds like") as info:
        xdrop.dropout_mask((4, 3), 0.5, seed=0, like=torch.ones(1), offset=block)
    assert "holds x" not in str(info.value)
    with raises(TypeError, "p must be", "of like's framework") as info:
        xdrop.dropout_mask(4, np.array([0.3]), seed=0)
    assert "x's" not in str(info.value)


def test_a_seed_of_the_wrong_dtype_is_shown_once():
    # before: "... a JAX key (got dtype float64, shape ()), got array(1.5) of type ndarray"
    message = "got array(1.5) (dtype float64, shape ()) of type ndarray"
    with raises(TypeError, "seed must be", message) as info:
        xdrop.dropout(np.ones(3), 0.5, seed=np.array(1.5))
    assert str(info.value).count("got") == 1
