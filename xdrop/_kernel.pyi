# The compiled kernel (xdrop/_kernel.c); see its docstring and xdrop/kernel.py.
from typing_extensions import Buffer

def dropout(
    x: Buffer,
    y: Buffer,
    keep: Buffer | None,
    dtype: str,
    k0: int,
    k1: int,
    offset: int,
    threshold: int,
    factor: float | None,
    threads: int = 1,
    grain: int = 1,
    openmp: bool = False,
    /,
) -> None: ...
def torch_threading() -> str: ...

THREADING: str
MAX_THREADS: int
