"""Seeds: integers, generators, the global generator and fold_in."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import xdrop
from xdrop import reference


def test_a_generator_yields_fold_in_of_its_seed_and_draw_count():
    generator = xdrop.Generator(42)
    assert [generator.next_seed() for _ in range(3)] == [xdrop.fold_in(42, k) for k in range(3)]
    assert generator.draws == 3


def test_a_generator_as_seed_gives_a_new_mask_each_call(array, host):
    x = array(np.ones(128))
    generator = xdrop.Generator(5)
    first, second = (host(xdrop.dropout(x, 0.5, seed=generator)) for _ in range(2))
    assert (first != second).any()
    assert (first == host(xdrop.dropout(x, 0.5, seed=xdrop.fold_in(5, 0)))).all()


def test_manual_seed_makes_seed_none_reproducible(array, host):
    x = array(np.ones(128))
    xdrop.manual_seed(7)
    run1 = [host(xdrop.dropout(x, 0.5)) for _ in range(3)]
    xdrop.manual_seed(7)
    run2 = [host(xdrop.dropout(x, 0.5)) for _ in range(3)]
    assert all((a == b).all() for a, b in zip(run1, run2, strict=True))
    assert (run1[0] != run1[1]).any()


def test_eval_draws_no_seed(array):
    generator = xdrop.Generator(1)
    xdrop.dropout(array(np.ones(3)), 0.5, training=False, seed=generator)
    assert generator.draws == 0


def test_every_training_call_draws_one_seed_whatever_p(array):
    generator = xdrop.Generator(1)
    for p in (0.0, 0.5, 1.0):
        xdrop.dropout(array(np.ones(3)), p, seed=generator)
    assert generator.draws == 3


def test_a_refused_call_draws_no_seed(array, host):
    x = array(np.ones(8), "float16")  # 1 / (1 - p) overflows float16 for this p
    generator = xdrop.Generator(1)
    xdrop.manual_seed(3)
    for seed in (generator, None):
        for refused in (xdrop.dropout, xdrop.drop_path):
            with pytest.raises(xdrop.ArgumentValueError, match="inverted scale"):
                refused(x, 0.99999, seed=seed)
    noisy = array(np.ones((1, 1, 4, 4)))  # its corners and normals need 32 counters
    with pytest.raises(xdrop.ArgumentValueError, match="offset"):
        xdrop.drop_block(noisy, 0.5, 2, seed=generator, with_noise=True, offset=2**64 - 20)
    assert generator.draws == 0
    after_refusals = host(xdrop.dropout(x, 0.5))
    xdrop.manual_seed(3)
    assert (after_refusals == host(xdrop.dropout(x, 0.5))).all()


def test_the_global_generator_is_thread_safe():
    generator = xdrop.manual_seed(3)

    def draw() -> None:
        for _ in range(200):
            xdrop.dropout_mask((1,), 0.5)

    threads = [threading.Thread(target=draw) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert generator.draws == 1600


def test_fold_in_is_the_reference_fold_in():
    for seed, data in ((0, 0), (2**64 - 1, 2**32 - 1), (123, 456)):
        assert xdrop.fold_in(seed, data) == reference.fold_in(seed, data)


def test_fold_in_gives_distinct_seeds_for_distinct_steps():
    assert len({xdrop.fold_in(9, step) for step in range(1000)}) == 1000


def test_generator_rejects_bad_seeds():
    with pytest.raises(xdrop.ArgumentValueError, match="seed must be"):
        xdrop.Generator(-1)
    for start in (xdrop.Generator, xdrop.manual_seed):  # an integer only: no generator, no None
        for seed in (xdrop.Generator(5), None):
            with pytest.raises(
                xdrop.ArgumentTypeError, match=r"seed must be an integer in \[0, 2\*\*64\), got"
            ):
                start(seed)
    with pytest.raises(xdrop.ArgumentTypeError, match=r'state\["seed"\] must be an integer'):
        xdrop.Generator(0).load_state_dict({"seed": "1", "draws": 0})


def test_set_rng_and_the_environment_choose_the_default_generator(monkeypatch):
    monkeypatch.delenv("XDROP_RNG", raising=False)
    assert xdrop.get_rng() == "portable"
    monkeypatch.setenv("XDROP_RNG", "native")
    assert xdrop.get_rng() == "native"
    xdrop.set_rng("portable")
    try:
        assert xdrop.get_rng() == "portable"
    finally:
        xdrop.set_rng(None)
    monkeypatch.setenv("XDROP_RNG", "fast")
    with pytest.raises(xdrop.ArgumentValueError, match="XDROP_RNG must be"):
        xdrop.get_rng()


def test_numpy_seed_arrays_are_host_seeds(array, host):
    x = array(np.ones(64))
    expected = host(xdrop.dropout(x, 0.5, seed=2**64 - 1))
    assert (host(xdrop.dropout(x, 0.5, seed=np.array(-1, np.int64))) == expected).all()
    assert (
        host(xdrop.dropout(x, 0.5, seed=np.array([2**32 - 1] * 2, np.uint32))) == expected
    ).all()
    with pytest.raises(xdrop.ArgumentTypeError, match="seed must be"):
        xdrop.dropout(x, 0.5, seed=np.array([1, 2, 3]))


# -- fork, pickling, checkpoints, use_rng -----------------------------------------------------------
FORK = """
import os, sys, numpy as np, xdrop
if {manual}:
    xdrop.manual_seed(3)
