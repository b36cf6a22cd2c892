"""The Keras and Flax layers' data-parallel modes, in real replicas and processes.

Each engine runs in fresh processes started here: Keras on TensorFlow's ``MirroredStrategy``
over two logical CPU devices (``fit``, saving on two replicas and resuming on one, ``tf.function``
retraced and relaxed), and a Flax NNX model in two JAX processes joined by ``jax.distributed``
on 127.0.0.1 with gloo collectives, then in one process alone. The scripts under
``tests/distributed/`` hold the checks; each prints one line ending in ``ok``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_distributed import SCRIPTS, TIMEOUT, free_port, require, run_script

pytestmark = pytest.mark.backend_independent  # CI runs it once, not per backend


def test_keras_layers_on_two_tensorflow_replicas_per_rank_global_batch_and_resume(
    tmp_path: Path,
) -> None:
    require("tensorflow", "keras")
    assert run_script("keras_replicas.py", str(tmp_path)) == "keras on 2 replicas: ok"


def test_flax_layers_in_two_jax_processes_per_rank_global_batch_and_resume_in_one(
    tmp_path: Path,
) -> None:
    require("jax", "flax")
    environment = dict(os.environ, PYTHONWARNINGS="ignore")
    environment.pop("XDROP_BACKEND", None)
    port = str(free_port())
    script = str(SCRIPTS / "flax_processes.py")
    processes = [
        subprocess.Popen(
            [sys.executable, script, str(rank), port, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        for rank in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=TIMEOUT) for process in processes]
    finally:
        for process in processes:
            process.kill()
    for rank, (process, (out, err)) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, out[-3000:] + err[-6000:]
        assert out.strip().splitlines()[-1] == f"process {rank} of 2: ok", out
    assert run_script("flax_processes.py", "-1", "0", str(tmp_path)) == "one process: ok"
