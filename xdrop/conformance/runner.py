"""Run the golden cases through the public API on a backend and compare: bit for bit for dropout,
masks and seeds; to a floating-point tolerance for the R-Dropout losses.

Each case runs eagerly, and — in the ``compiled`` mode — inside the framework's compiler
(``jax.jit``, ``tf.function(jit_compile=True)``, ``torch.compile(fullgraph=True)``) with its seed
passed as a traced seed array. The ``runtime`` mode compiles them with the first axis of every
array known only at run time (``jax.export`` with a symbolic size, ``tf.function`` with a ``None``
size, ``torch.compile(dynamic=True)``) and the rate passed as a traced 0-d array. A backend's dropout cases go into one compiled function and its
R-Dropout cases into another, so the compiler runs twice per backend, not once per case; a backend
without the optional loss operations still has its dropout cases checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import xdrop
from xdrop import seeds, spec
from xdrop.conformance.golden import (
    RDROP_IGNORE_INDEX,
    input_values,
    load,
    rdrop_logits,
    rdrop_positions,
)
from xdrop.errors import BackendError, RoleNotImplementedError
from xdrop.protocol import Backend, SeedBackend, require
from xdrop.self_check import checked_backend

MODES = ("eager", "compiled", "runtime")
SCALAR_INPUTS = ("seed", "data", "p")
RDROP_KINDS = ("rdrop_kl", "rdrop_loss")
# (relative, absolute) tolerance of the R-Dropout cases, by the dtype the loss is computed in: a
# few float32 roundings per term of sums of at most 30 terms; float64 is held to the reference.
RDROP_TOLERANCE = {"float32": (1e-5, 1e-6), "float64": (1e-12, 1e-12)}


def sample(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few cases that between them show every feature a compiled graph could get wrong: each
    group and kind, each dtype, evaluation and training, both modes, the edge rates (0, 1, tiny,
    next to 1), noise shapes, offsets in the first block, across a multiple of 2**32 and far
    beyond, fold_in data with the high bit set. What a slow compiler checks by default.

    Chosen greedily, in file order: the case showing the most features not yet shown, until every
    feature is shown."""
    features = [_features(case) for case in cases]
    missing = set().union(*features) if features else set()
    chosen: list[int] = []
    while missing:
        best = max(range(len(cases)), key=lambda i: (len(features[i] & missing), -i))
        chosen.append(best)
        missing -= features[best]
    return [cases[i] for i in sorted(chosen)]


def _features(case: dict[str, Any]) -> set[tuple[str, Any]]:
    """What a case exercises, as ``(aspect, value)`` pairs."""
    kind = case["kind"]
    shown: set[tuple[str, Any]] = {("group", case["group"]), ("kind", kind)}
    if kind == "fold_in":
        return shown | {("data high bit", case["data"] >= 2**31)}
    if kind in RDROP_KINDS:
        return shown | {("loss dtype", case["dtype"])}
    if kind == "dropout":
        shown.add(("dtype", case["dtype"]))
    p, offset, count = case["p"], case["offset"], math.prod(case["shape"])
    rate = (
        "0" if p == 0 else "1" if p == 1 else "tiny" if p < 1e-6 else "next to 1" if p > 1 - 1e-6
        else "interior"
    )  # fmt: skip
    if offset == 0:
        place = "start"
    elif offset // spec.WORD_COUNT != (offset + max(count, 1) - 1) // spec.WORD_COUNT:
        place = "across 2**32"
    else:
        place = "first block" if offset < spec.WORD_COUNT else "beyond 2**32"
    shown |= {("rate", rate), ("offset", place)}
    if kind == "dropout":
        shown |= {("training", case["training"]), ("mode", case["mode"])}
        shown.add(("noise shape", case["noise_shape"] is not None))
    return shown


@dataclass
class CaseResult:
    case_id: str
    group: str
    status: str  # "passed", "failed" or "skipped"
    max_difference: float = 0.0
    detail: str = ""
    output: tuple[np.ndarray, ...] = ()  # what the backend returned, on the host


