"""Every code block of docs/distributed.md runs verbatim, each under the launcher it names.

A block is preceded by a marker line (blank lines between are fine) saying how it is run:

- ``<!-- launch: python -->``: one fresh process, ``python block.py``.
- ``<!-- launch: torchrun 2 -->``: ``python -m torch.distributed.run --nproc-per-node 2`` on
  127.0.0.1 (a free port), which sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
  ``MASTER_PORT``; the block joins with ``init_process_group`` (gloo on CPU). Each rank runs
  the block as ``__main__`` and then says it reached the block's end: a rank that torch's
  teardown aborts after that (``terminate called without an active exception`` at interpreter
  exit, now and then, with or without xdrop in the block) has run every line, and the launch is
  repeated once, which must then succeed.
- ``<!-- launch: jax-processes 2 -->``: 2 processes with ``JAX_COORDINATOR_ADDRESS`` (which
  ``jax.distributed.initialize`` reads), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` set.
- ``<!-- launch: tf-workers 2 -->``: 2 processes, each with the ``TF_CONFIG`` of one worker of
  a 2-worker cluster on 127.0.0.1, for ``MultiWorkerMirroredStrategy``.
- ``<!-- launch: none -->``: not a program (a shell line, a fragment); not run.

A block without a marker fails: the page may show no code that is not checked or said to be
unchecked. tests/test_docs.py also runs the ```python blocks marked ``python`` in its own
process; a block that must start in a fresh one (it configures TensorFlow's devices) is fenced
```py, which it leaves alone, as it leaves the blocks of the other launchers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.backend_independent  # CI runs it once, not per backend

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "distributed.md"
LAUNCHERS = ("python", "torchrun 2", "jax-processes 2", "tf-workers 2", "none")
TIMEOUT = 300  # seconds for one block's processes, on two busy cores
BLOCK_ENDED = "the block ran to its end on local rank {rank}"
TORCHRUN_RUNNER = f"""import os, runpy, sys
runpy.run_path(sys.argv[1], run_name="__main__")
print({BLOCK_ENDED!r}.format(rank=os.environ["LOCAL_RANK"]), flush=True)
"""
TEARDOWN_ABORT = "terminate called without an active exception"
TEARDOWN_RELAUNCHES = 3  # gloo's teardown on a loaded machine aborted two launches in a row
FRAMEWORKS = ("torch", "tensorflow", "jax")


def fenced_blocks(text: str) -> list[tuple[int, str, str, str | None]]:
    """``(line, fence language, code, launcher or None)`` of each fenced block of ``text``, the
    launcher read from the marker line before it (blank lines may stand between)."""
    blocks = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        opening = re.match(r"^(\s*)```(\S*)\s*$", lines[number])
        if not opening:
            number += 1
            continue
        end = number + 1
        while not lines[end].strip().startswith("```"):
            end += 1
        before = number - 1
        while before >= 0 and not lines[before].strip():
            before -= 1
        marker = re.match(r"^\s*<!-- launch: (.+?) -->\s*$", lines[before]) if before >= 0 else None
        code = "\n".join(line.removeprefix(opening.group(1)) for line in lines[number + 1 : end])
        blocks.append((number + 1, opening.group(2), code + "\n", marker and marker.group(1)))
        number = end + 1
    return blocks


BLOCKS = fenced_blocks(PAGE.read_text())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        return int(listener.getsockname()[1])


def environment() -> dict[str, str]:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    env.pop("XDROP_BACKEND", None)  # a block runs as a reader would run it
    if sys.platform == "linux":
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo on loopback only
    return env


def failures(commands: list[tuple[list[str], dict[str, str]]], cwd: Path) -> dict[str, str]:
    """Start every command at once (they join each other), wait for all, and return the whole
    output of each that failed, by what failed."""
    started = [
        subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for command, env in commands
    ]
    outputs = []
    try:
        for process in started:
            outputs.append(process.communicate(timeout=TIMEOUT)[0])
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return {
        f"process {index} exited {process.returncode}": output
        for index, (process, output) in enumerate(zip(started, outputs, strict=True))
        if process.returncode != 0
    }


def report(failed: dict[str, str]) -> str:
    return "\n".join(f"{what}:\n{output[-4000:]}" for what, output in failed.items())


def run_processes(commands: list[tuple[list[str], dict[str, str]]], cwd: Path) -> None:
    failed = failures(commands, cwd)
    assert not failed, report(failed)


def aborted_after_its_block(output: str) -> bool:
    """Whether torchrun's ``output`` shows only ranks that torch's teardown aborted after they
    had run the whole block."""
    aborted = re.findall(r"exitcode: -6\) local_rank: (\d+)", output)
    return (
        TEARDOWN_ABORT in output
        and bool(aborted)
        and all(BLOCK_ENDED.format(rank=rank) in output for rank in aborted)
    )


def run_torchrun(script: Path, env: dict[str, str]) -> None:
    runner = script.parent / "run_block.py"
    runner.write_text(TORCHRUN_RUNNER)

    def launched() -> dict[str, str]:
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
        torchrun += ["--master-addr", "127.0.0.1", "--master-port", str(free_port())]
        return failures([([*torchrun, str(runner), str(script)], env)], script.parent)

    failed = launched()
    for _ in range(TEARDOWN_RELAUNCHES):
        if not failed or not all(aborted_after_its_block(output) for output in failed.values()):
            break
        message = (
            f"torch's teardown aborted a rank after the block; launched again:\n{report(failed)}"
        )
        warnings.warn(message, stacklevel=2)
        failed = launched()
    assert not failed, report(failed)


def launch(launcher: str, script: Path) -> None:
    python = [sys.executable, str(script)]
    env = environment()
    if launcher == "python":
        run_processes([(python, env)], script.parent)
    elif launcher == "torchrun 2":
        run_torchrun(script, env)
    elif launcher == "jax-processes 2":
        coordinator = f"127.0.0.1:{free_port()}"
        run_processes(
            [
                (
                    python,
                    dict(
                        env,
                        JAX_COORDINATOR_ADDRESS=coordinator,
                        JAX_NUM_PROCESSES="2",
                        JAX_PROCESS_ID=str(index),
                    ),
                )
                for index in range(2)
            ],
            script.parent,
        )
    elif launcher == "tf-workers 2":
        workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
        run_processes(
            [
                (
                    python,
                    dict(
                        env,
                        TF_CONFIG=json.dumps(
                            {
                                "cluster": {"worker": workers},
                                "task": {"type": "worker", "index": index},
                            }
                        ),
                    ),
                )
                for index in range(2)
            ],
            script.parent,
        )
    else:
        raise AssertionError(f"unknown launcher {launcher!r}")


def test_every_block_says_how_it_is_launched() -> None:
    assert BLOCKS, "docs/distributed.md has no code blocks"
    unmarked = [line for line, _, _, launcher in BLOCKS if launcher is None]
    assert not unmarked, (
        f"docs/distributed.md: the blocks at lines {unmarked} have no <!-- launch: ... --> "
        f"marker before them (one of {LAUNCHERS})"
    )
    unknown = [(line, launcher) for line, _, _, launcher in BLOCKS if launcher not in LAUNCHERS]
    assert not unknown, f"unknown launchers {unknown}: use one of {LAUNCHERS}"
    # tests/test_docs.py runs ```python blocks in one process: a launched one would fail there
    doubled = [
        line
        for line, language, _, launcher in BLOCKS
        if language == "python" and launcher not in ("python", "none")
    ]
    assert not doubled, f"blocks at lines {doubled} need a launcher: fence them ```py"


def test_the_block_reader_finds_markers_and_unmarked_blocks() -> None:
    text = (
        "<!-- launch: torchrun 2 -->\n\n```py\nimport torch\n```\n"
        "text\n```bash\npip install xdrop\n```\n"
        "  <!-- launch: python -->\n  ```python\n  x = 1\n  ```\n"
    )
    assert fenced_blocks(text) == [
        (3, "py", "import torch\n", "torchrun 2"),
        (7, "bash", "pip install xdrop\n", None),
        (11, "python", "x = 1\n", "python"),
    ]


ABORTING_BLOCK = f"""import atexit, os, sys
from pathlib import Path