xdrop.dropout(np.ones(8, np.float32), 0.5)  # the parent draws before forking
masks = []
for _ in range(2):
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, xdrop.dropout_mask(256, 0.5).tobytes())
        os._exit(0)
    os.waitpid(pid, 0)
    masks.append(os.read(read, 256))
masks.append(xdrop.dropout_mask(256, 0.5).tobytes())
print(len(set(masks)))
"""


@pytest.mark.backend_independent  # the global generator; NumPy arrays, whatever XDROP_BACKEND says
@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
@pytest.mark.parametrize(("manual", "distinct"), [(False, 3), (True, 1)])
def test_forked_children_reseed_unless_manually_seeded(manual, distinct):
    import os
    import subprocess
    import sys

    # NumPy in the children: a framework's thread pool does not survive fork (PyTorch's hangs)
    env = {**os.environ, "XDROP_BACKEND": "numpy"}
    result = subprocess.run(
        [sys.executable, "-c", FORK.format(manual=manual)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    # OS-seeded: parent and both children draw different masks; manual_seed: the same stream
    assert result.stdout.strip() == str(distinct)


def test_a_generator_pickles_and_copies_with_its_position():
    import copy
    import pickle

    generator = xdrop.Generator(11)
    generator.next_seed()
    for twin in (pickle.loads(pickle.dumps(generator)), copy.deepcopy(generator)):
        assert twin.state_dict() == {"seed": 11, "draws": 1}
        assert twin.next_seed() == xdrop.fold_in(11, 1)
        assert twin._lock is not generator._lock
    assert generator.next_seed() == xdrop.fold_in(11, 1)  # the copies did not advance it


def test_state_dict_resumes_a_stream():
    generator = xdrop.Generator(2**64 - 1)
    for _ in range(5):
        generator.next_seed()
    resumed = xdrop.Generator(0)
    resumed.load_state_dict(generator.state_dict())
    assert [resumed.next_seed() for _ in range(3)] == [generator.next_seed() for _ in range(3)]


@pytest.mark.parametrize(
    ("state", "kind"),
    [
        ({"seed": 1}, TypeError),
        ({"seed": -1, "draws": 0}, ValueError),
        ({"seed": 1, "draws": 2**32 + 1}, ValueError),
        ({"seed": 1, "draws": 1.0}, ValueError),
        ([1, 0], TypeError),
    ],
)
def test_load_state_dict_refuses_what_state_dict_never_gives(state, kind):
    with pytest.raises(kind) as raised:
        xdrop.Generator(0).load_state_dict(state)
    assert isinstance(raised.value, xdrop.XdropError)


def test_use_rng_is_local_to_a_block_and_a_thread():
    seen = {}
    with xdrop.use_rng("native"):
        assert xdrop.get_rng() == "native"
        thread = threading.Thread(target=lambda: seen.update(thread=xdrop.get_rng()))
        thread.start()
        thread.join()
        with xdrop.use_rng("portable"):
            assert xdrop.get_rng() == "portable"
        assert xdrop.get_rng() == "native"
    assert xdrop.get_rng() == "portable" and seen == {"thread": "portable"}
    with pytest.raises(ValueError, match="rng must be one of"), xdrop.use_rng("fast"):
        pass


# -- one rule per kind of seed, on every backend ----------------------------------------------------
def test_integers_with_a_dtype_are_read_as_twos_complement_of_their_width(array, host):
    x = array(np.ones(64))
    expected = host(xdrop.dropout(x, 0.5, seed=2**64 - 1))
    for seed in (np.int64(-1), np.array(-1), np.array(-1, np.int64)):
        assert (host(xdrop.dropout(x, 0.5, seed=seed)) == expected).all(), repr(seed)
    assert xdrop.Generator(np.int64(-1)).seed == 2**64 - 1
    assert xdrop.Generator(np.int8(-1)).seed == 255
    with pytest.raises(ValueError, match="seed must be an integer in"):
        xdrop.dropout(x, 0.5, seed=-1)  # a Python int has no width


@pytest.mark.backend_independent
def test_fold_in_of_numpy_arrays_is_a_0d_int64_seed():
    with xdrop.use_backend("numpy"):  # NumPy arrays on the NumPy backend, whatever the default
        folded = xdrop.fold_in(np.array(5), np.array(3, np.uint32))
        assert isinstance(folded, np.ndarray) and folded.shape == () and folded.dtype == np.int64
        assert int(folded) % 2**64 == xdrop.fold_in(5, 3)
        assert (
            xdrop.dropout_mask(32, 0.5, seed=folded)
            == xdrop.dropout_mask(32, 0.5, seed=xdrop.fold_in(5, 3))
        ).all()


@pytest.mark.backend_independent
def test_a_seed_array_of_another_framework_is_refused_in_training_and_evaluation():
    torch = pytest.importorskip("torch")
    x = np.ones(3, np.float32)
    with xdrop.use_backend("numpy"):  # x runs on NumPy, so a torch seed is another framework's
        for training in (True, False):
            with pytest.raises(TypeError, match="seed must be"):
                xdrop.dropout(x, 0.5, seed=torch.tensor(1), training=training)


@pytest.mark.parametrize("like", ["abc", [1.0, 2.0], 3])
def test_like_must_be_an_array(like):
    with pytest.raises(TypeError, match="like must be None or an array"):
        xdrop.dropout_mask(4, 0.5, seed=0, like=like)
