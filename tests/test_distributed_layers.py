"""The Keras and Flax layers' data-parallel modes, in real replicas and processes.

Each engine runs in fresh processes started here: Keras on TensorFlow's ``MirroredStrategy``
over two logical CPU devices (``fit``, saving on two replicas and resuming on one, ``tf.function``
retraced and relaxed) and on two ``MultiWorkerMirroredStrategy`` workers, and a Flax NNX model in two JAX processes joined by ``jax.distributed``
on 127.0.0.1 with gloo collectives, then in one process alone. The scripts under
``tests/distributed/`` hold the checks; each prints one line ending in ``ok``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from installed import skip_unless_installed
from test_distributed import SCRIPTS, TIMEOUT, free_port, run_script

pytestmark = pytest.mark.backend_independent  # CI runs it once, not per backend


def test_keras_layers_on_two_tensorflow_replicas_per_rank_global_batch_and_resume(
    tmp_path: Path,
) -> None:
    skip_unless_installed("tensorflow", "keras")
    assert run_script("keras_replicas.py", str(tmp_path)) == "keras on 2 replicas: ok"


def run_processes(name: str, arguments: list[list[str]]) -> list[str]:
    """Run ``tests/distributed/<name>`` once per list of arguments, all at once (they join each
    other); each process's last line."""
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    environment.pop("XDROP_BACKEND", None)
    processes = [
        subprocess.Popen(
            [sys.executable, str(SCRIPTS / name), *given],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for given in arguments
    ]
    try:
        outputs = [process.communicate(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, out[-3000:] + err[-6000:]
    return [out.strip().splitlines()[-1] for out, _ in outputs]


def test_keras_layers_on_two_multi_worker_mirrored_strategy_workers() -> None:
    skip_unless_installed("tensorflow", "keras")
    ports = [str(free_port()), str(free_port())]
    lines = run_processes("keras_workers.py", [[str(rank), *ports] for rank in range(2)])
    assert lines == ["worker 0 of 2: ok", "worker 1 of 2: ok"]


def test_flax_layers_in_two_jax_processes_per_rank_global_batch_and_resume_in_one(
    tmp_path: Path,
) -> None:
    skip_unless_installed("jax", "flax")
    port = str(free_port())
    lines = run_processes("flax_processes.py", [[str(r), port, str(tmp_path)] for r in range(2)])
    assert lines == ["process 0 of 2: ok", "process 1 of 2: ok"]
    assert run_script("flax_processes.py", "-1", "0", str(tmp_path)) == "one process: ok"