with open("launches", "a") as launches:
    launches.write(os.environ["LOCAL_RANK"])
if os.environ["LOCAL_RANK"] == "0" and not Path("aborted").exists():
    Path("aborted").touch()

    def abort() -> None:
        sys.stderr.write({TEARDOWN_ABORT!r} + "\\n")
        sys.stderr.flush()
        os.abort()

    atexit.register(abort){{}}
"""


def require_torchrun() -> None:
    torch = pytest.importorskip("torch")
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")


def test_a_rank_aborted_by_the_teardown_after_its_block_is_launched_again(tmp_path: Path) -> None:
    require_torchrun()
    script = tmp_path / "block.py"
    script.write_text(ABORTING_BLOCK.format(""))
    with pytest.warns(UserWarning, match="teardown aborted a rank after the block"):
        run_torchrun(script, environment())
    assert (tmp_path / "launches").read_text().count("0") == 2  # rank 0 ran in both launches


def test_a_rank_aborted_before_its_block_ended_fails_at_once(tmp_path: Path) -> None:
    require_torchrun()
    script = tmp_path / "block.py"
    script.write_text(ABORTING_BLOCK.format("\n    abort()"))
    with pytest.raises(AssertionError, match="exitcode: -6"):
        run_torchrun(script, environment())
    assert (tmp_path / "launches").read_text().count("0") == 1  # in one launch only


RUNNABLE = [block for block in BLOCKS if block[3] not in (None, "none")]


@pytest.mark.parametrize(
    ("line", "launcher", "code"),
    [(line, launcher, code) for line, _, code, launcher in RUNNABLE],
    ids=[f"line{line}-{launcher.replace(' ', '')}" for line, _, _, launcher in RUNNABLE],
)
def test_block_runs_verbatim_under_its_launcher(
    line: int, launcher: str, code: str, tmp_path: Path
) -> None:
    for framework in FRAMEWORKS:
        imported = re.search(rf"^(?:import|from) {framework}\b", code, flags=re.MULTILINE)
        if imported and importlib.util.find_spec(framework) is None:
            pytest.skip(f"{framework} is not installed")
    if launcher == "torchrun 2":
        require_torchrun()
    script = tmp_path / f"distributed_md_line_{line}.py"
    script.write_text(code)
    launch(launcher, script)
