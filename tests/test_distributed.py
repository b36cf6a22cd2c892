"""The same mask on one device or many, checked on real devices and processes.

Each engine runs in its own process, started here: JAX on 8 host devices (``XLA_FLAGS`` must be
set before JAX is imported), PyTorch as 2 and 4 ranks joined by gloo on 127.0.0.1, TensorFlow with
two logical CPU devices (set before TensorFlow initialises). The scripts under
``tests/distributed/`` hold the checks; each prints one line ending in ``ok``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from installed import skip_unless_installed

pytestmark = pytest.mark.backend_independent  # CI runs it once, not per backend

SCRIPTS = Path(__file__).resolve().parent / "distributed"
TIMEOUT = 300  # seconds; each script takes well under a minute on two busy cores


def run_script(name: str, *arguments: str) -> str:
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    environment.pop("XDROP_BACKEND", None)  # the scripts pass their framework's arrays
    if sys.platform == "linux":
        environment.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on loopback only
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *arguments],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=environment,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.endswith("ok"), result.stdout
    return last


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        return int(listener.getsockname()[1])


def test_jax_sharded_arrays_and_shard_map_on_8_host_devices() -> None:
    skip_unless_installed("jax")
    run_script("jax_devices.py")


@pytest.mark.parametrize("world_size", [2, 4])
def test_torch_dtensor_tensor_parallel_and_data_parallel_ranks(world_size: int) -> None:
    skip_unless_installed("torch")
    import torch.distributed

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    assert run_script("torch_ranks.py", str(world_size), str(free_port())) == (
        f"{world_size} ranks: ok"
    )


def test_torch_dtensor_compiled_family_and_tensor_parallel_plans_on_2_ranks() -> None:
    """DTensors under every torch.compile setting while the global shape changes, the dropout
    family and noise shapes of DTensors, the default tensor-parallel plans against the
    unsharded model, and Megatron-style slices: each rank's part of the one-process result."""
    skip_unless_installed("torch")
    import torch.distributed

    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    assert run_script("torch_compile_tp.py", str(free_port())) == "2 ranks: ok"


def test_tensorflow_mirrored_strategy_replicas() -> None:
    skip_unless_installed("tensorflow")
    run_script("tf_replicas.py")