@dataclass
class BackendReport:
    backend: str
    available: bool
    mode: str = "eager"
    reason: str = ""
    results: list[CaseResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        return [result for result in self.results if result.status == "failed"]

    def groups(self) -> dict[str, dict[str, Any]]:
        """Per case group: counts of passed/failed/skipped cases and the largest difference."""
        summary: dict[str, dict[str, Any]] = {}
        for result in self.results:
            group = summary.setdefault(
                result.group, {"passed": 0, "failed": 0, "skipped": 0, "max_difference": 0.0}
            )
            group[result.status] += 1
            group["max_difference"] = max(group["max_difference"], result.max_difference)
        return summary


def run_backend(
    name: str,
    cases: Iterable[dict[str, Any]] | None = None,
    progress: Callable[[int, int], None] | None = None,
    mode: str = "eager",
    full: bool = False,
) -> BackendReport:
    """Every golden case (or ``cases``) on backend ``name``, ``"eager"`` or ``"compiled"``.

    A backend that ``compiles_slowly`` compiles each case on its own, and only a sample of the
    cases unless ``full``; other backends compile the dropout cases into one function and the
    R-Dropout cases into another."""
    try:
        xp = checked_backend(name)  # a plugin that fails its self-check is not available
    except BackendError as error:
        return BackendReport(name, available=False, mode=mode, reason=str(error))
    compiler = _compiler(xp, mode)
    if compiler is None:
        reason = "no compiler" if mode == "compiled" else "no compilation with run-time sizes"
        return BackendReport(name, available=True, mode=mode, reason=reason)
    selected = list(load()["cases"] if cases is None else cases)
    if mode != "eager" and xp.compiles_slowly and not full:
        selected = sample(selected)
    report = BackendReport(name, available=True, mode=mode)
    # IEEE overflow (x * s beyond the dtype's range) is part of what the cases check, not news
    with xdrop.use_backend(name), np.errstate(over="ignore", invalid="ignore"):
        runnable = []
        for case in selected:
            try:
                runnable.append((case, _inputs(xp, case, mode)))
            except (ImportError, TypeError, RoleNotImplementedError) as error:
                # a dtype the framework lacks, or an optional part of the protocol
                report.results.append(_result(case, "skipped", detail=str(error)))
        # outputs are made as they are compared, so that progress tells how far the run is
        outputs: Iterator[Any]
        if mode != "eager":
            runnable.sort(key=lambda pair: pair[0]["kind"] in RDROP_KINDS)
            outputs = (
                output
                for batch in _compile_batches(xp, runnable)
                for output in _run_compiled(
                    compiler, [case for case, _ in batch], [i for _, i in batch]
                )
            )
        else:
            outputs = (_call_or_error(case, inputs) for case, inputs in runnable)
        for done, ((case, _), output) in enumerate(zip(runnable, outputs, strict=True), 1):
            report.results.append(_compare(xp, case, output))
            if progress is not None:
                progress(done, len(runnable))
    return report


def _compiler(xp: Backend, mode: str) -> Callable[[Callable[..., Any]], Any] | None:
    """How ``mode`` runs a function on ``xp`` (None: it cannot)."""
    if mode == "eager":
        return lambda function: function
    if mode == "compiled":
        return None if type(xp).compile is Backend.compile else xp.compile
    if type(xp).compile_runtime_sizes is Backend.compile_runtime_sizes:
        return None
    return xp.compile_runtime_sizes


def _compile_batches(xp: Backend, runnable: list[Any]) -> list[list[Any]]:
    """The cases compiled together: one at a time for a slow compiler; else dropout and R-Dropout
    apart (the losses use optional operations whose absence must not fail the dropout cases)."""
    if xp.compiles_slowly:
        return [[pair] for pair in runnable]
    dropout = [pair for pair in runnable if pair[0]["kind"] not in RDROP_KINDS]
    losses = [pair for pair in runnable if pair[0]["kind"] in RDROP_KINDS]
    return [batch for batch in (dropout, losses) if batch]


def _inputs(xp: Backend, case: dict[str, Any], mode: str) -> dict[str, Any]:
    """The array arguments of a case (the compiled modes trace them; the rest of a case is
    static): compiled, its seed and data become arrays of ``xp`` too; with run-time sizes, its
    rate as well (a float64 array, or float32 where that holds it exactly)."""
    if case["kind"] in RDROP_KINDS:
        return _rdrop_inputs(xp, case)
    inputs: dict[str, Any] = {"seed": case["seed"]}
    if mode != "eager":
        arrays = require(xp, SeedBackend, *seeds.SEED_IN_AN_ARRAY)
        inputs["seed"] = arrays.seed_array(spec.key_words(xp, case["seed"]))
    if mode == "runtime" and case["kind"] in ("dropout", "mask"):
        dtype = "float64" if xp.has_float64() else "float32"
        if dtype == "float32" and float(np.float32(case["p"])) != case["p"]:
            raise TypeError(f"p = {case['p']!r} needs a float64 array, which {xp.name} lacks here")
        inputs["p"] = xp.asarray(np.float64(case["p"]), dtype)
    if case["kind"] == "fold_in":
        data = case["data"]
        inputs["data"] = xp.asarray(np.array(data, np.uint32)) if mode != "eager" else data
    elif case["kind"] == "dropout":
        shape = tuple(case["shape"])
        values = np.array(input_values(math.prod(shape)), np.float64).reshape(shape)
        inputs["x"] = xp.asarray(values, dtype=case["dtype"])
    return inputs


def _rdrop_inputs(xp: Backend, case: dict[str, Any]) -> dict[str, Any]:
    logits1, logits2 = rdrop_logits(case)
    labels, padded = rdrop_positions(case)
    inputs = {
        "logits1": xp.asarray(logits1, dtype=case["dtype"]),
        "logits2": xp.asarray(logits2, dtype=case["dtype"]),
    }
    if case["pad_every"]:
        inputs["pad_mask"] = xp.asarray(padded)
    if case["kind"] == "rdrop_loss":
        inputs["labels"] = xp.asarray(labels)
    return inputs


def _call(case: dict[str, Any], inputs: dict[str, Any]) -> Any:
    if case["kind"] == "rdrop_kl":
        return xdrop.rdrop_kl(**inputs, axis=case["axis"], reduction=case["reduction"])
    if case["kind"] == "rdrop_loss":
        return xdrop.rdrop_loss(
            **inputs,
            axis=case["axis"],
            reduction=case["reduction"],
            alpha=case["alpha"],
            ignore_index=RDROP_IGNORE_INDEX if case["ignore_every"] else None,
            label_smoothing=case["label_smoothing"],
        )
    if case["kind"] == "fold_in":
        return xdrop.fold_in(inputs["seed"], inputs["data"])
    rate = inputs.get("p", case["p"])
    if case["kind"] == "mask":
        return xdrop.dropout_mask(
            tuple(case["shape"]), rate, seed=inputs["seed"], offset=case["offset"]
        )
    return xdrop.dropout(
        inputs["x"],
        rate,
        training=case["training"],
        seed=inputs["seed"],
        mode=case["mode"],
        noise_shape=case["noise_shape"],
        offset=case["offset"],
        return_mask=True,
    )


def _call_or_error(case: dict[str, Any], inputs: dict[str, Any]) -> Any:
    try:
        return _call(case, inputs)
    except Exception as error:  # a crash in one case is that case's failure, not the run's
        return error


def _run_compiled(
    compiler: Callable[[Callable[..., Any]], Any],
    cases: list[dict[str, Any]],
    inputs: list[dict[str, Any]],
) -> list[Any]:
    def every_case(arrays: list[dict[str, Any]], scalars: list[dict[str, Any]]) -> list[Any]:
        return [
            _call(case, {**case_arrays, **case_scalars})
            for case, case_arrays, case_scalars in zip(cases, arrays, scalars, strict=True)
        ]

    # a code object of its own: compilers that cache per code object (torch.compile, which stops
    # recompiling one after 8 variants) then see each batch as a new function
    every_case.__code__ = every_case.__code__.replace()

    try:
        # seeds, fold_in's data and rates apart: a compilation with run-time sizes keeps theirs
        scalars = [{k: v for k, v in i.items() if k in SCALAR_INPUTS} for i in inputs]
        arrays = [{k: v for k, v in i.items() if k not in SCALAR_INPUTS} for i in inputs]
        return list(compiler(every_case)(arrays, scalars))
    except Exception as error:  # the compiler rejected the function: every case fails with it
        return [error] * len(cases)


def _result(
    case: dict[str, Any], status: str, difference: float = 0.0, detail: str = ""
) -> CaseResult:
    return CaseResult(case["id"], case["group"], status, difference, detail)


def _compare(xp: Backend, case: dict[str, Any], output: Any) -> CaseResult:
    if isinstance(output, RoleNotImplementedError):  # an optional role of the protocol
        return _result(case, "skipped", detail=str(output))
    if isinstance(output, Exception):
        return _result(case, "failed", math.inf, f"{type(output).__name__}: {output}")
    if case["kind"] in RDROP_KINDS:
        return _compare_loss(xp, case, output)
    if case["kind"] == "fold_in":
        got = _seed_value(xp, output)
        result = _result(case, "passed")
        if got != case["expected"]:
            detail = f"fold_in gave {got}, expected {case['expected']}"
            result = _result(case, "failed", math.inf, detail)
        result.output = (np.array(got, np.uint64),)
        return result
    shape = tuple(case["shape"])
    if case["kind"] == "mask":
        keep = xp.to_numpy(output)
        result = _compare_mask(case, keep, shape)
        result.output = (keep,)
        return result
    y, keep = xp.to_numpy(output[0]).astype(np.float64), xp.to_numpy(output[1])
    result = _compare_mask(case, keep, shape)
    if result.status == "passed":
        expected = np.array([float.fromhex(value) for value in case["y"]]).reshape(shape)
        result = _compare_values(case, y, expected)
    result.output = (keep, y)
    return result


def identical_outputs(first: CaseResult, second: CaseResult) -> bool:
    """Whether two backends returned the same bits for a case (NaNs count as equal)."""
    if len(first.output) != len(second.output) or not first.output:
        return False
    return all(
        a.shape == b.shape and bool(_same_bits(a, b).all())
        for a, b in zip(first.output, second.output, strict=True)
    )


def _same_bits(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise equality that tells -0.0 from +0.0 and takes any NaN to equal any NaN: NaN
    payloads are not part of the spec (``docs/spec.md``, Outputs: CUDA returns its canonical NaN)."""
    if a.dtype.kind != "f" or b.dtype.kind != "f":
        return np.asarray(a == b)
    same: np.ndarray = (a == b) & (np.signbit(a) == np.signbit(b)) | np.isnan(a) & np.isnan(b)
    return same


def _compare_loss(xp: Backend, case: dict[str, Any], loss: Any) -> CaseResult:
    """Losses are compared to a tolerance (sums in another order round differently), so they
    carry no ``output`` for the bitwise pairwise comparison."""
    if xp.dtype_name(loss) != case["result_dtype"]:
        detail = f"loss has dtype {xp.dtype_name(loss)}, not {case['result_dtype']}"
        return _result(case, "failed", math.inf, detail)
    values = xp.to_numpy(loss).astype(np.float64)
    expected = np.array([float.fromhex(value) for value in case["expected"]])
    expected = expected.reshape(case["result_shape"])
    if values.shape != expected.shape:
        detail = f"loss has shape {values.shape}, not {expected.shape}"
        return _result(case, "failed", math.inf, detail)
    relative, absolute = RDROP_TOLERANCE[case["result_dtype"]]
    with np.errstate(invalid="ignore"):
        difference = np.abs(values - expected)
    same = (values == expected) | (np.isnan(values) & np.isnan(expected))
    difference = np.where(same, 0.0, np.where(np.isnan(difference), np.inf, difference))
    worst = float(difference.max(initial=0.0))
    wrong = int(np.count_nonzero(difference > absolute + relative * np.abs(expected)))
    if wrong:
        return _result(
            case, "failed", worst, f"{wrong} of {values.size} values beyond the tolerance"
        )
    return _result(case, "passed", worst)


def _seed_value(xp: Backend, seed: Any) -> int:
    """A seed as an int, whether fold_in returned a host int or a seed array."""
    if isinstance(seed, int):
        return seed
    arrays = require(xp, SeedBackend, *seeds.SEED_IN_AN_ARRAY)
    words = [int(xp.to_numpy(word)) % 2**32 for word in arrays.seed_words(seed)]
    return (words[0] << 32) | words[1]


def unpack_bits(packed: str, shape: tuple[int, ...]) -> np.ndarray:
    count = math.prod(shape)
    bits = np.unpackbits(np.frombuffer(bytes.fromhex(packed), np.uint8))[:count]
    return bits.astype(bool).reshape(shape)


def _compare_mask(case: dict[str, Any], got: np.ndarray, shape: tuple[int, ...]) -> CaseResult:
    expected = unpack_bits(case["keep"], shape)
    if got.shape != shape or got.dtype != np.bool_:
        return _result(
            case, "failed", math.inf, f"mask has shape {got.shape} and dtype {got.dtype}"
        )
    wrong = int(np.count_nonzero(got != expected))
    if wrong:
        return _result(case, "failed", 1.0, f"{wrong} of {got.size} mask bits differ")
    return _result(case, "passed")


def _compare_values(case: dict[str, Any], got: np.ndarray, expected: np.ndarray) -> CaseResult:
    if got.shape != expected.shape:
        detail = f"output has shape {got.shape}, expected {expected.shape}"
        return _result(case, "failed", math.inf, detail)
    same = _same_bits(got, expected)
    if same.all():
        return _result(case, "passed")
    with np.errstate(invalid="ignore"):
        difference = np.abs(got - expected)
    difference[same] = 0.0
    worst = float(np.nanmax(np.where(np.isnan(difference), np.inf, difference)))
    detail = f"{int(np.count_nonzero(~same))} of {got.size} outputs differ"
    return _result(case, "failed", worst, detail)
