"""PyTorch's data parallelism with xdrop's layers and converted models, in real processes.

``tests/distributed/torch_data_parallel.py`` holds the checks. Three fresh processes: one
process draws and trains over the global batch (the reference, without ``torch.distributed``);
``torchrun`` starts 2 ranks joined by gloo on 127.0.0.1 that check both data-parallel modes
under DDP with its default flags (and ``forward_sync_buffers``), FSDP2 (``fully_shard``) and
``convert``, and save a checkpoint; one process resumes that checkpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

pytestmark = pytest.mark.backend_independent  # the scripts pass torch's own tensors

SCRIPT = Path(__file__).resolve().parent / "distributed" / "torch_data_parallel.py"
TIMEOUT = 240  # seconds; each process takes well under a minute on two busy cores

if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        return int(listener.getsockname()[1])


def run(*command: str) -> str:
    environment = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    environment.pop("XDROP_BACKEND", None)
    if sys.platform == "linux":
        environment.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on loopback only
    result = subprocess.run(
        [sys.executable, *command],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-8000:]
    return result.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One process over the global batch: each layer's output, and the models trained 5 steps
    (with their state after step 3)."""
    path = tmp_path_factory.mktemp("data_parallel") / "reference.pt"
    assert run(str(SCRIPT), "reference", str(path)) == "reference: ok"
    return path


@pytest.fixture(scope="module")
def two_ranks(reference: Path) -> tuple[str, Path]:
    """The 2 ranks' run under torchrun: its last line, and the checkpoint it saved."""
    checkpoint = reference.parent / "two_ranks.pt"
    launcher = ["-m", "torch.distributed.run", "--nproc-per-node", "2"]
    launcher += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
    last = run(*launcher, str(SCRIPT), "ranks", str(reference), str(checkpoint))
    return last, checkpoint


def test_two_ranks_draw_documented_per_rank_and_global_batch_masks_and_train_as_one_process(
    two_ranks: tuple[str, Path],
) -> None:
    """Under DDP with default flags, forward_sync_buffers on and off: per-rank streams by the
    formula (no two ranks alike); global_batch layers, an uneven last batch and 3 steps under
    DDP and FSDP2 equal one process over the global batch; a checkpoint of one process resumes
    on 2 ranks; data-parallel groups and DTensors."""
    last, checkpoint = two_ranks
    assert last == "2 ranks: ok"
    assert checkpoint.is_file()


def test_checkpoint_of_two_ranks_resumes_on_one_process(
    reference: Path, two_ranks: tuple[str, Path]
) -> None:
    _, checkpoint = two_ranks
    assert run(str(SCRIPT), "resume", str(reference), str(checkpoint)) == "resume: ok"


# -- one process --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [None, "per_rank", "global_batch"])
def test_one_process_draws_as_without_the_argument(mode: str | None) -> None:
    from xdrop.layers.torch import Dropout, Dropout2d, DropPath

    x = torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    for make in (Dropout, Dropout2d, DropPath):
        plain, placed = make(0.5, seed=7), make(0.5, seed=7, data_parallel=mode)
        for _ in range(2):
            assert torch.equal(placed(x), plain(x))
        assert placed.data_parallel == mode


def test_convert_in_one_process_draws_as_without_the_argument() -> None:
    from xdrop.layers.torch import convert

    def model() -> torch.nn.Module:
        torch.manual_seed(0)
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.3, batch_first=True)
        return layer.train()

    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(1))
    plain = convert(model(), seed=3)
    placed = convert(model(), seed=3, data_parallel="global_batch")
    assert torch.equal(placed(x), plain(x))
    assert placed.dropout1.data_parallel == "global_batch"


def test_converting_again_sets_data_parallel_for_the_whole_model() -> None:
    from xdrop.layers.torch import convert

    layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.3, batch_first=True)
    model = convert(layer, seed=3, data_parallel="global_batch")
    first = model.dropout1
    model.extra = torch.nn.Dropout(0.1)  # added since: converted by the second call
    model = convert(model, seed=None, data_parallel="per_rank")
    assert model.dropout1 is first
    assert first.data_parallel == model.extra.data_parallel == "per_rank"
    hook = next(hook for hook in model._forward_pre_hooks.values() if getattr(hook, "root", False))
    assert hook.context.data_parallel.mode == "per_rank"  # the functional calls too


def test_bad_data_parallel_arguments_are_refused_naming_them() -> None:
    import xdrop
    from xdrop.layers.torch import Dropout, convert

    with pytest.raises(xdrop.ArgumentValueError, match=r"data_parallel.*per_rank"):
        Dropout(0.5, data_parallel="global")
    with pytest.raises(xdrop.ArgumentTypeError, match=r"data_parallel_group.*ProcessGroup"):
        Dropout(0.5, data_parallel_group="dp")
    with pytest.raises(xdrop.ArgumentValueError, match="data_parallel"):
        convert(torch.nn.Dropout(0.1), seed=0, data_parallel="rank")


def test_global_batch_rows_place_equal_and_uneven_batches_in_rank_order() -> None:
    import xdrop
    from xdrop.layers import common

    assert [common.batch_rows([4, 4], rank) for rank in (0, 1)] == [(0, 8), (4, 8)]
    assert [common.batch_rows([3, 2], rank) for rank in (0, 1)] == [(0, 5), (3, 5)]
    assert common.batch_block((2, 3), 4, 6) == xdrop.Block((6, 3), (4, 0))
    # a noise shape: the Block places the mask; one shared over the batch is every rank's
    assert common.batch_block((2, 3, 5), 2, 4, (None, None, 1)) == xdrop.Block((4, 3, 1), (2, 0, 0))
    assert common.batch_block((2, 3), 2, 4, (1, None)) == 0
    assert common.data_parallel_mode(None, 1) is None
    assert common.data_parallel_mode(None, 2) == "per_rank"
    assert common.data_parallel_mode("global_batch", 2) == "global_batch"


def test_a_pickled_layer_keeps_its_mode_and_leaves_its_group_behind() -> None:
    import copy
    import pickle

    from xdrop.layers.torch import Dropout

    layer = Dropout(0.5, seed=1, data_parallel="global_batch")
    for copied in (pickle.loads(pickle.dumps(layer)), copy.deepcopy(layer)):
        assert copied.data_parallel == "global_batch"
        assert copied._data_parallel.group is None
